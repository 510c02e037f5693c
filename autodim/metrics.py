"""Metrics shared by training, searchers and benchmarks."""

from __future__ import annotations

import numpy as np

__all__ = ["auc_numpy", "auc_torch", "format_auc", "single_class", "spearman"]


def auc_numpy(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula, ties averaged."""
    from scipy.stats import rankdata

    labels = np.asarray(labels) > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def single_class(labels) -> float | None:
    """The one label value when ``labels`` hold a single class (AUC is then undefined),
    else ``None``."""
    raw = np.asarray(labels)
    if raw.size == 0 or not np.isfinite(raw).all():
        return None  # empty, or NaN labels (other checks name those)
    arr = raw > 0.5
    n_pos = int(arr.sum())
    if n_pos in (0, arr.size):
        return float(n_pos > 0)
    return None


def auc_torch(probs, labels):
    """ROC AUC of torch tensors (a 0-d tensor); NaN, not torchmetrics' 0.0, when the labels
    hold a single class: AUC is then undefined, and 0 would read as a (terrible) result."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    lb = labels.long()
    if lb.numel() == 0 or bool((lb == lb.reshape(-1)[0]).all()):
        return torch.tensor(float("nan"))
    return binary_auroc(probs, lb)


def format_auc(value) -> str:
    """An AUC for printing: ``n/a`` when it is undefined (None or NaN), never ``0.0000``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.4f}" if np.isfinite(v) else "n/a"


def spearman(a, b) -> float:
    """Spearman rank correlation (nan when either side is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)
