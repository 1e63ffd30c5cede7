"""``evaluate``: prediction and truth in the same label values, a label image (no NaN), means over the asked classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import RegconError
from .metrics import scores


def _planes(arr: Any) -> Any:
    return (arr[k] for k in range(arr.shape[0])) if len(arr.shape) == 3 else iter([arr])


def check_label_image(arr: Any, name: str) -> None:
    """Refuse a float prediction with NaN or fractional values (probabilities, not labels)."""
    if not np.issubdtype(np.dtype(arr.dtype), np.floating):
        return
    for plane in _planes(arr):
        p = np.asarray(plane)
        if np.isnan(p).any():
            raise RegconError(f"{name} is a float image with NaN values, not a label image; evaluate the labels "
                              "written by predict --out.")
        if (p != np.round(p)).any():
            raise RegconError(f"{name} holds fractional values (probabilities?), not labels; evaluate the labels "
                              "written by predict --out.")


def unique_values(arr: Any) -> list[int]:
    vals: set[int] = set()
    for plane in _planes(arr):
        vals.update(int(v) for v in np.unique(np.asarray(plane)).tolist())
    return sorted(vals)


class _Mapped:
    """A lazy view of ``arr`` with its values mapped through ``mapping`` (others unchanged)."""

    def __init__(self, arr: Any, mapping: dict[int, int]) -> None:
        self.arr, self.mapping, self.shape = arr, mapping, tuple(arr.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        block = np.asarray(self.arr[index]).astype(np.int64)
        out = block.copy()
        for src, dst in self.mapping.items():
            out[block == src] = dst
        return out


def bundle_mapping(class_values: Sequence[int], pred_values: Sequence[int], truth_values: Sequence[int]) -> dict[int, int]:
    """How a bundle's values (the prediction's) map to the truth's: identity, or class value -> class index."""
    values = [int(v) for v in class_values]
    truth = set(truth_values)
    if truth <= set(values):
        return {}
    if truth <= set(range(len(values))):
        return {v: i for i, v in enumerate(values)}
    raise RegconError(f"The truth's values {sorted(truth)} are neither the model's label values {values} nor its "
                      f"class indices 0..{len(values) - 1}; give --map PRED=TRUTH,... to pair them.")


def parse_mapping(text: str) -> dict[int, int]:
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        return {int(a): int(b) for a, b in pairs}
    except ValueError:
        raise RegconError(f"Cannot read --map {text!r}; write PRED=TRUTH pairs such as 1=0,2=1.") from None


def evaluate(pred: Any, truth: Any, *, ignore_zero: bool = False, classes: Sequence[int] | None = None,
             mapping: dict[int, int] | None = None, bundle_values: Sequence[int] | None = None,
             names: tuple[str, str] = ("the prediction", "the truth")) -> dict[str, Any]:
    """Dice/IoU of ``pred`` against ``truth`` with the values aligned; means over ``classes`` when given."""
    check_label_image(pred, names[0])
    check_label_image(truth, names[1])
    tv = [v for v in unique_values(truth) if not (ignore_zero and v == 0)]
    if mapping is None and bundle_values is not None:
        mapping = bundle_mapping(bundle_values, unique_values(pred), tv)
    if mapping:
        pred = _Mapped(pred, mapping)
    pv = unique_values(pred)
    if mapping is None and tv and not (set(pv) <= set(tv) or set(tv) <= set(pv)):
        raise RegconError(f"{names[0]} has the values {pv} but {names[1]} {tv}, so no class can match; give "
                          "--model BUNDLE (or --map PRED=TRUTH,...) to map the values the way the bundle does.")
    result = scores(pred, truth, ignore_zero=ignore_zero)
    if classes:
        missing = [c for c in classes if str(c) not in result["classes"]]
        if missing:
            raise RegconError(f"--classes {' '.join(map(str, missing))}: no such value in the prediction or the "
                              f"truth (their values are {sorted(set(pv) | set(tv))}).")
        result["classes"] = {k: v for k, v in result["classes"].items() if int(k) in classes}
        present = [d for d in result["classes"].values() if d["support"] > 0] or list(result["classes"].values())
        result["mean_dice"] = float(np.mean([d["dice"] for d in present]))
        result["mean_iou"] = float(np.mean([d["iou"] for d in present]))
    return result
