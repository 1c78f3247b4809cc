"""The one logit and sigmoid of the project, for probabilities read as log-odds.

Scores are combined over views (:func:`camenn.predictor.mean_logit`), and thresholds are moved
(``camenn.config.ThresholdConfig.recentred``) and compared (``benchmarks/bench_grocery_flags.py``)
on the logit scale, where a model's scores near 0 and 1 keep their distances. Probabilities are
clipped to [1e-7, 1 - 1e-7] first, so a threshold of 0 or 1 (an absolute 0.0) maps to a finite
value and comes back where it was, near enough.
"""

from __future__ import annotations

import numpy as np

__all__ = ["logit", "sigmoid"]

EPS = 1e-7


def logit(p):
    """log(p / (1 - p)) of a probability or an array of them, as float64."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z):
    """1 / (1 + exp(-z)), the inverse of :func:`logit`, as float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
