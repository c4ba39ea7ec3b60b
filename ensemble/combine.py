"""Combining member predictions with trust weights.

Each instance of a batch may reach a different version of a member (traffic splits), so the
weights are per (member, instance). Weights are renormalised over the members that answered
each instance, so a member that fails or misses the deadline degrades the answer instead of
failing it.
"""
from __future__ import annotations

import numpy as np


def weighted_mean(predictions: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine `predictions` [M, B] (NaN where a member did not answer) with `weights` [M, B].

    Returns the combined prediction [B] (NaN where no member answered) and the weights
    actually applied [M, B]: zero for missing members, summing to 1 over those that answered.
    Answering members whose weights are all zero share equally.
    """
    answered = ~np.isnan(predictions)
    counts = answered.sum(axis=0)
    applied = np.where(answered, np.maximum(weights, 0.0), 0.0)
    totals = applied.sum(axis=0)
    positive = totals > 0
    applied = np.where(positive, applied / np.where(positive, totals, 1.0), answered / np.maximum(counts, 1))
    combined = np.where(counts > 0, (applied * np.where(answered, predictions, 0.0)).sum(axis=0), np.nan)
    return combined, applied
