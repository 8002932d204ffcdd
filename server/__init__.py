"""Coordinator side: the ServerApp, strategies, per-round records and checkpoints."""
