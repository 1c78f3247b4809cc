"""The one ROC AUC of the project, from scores or from per-bin counts.

- :func:`roc_auc` - from labels and scores (scikit-learn), NaN where only one class is present;
- :func:`auc_from_counts` - from per-bin counts of positives and negatives, for AUCs reduced as
  histograms: :class:`camenn.training.BinnedAUC` (summed across chunks and processes) and the
  synthetic world's Bayes AUC (``pipeline.world.bayes_auc``, counted per p_buy bin in Spark).
  Pairs that share a bin count one half, as ties do in :func:`roc_auc`.

Numpy only at import (scikit-learn is imported on the first call).
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc", "auc_from_counts"]


def roc_auc(labels, scores) -> float:
    """ROC AUC (sklearn), NaN where only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-bin counts of positives and negatives, bins in increasing score order; NaN without both."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    neg_below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float(((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / total) if total else float("nan")
