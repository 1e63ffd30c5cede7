"""``napari-regcon demo``: the whole loop on the bundled EM sample, no downloads.

Pretrain (masked image modelling) on all slices, fine-tune on the labels of slice 0 only,
predict every slice, evaluate membrane Dice on slices 1-9, and write the prediction, an overlay
PNG a person can look at and a JSON report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_regcon.console import progress_bar
from napari_regcon.core.checkpoint import check_writable
from napari_regcon.core.errors import RegconError
from napari_regcon.core.io import atomic_path, write_array
from napari_regcon.core.metrics import scores
from napari_regcon.core.options import FinetuneOptions, PretrainOptions
from napari_regcon.core.precision import precision_name, resolve_precision
from napari_regcon.core.predict import PredictOptions, predict
from napari_regcon.core.workflows import finetune_job, pretrain_job
from napari_regcon.sample_data import load_sample

CELL, MEMBRANE = 1, 2


def overlay_png(raw: np.ndarray, pred: np.ndarray, truth: np.ndarray, value: int) -> np.ndarray:
    """Three panels side by side: the EM slice, the predicted class in magenta, the truth in green."""
    gray = raw.astype(np.float32)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
    base = np.repeat((gray * 255)[..., None], 3, -1)

    def tint(mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
        out = base.copy()
        out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(color, np.float32)
        return out

    gap = np.full((raw.shape[0], 8, 3), 255, np.float32)
    panels = [base, gap, tint(pred == value, (255, 0, 255)), gap, tint(truth == value, (0, 200, 0))]
    return np.concatenate(panels, 1).clip(0, 255).astype(np.uint8)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[demo] {msg}", file=sys.stderr)


def run_demo(out: str | Path = "regcon-demo", pretrain_steps: int = 150, finetune_steps: int = 250,
             device: str = "auto", seed: int = 0, quiet: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Run the demo into ``out`` and return its report (also written as ``report.json``); ``precision``
    is the arithmetic of training and prediction (``auto``: bf16 where the hardware has it)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RegconError(f"Cannot create the demo folder {out}: {err.strerror or err}.") from err
    check_writable(out / "report.json")
    t0 = time.perf_counter()
    raw, membranes = load_sample()
    truth = np.where(membranes > 0, MEMBRANE, CELL).astype(np.uint8)
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    _log(f"sample: ISBI 2012 ssTEM crop {raw.shape}; labels on slice 0 only ({CELL} = cell interior, {MEMBRANE} = membrane)", quiet)

    _log(f"1/3 self-supervised pretraining (masked image modelling), {pretrain_steps} steps", quiet)
    job = pretrain_job([raw], options=PretrainOptions(method="mim", steps=pretrain_steps, seed=seed, device=device,
                                                      checkpoint_every=0, precision=precision))
    pretrained = job.run(out=out / "pretrained.pt", callback=progress_bar("pretrain", quiet))
    t_pre = time.perf_counter() - t0

    _log(f"2/3 fine-tuning on one labeled slice, {finetune_steps} steps", quiet)
    job = finetune_job(raw, labels, FinetuneOptions(steps=finetune_steps, seed=seed, device=device, checkpoint_every=0,
                                                    class_names=["cell interior", "membrane"], precision=precision),
                      init=pretrained)
    for note in job.info.get("notes", []):
        _log(f"    {note}", quiet)
    model = job.run(out=out / "model.pt", callback=progress_bar("fine-tune", quiet))
    t_ft = time.perf_counter() - t0 - t_pre

    _log("3/3 predicting every slice (tiled)", quiet)
    result = predict(model, raw, PredictOptions(probabilities=True, device=device, precision=precision), callback=progress_bar("predict", quiet))
    pred, probs = result.labels, result.probabilities
    t_pred = time.perf_counter() - t0 - t_pre - t_ft

    result = scores(pred[1:], truth[1:])
    device_used = job.model.head.weight.device
    report = {
        "membrane_dice": result["classes"][str(MEMBRANE)]["dice"],
        "membrane_iou": result["classes"][str(MEMBRANE)]["iou"],
        "scores_slices_1_to_9": result,
        "labeled_slices": [0],
        "steps": {"pretrain": pretrain_steps, "finetune": finetune_steps},
        "seconds": {"pretrain": round(t_pre, 1), "finetune": round(t_ft, 1), "predict": round(t_pred, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "device": str(device_used),
        "precision": precision,
        "arithmetic": precision_name(resolve_precision(precision, device_used)),
        "torch_threads": torch.get_num_threads(),
        "files": {"prediction": "prediction.tif", "membrane_probability": "membrane_probability.tif",
                  "labels": "labels.tif", "image": "image.tif", "overlay": "overlay.png",
                  "pretrained_bundle": "pretrained.pt", "model_bundle": "model.pt"},
        "label_values": {"cell interior": CELL, "membrane": MEMBRANE},
    }
    write_array(out / "image.tif", raw, axes="ZYX")
    write_array(out / "labels.tif", labels, axes="ZYX")
    write_array(out / "prediction.tif", pred, axes="ZYX")
    write_array(out / "membrane_probability.tif", probs[1], axes="ZYX")
    k = raw.shape[0] // 2
    import imageio.v3 as iio
    with atomic_path(out / "overlay.png") as tmp:
        iio.imwrite(tmp, overlay_png(raw[k], pred[k], truth[k], MEMBRANE), extension=".png")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    _log(f"membrane Dice on slices 1-9: {report['membrane_dice']:.3f} (IoU {report['membrane_iou']:.3f}); "
         f"{report['seconds']['total']:.0f} s; results in {out}/ (overlay.png: EM | prediction | ground truth)", quiet)
    return report


