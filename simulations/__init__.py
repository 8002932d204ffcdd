"""Simulated federations: split one dataset into per-hospital sites (label, quantity and
acquisition skew) and report how heterogeneous the split is. Imports common/, never server/ or client/."""
