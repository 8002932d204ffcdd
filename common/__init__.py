"""Shared building blocks: config, models, datasets, metrics, training. No Flower imports here."""
