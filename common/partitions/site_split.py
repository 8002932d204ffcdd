"""One site's own train / val / test split (stratified where the site's classes allow it)."""

from __future__ import annotations

import math

import numpy as np

from common.config import ConfigError


def split_site(labels: np.ndarray, val_fraction: float, test_fraction: float,
               rng: np.random.Generator,
               site: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (sorted) of a site's train, val and test samples.

    test gets round(n * test_fraction) but at least 1, val round(n * val_fraction) but never so
    many that train is left empty. Stratified when every class of the site has at least one
    sample per held-out fraction (each class is spread evenly over a random order, so each split
    gets its share +-1); otherwise plain random.
    """
    n = len(labels)
    n_test = max(1, math.floor(n * test_fraction + 0.5))
    n_val = min(math.floor(n * val_fraction + 0.5), max(0, n - n_test - 1))
    if n - n_test - n_val < 1:
        raise ConfigError(f"site {site} has only {n} sample(s): none left for training after "
                          f"test_fraction={test_fraction} (use fewer sites or more data)")
    fractions = [f for f in (val_fraction, test_fraction) if f > 0]
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() * min(fractions) >= 1:
        keys = np.empty(n)
        for cls in np.unique(labels):
            where = np.flatnonzero(labels == cls)
            keys[where] = (rng.permutation(len(where)) + rng.random(len(where))) / len(where)
    else:
        keys = rng.random(n)
    order = np.argsort(keys, kind="stable")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)
