"""Fano-type lower bound on the training error rate (paper Thm. 2.1, Figure 2). All entropies in bits."""
import numpy as np
from scipy.optimize import brentq


def binary_entropy(r):
    """H2(r) in bits, with H2(0) = H2(1) = 0."""
    r = np.asarray(r, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -r * np.log2(r) - (1 - r) * np.log2(1 - r)
    return np.where((r <= 0) | (r >= 1), 0.0, h)


def label_entropy(p, k):
    """H(y|x) per example under uniform noise: the true class with 1 - p, each other class with p / (k - 1)."""
    return float(binary_entropy(p) + p * np.log2(k - 1))


def _lower_bound(info, p, k):
    # f(r) = r log2(k-1) + H2(r) increases on [0, (k-1)/k] up to log2(k) >= H(y|x), so the smallest r with
    # f(r) >= H(y|x) - I/n is the root of f(r) - (H(y|x) - I/n) there, or 0 when the bound is already met at r = 0.
    target = label_entropy(p, k) - info
    if target <= 0:
        return 0.0
    r_max = (k - 1) / k
    return brentq(lambda r: r * np.log2(k - 1) + float(binary_entropy(r)) - target, 0.0, r_max, xtol=1e-12)


def fano_lower_bound(info_per_example, p, k):
    """r0: the smallest training error rate r in [0, 1) with r >= (H(y|x) - I/n - H2(r)) / log2(k - 1).

    ``info_per_example`` is I(w; y|x)/n in bits, a number or an array (the result has the same shape).
    """
    if k < 2:
        raise ValueError(f"need at least 2 classes, got k={k}")
    info = np.asarray(info_per_example, dtype=float)
    r0 = np.array([_lower_bound(i, p, k) for i in info.ravel()]).reshape(info.shape)
    return float(r0) if r0.ndim == 0 else r0
