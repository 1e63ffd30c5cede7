"""Tiled prediction throughput: napari-regcon's predictor against MONAI's sliding_window_inference.

Both run in this process, interleaved, with the same network, tile size, overlap, sw_batch_size
and blending weights (our Gaussian map, passed to MONAI as ``roi_weight_map``) on real data:
the 30x512x512 ISBI 2012 training stack slice by slice for a 2D model, and a two-photon
VesselNN volume for a 3D model. Our side is timed end to end through the public path
(``core.inference.iter_predict`` via ``core.predict.predict_arrays``: reading, normalising,
blending, argmax, writing labels and probabilities); MONAI's side includes normalising the
input and the argmax to labels. The 2D case alternates the two predictors plane by plane (who
goes first alternates too), so each pair is measured seconds apart on this shared machine.
Reported: megapixels/s of each (median of the repeats), the median of the per-repeat speed
ratios (ours / MONAI), and the largest absolute difference of the probabilities and the
fraction of differing labels.

Example::

    python benchmarks/inference_speed.py --repeats 5
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import tifffile
import torch
from _common import (
    load_isbi,
    machine_info,
    markdown_table,
    median,
    read_json,
    spread,
    text_table,
    write_json,
    write_text,
)
from monai.inferers import sliding_window_inference

from napari_regcon.core.checkpoint import make_bundle
from napari_regcon.core.inference import gaussian_weights
from napari_regcon.core.models import UNetConfig, anisotropic_pool_z, build_model
from napari_regcon.core.normalize import fit_normalization
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import run_predict

NAME = "inference_speed"
VESSEL = "/work/shared/data/vesselnn_2pm/raw_02.tif"
CLASSES = [1, 2]


def make_bundle_for(cfg: UNetConfig, image: np.ndarray, seed: int) -> dict:
    """A segmentation bundle with seeded random weights (speed and equality do not need training)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    norm = fit_normalization([as_volume(image)])
    return make_bundle("segmentation", cfg.to_dict(), model.state_dict(), norm.to_dict(),
                       classes={"values": CLASSES, "names": ["cell", "membrane"], "dense": False})


def ours(bundle: dict, image: np.ndarray, tile: tuple[int, ...], overlap: float, batch: int,
         out: tuple[np.ndarray, np.ndarray] | None = None, zrange: tuple[int, int] | None = None) -> float:
    """napari-regcon's predictor through the public workflow into ``out`` (labels, probabilities); seconds.

    ``zrange`` restricts a 2D model to planes [z0, z1) (the path the live preview uses).
    """
    t0 = time.perf_counter()
    run_predict(bundle, image, probabilities=True, tile=",".join(map(str, tile)), overlap=overlap,
                batch_size=batch, device="cpu", out_labels=out[0], out_probs=out[1], zrange=zrange)
    return time.perf_counter() - t0


def monai(model: torch.nn.Module, norm: Any, image: np.ndarray, ndim: int, tile: tuple[int, ...], overlap: float,
          batch: int, weight: torch.Tensor, out: tuple[np.ndarray, np.ndarray], planes: range | None = None) -> float:
    """MONAI sliding_window_inference with the same model and weights, into ``out``; seconds.

    A 2D model runs plane by plane over ``planes``; a 3D model on the whole volume.
    """
    values = np.asarray(CLASSES, np.uint8)
    labels, probs = out

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return model(x).softmax(1)

    t0 = time.perf_counter()
    blocks = [(z, image[z]) for z in (planes or range(image.shape[0]))] if ndim == 2 else [(slice(None), image)]
    for where, block in blocks:
        x = torch.from_numpy(norm.apply(block[None].astype(np.float32)))[None]
        with torch.inference_mode():
            res = sliding_window_inference(x, tile, batch, predictor, overlap=overlap, mode="gaussian",
                                           roi_weight_map=weight)[0].numpy()
        probs[(slice(None), where)] = res
        labels[where] = values[res.argmax(0)]
    return time.perf_counter() - t0


def bench_case(name: str, cfg: UNetConfig, image: np.ndarray, tile: tuple[int, ...], args: argparse.Namespace
               ) -> dict[str, Any]:
    """Interleaved repeats of both predictors on one image; speeds, ratios and output differences."""
    from napari_regcon.core.normalize import Normalization
    from napari_regcon.core.workflows import model_from_bundle

    bundle = make_bundle_for(cfg, image, args.seed)
    model = model_from_bundle(bundle)
    norm = Normalization.from_dict(bundle["normalization"])
    weight = torch.from_numpy(gaussian_weights(tile))
    mpix = image.size / 1e6
    n_out = cfg.out_channels
    res_o = (np.zeros(image.shape, np.uint8), np.zeros((n_out, *image.shape), np.float32))
    res_m = (np.zeros(image.shape, np.uint8), np.zeros((n_out, *image.shape), np.float32))
    # 2D: interleave plane by plane (pairs measured seconds apart, robust to a shared machine's load)
    units = [(z, z + 1) for z in range(image.shape[0])] if cfg.ndim == 2 else [None]
    ours(bundle, image, tile, args.overlap, args.batch, res_o, units[0])  # warm-up
    t_ours, t_monai, ratios = [], [], []
    for rep in range(args.repeats):
        a = b = 0.0
        for u, zr in enumerate(units):
            planes = range(*zr) if zr else None
            for who in ((0, 1) if (rep + u) % 2 == 0 else (1, 0)):  # alternate who goes first
                if who == 0:
                    a += ours(bundle, image, tile, args.overlap, args.batch, res_o, zr)
                else:
                    b += monai(model, norm, image, cfg.ndim, tile, args.overlap, args.batch, weight, res_m, planes)
        t_ours.append(a)
        t_monai.append(b)
        ratios.append(b / a)
        print(f"  {name} repeat {rep + 1}/{args.repeats}: ours {mpix / a:.3f} MP/s, "
              f"MONAI {mpix / b:.3f} MP/s, ratio {ratios[-1]:.3f}", flush=True)
    (lab_o, prob_o), (lab_m, prob_m) = res_o, res_m
    return {
        "case": name, "shape": list(image.shape), "model": cfg.to_dict(), "tile": list(tile), "overlap": args.overlap,
        "sw_batch_size": args.batch, "megapixels": mpix, "repeats": args.repeats,
        "seconds_ours": t_ours, "seconds_monai": t_monai,
        "mpix_s_ours": mpix / median(t_ours), "mpix_s_monai": mpix / median(t_monai),
        "ratio_median": median(ratios), "ratio_range": spread(ratios),
        "max_abs_diff_probs": float(np.abs(prob_o - prob_m).max()),
        "label_mismatch_fraction": float((lab_o != lab_m).mean()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass (sw_batch_size)")
    p.add_argument("--tile2d", default="256,256")
    p.add_argument("--tile3d", default="16,128,128")
    p.add_argument("--planes", type=int, default=30, help="ISBI planes for the 2D case")
    p.add_argument("--cases", default="2d,3d")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="rewrite the table from the last JSON")
    args = p.parse_args(argv)
    if args.report_only:
        report()
        return
    torch.set_num_threads(args.threads)
    machine = machine_info()
    results = []
    cases = args.cases.split(",")
    if "2d" in cases:
        image = load_isbi()["train_raw"][: args.planes]
        cfg = UNetConfig(ndim=2, in_channels=1, out_channels=2, base=16, depth=3)
        results.append(bench_case("2D U-Net (base 16, depth 3), ISBI train stack slice by slice", cfg, image,
                                  tuple(int(v) for v in args.tile2d.split(",")), args))
    if "3d" in cases:
        image = tifffile.imread(VESSEL)
        tile = tuple(int(v) for v in args.tile3d.split(","))
        cfg = UNetConfig(ndim=3, in_channels=1, out_channels=2, base=8, depth=3,
                         pool_z=anisotropic_pool_z(tile[0], 3))
        results.append(bench_case("3D U-Net (base 8, depth 3), VesselNN raw_02 volume", cfg, image, tile, args))
    write_json(NAME, {"benchmark": NAME, "machine": machine, "threads": args.threads, "repeats": args.repeats,
                      "results": results})
    report()


def report() -> None:
    """Print the table and write results/inference_speed.md from the JSON."""
    data = read_json(NAME)
    machine, results = data["machine"], data["results"]
    headers = ["case", "shape", "tile / overlap / batch", "ours MP/s", "MONAI MP/s", "speed ratio ours/MONAI (median, range)",
               "max abs Δ prob", "labels differing"]
    rows = [[r["case"], "x".join(map(str, r["shape"])), f"{'x'.join(map(str, r['tile']))} / {r['overlap']} / {r['sw_batch_size']}",
             f"{r['mpix_s_ours']:.3f}", f"{r['mpix_s_monai']:.3f}",
             f"{r['ratio_median']:.3f} ({r['ratio_range'][0]:.3f}–{r['ratio_range'][1]:.3f})",
             f"{r['max_abs_diff_probs']:.1e}", f"{100 * r['label_mismatch_fraction']:.4f}%"] for r in results]
    print("\n" + text_table(headers, rows))
    write_text(f"{NAME}.md", f"# Prediction throughput vs MONAI ({machine['date']}, {machine['nproc']} cores, "
               f"torch {machine['torch']}, {data['threads']} thread(s), median of {results[0]['repeats']} interleaved "
               f"repeats)\n\n`{machine['command']}`\n\n" + markdown_table(headers, rows))

if __name__ == "__main__":
    main()
