"""Dice and IoU per class, streaming over planes so large volumes need no extra memory."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import RegconError


def confusion_counts(pred: Any, truth: Any, ignore_zero: bool = False) -> dict[int, dict[str, int]]:
    """Per-value true-positive, false-positive and false-negative counts.

    With ``ignore_zero`` the pixels where ``truth == 0`` (not annotated) are skipped.
    """
    if tuple(pred.shape) != tuple(truth.shape):
        raise RegconError(f"The prediction has shape {tuple(pred.shape)} but the truth has shape {tuple(truth.shape)}; they must match.")
    counts: dict[int, dict[str, int]] = {}
    planes = pred.shape[0] if len(pred.shape) == 3 else 1
    for k in range(planes):
        p = np.asarray(pred[k] if len(pred.shape) == 3 else pred).ravel()
        t = np.asarray(truth[k] if len(truth.shape) == 3 else truth).ravel()
        if ignore_zero:
            keep = t != 0
            p, t = p[keep], t[keep]
        for v in np.union1d(np.unique(p), np.unique(t)).tolist():
            if ignore_zero and v == 0:
                continue
            pv, tv = p == v, t == v
            c = counts.setdefault(int(v), {"tp": 0, "fp": 0, "fn": 0})
            c["tp"] += int(np.count_nonzero(pv & tv))
            c["fp"] += int(np.count_nonzero(pv & ~tv))
            c["fn"] += int(np.count_nonzero(~pv & tv))
    return counts


def scores(pred: Any, truth: Any, ignore_zero: bool = False) -> dict[str, Any]:
    """Dice and IoU for every class value present in either array, and their means over truth classes."""
    counts = confusion_counts(pred, truth, ignore_zero)
    per_class = {}
    for v, c in sorted(counts.items()):
        denom = 2 * c["tp"] + c["fp"] + c["fn"]
        per_class[str(v)] = {
            "dice": 1.0 if denom == 0 else 2 * c["tp"] / denom,
            "iou": 1.0 if denom == 0 else c["tp"] / (c["tp"] + c["fp"] + c["fn"]),
            "support": c["tp"] + c["fn"],
        }
    present = [d for d in per_class.values() if d["support"] > 0]
    return {
        "classes": per_class,
        "mean_dice": float(np.mean([d["dice"] for d in present])) if present else float("nan"),
        "mean_iou": float(np.mean([d["iou"] for d in present])) if present else float("nan"),
    }


def dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    """Dice of one class value."""
    p, t = np.asarray(pred) == value, np.asarray(truth) == value
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)
