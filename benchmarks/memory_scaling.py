"""Peak memory and throughput of ``napari-regcon predict`` on zarr volumes of growing size.

Generates zarr volumes of about 0.25, 1 and 4 GB on disk by tiling the real ISBI 2012 slices
(2048x2048 planes, each a 4x4 mosaic of flipped ISBI slices; nothing is kept in the repository),
fine-tunes a small model once, then runs the real command line in a fresh process per volume and
records its peak RSS (ru_maxrss of that process) and megapixels per second. Target: peak RSS within
20% across sizes (the output is written tile by tile), throughput flat.

    python benchmarks/memory_scaling.py [--sizes 0.25,1,4] [--base 8] [--threads 1] [--workdir /tmp/regcon-mem]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import load_isbi, machine_info, markdown_table, text_table, write_json, write_text

PLANE = 2048
CHILD = """
import resource, sys, time
from napari_regcon.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
print("RESULT", code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_volume(path: Path, gigabytes: float, raw: np.ndarray) -> tuple[int, int, int]:
    """Write a uint8 zarr volume of about ``gigabytes`` GB tiled from ISBI slices, plane by plane."""
    import zarr

    planes = max(1, int(round(gigabytes * 1e9 / PLANE**2)))
    shape = (planes, PLANE, PLANE)
    if path.exists():
        z = zarr.open(str(path), mode="r")
        if tuple(z.shape) == shape:
            return shape
        shutil.rmtree(path)
    z = zarr.open(str(path), mode="w", shape=shape, dtype="uint8", chunks=(1, 512, 512))
    tile = raw.shape[1]
    for k in range(planes):
        mosaic = np.empty((PLANE, PLANE), np.uint8)
        for i in range(PLANE // tile):
            for j in range(PLANE // tile):
                s = raw[(k + 3 * i + 7 * j) % len(raw)]
                mosaic[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = s[:: 1 if i % 2 else -1, :: 1 if j % 2 else -1]
        z[k] = mosaic
    return shape


def train_model(workdir: Path, base: int) -> Path:
    """A quickly fine-tuned 2D model (the memory profile does not depend on its quality)."""
    import tifffile

    data = load_isbi()
    labels = np.zeros_like(data["train_mem"][:2])
    labels[0] = data["train_mem"][0] + 1
    tifffile.imwrite(workdir / "img.tif", data["train_raw"][:2])
    tifffile.imwrite(workdir / "lab.tif", labels)
    model = workdir / f"model_b{base}.pt"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "napari_regcon", "finetune", "--image", str(workdir / "img.tif"),
                        "--labels", str(workdir / "lab.tif"), "--out", str(model), "--steps", "30",
                        "--base", str(base), "--quiet"], check=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.25,1,4", help="volume sizes in GB")
    ap.add_argument("--workdir", default="/tmp/regcon-mem", type=Path)
    ap.add_argument("--base", type=int, default=8, help="U-Net width of the model used (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the predict process (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the generated volumes")
    ap.add_argument("--tag", default="", help="write results/memory_scaling_TAG.* instead (a re-check)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw = load_isbi()["train_raw"]
    model = train_model(args.workdir, args.base)
    rows = []
    for gb in [float(s) for s in args.sizes.split(",")]:
        vol = args.workdir / f"vol_{gb:g}GB.zarr"
        shape = make_volume(vol, gb, raw)
        out = args.workdir / f"pred_{gb:g}GB.zarr"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(str(out) + ".partial", ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", CHILD, "predict", "--model", str(model), "--image", str(vol),
                            "--out", str(out), "--threads", str(args.threads), "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = [ln for ln in r.stderr.splitlines() if ln.startswith("RESULT")]
        if r.returncode != 0 or not line:
            raise SystemExit(f"predict failed on {vol}: {r.stderr[-2000:]}")
        _, code, seconds, maxrss_kb = line[-1].split()
        mpx = np.prod(shape) / 1e6
        rows.append({"size_gb": gb, "shape": list(shape), "voxels_mega": float(mpx), "seconds": float(seconds),
                     "wall_seconds": wall, "mpx_per_s": float(mpx) / float(seconds), "peak_rss_mb": int(maxrss_kb) / 1024})
        print(f"{gb:g} GB {shape}: {rows[-1]['mpx_per_s']:.2f} MP/s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    rss = [r["peak_rss_mb"] for r in rows]
    thr = [r["mpx_per_s"] for r in rows]
    summary = {"rss_spread": max(rss) / min(rss) - 1, "throughput_spread": max(thr) / min(thr) - 1}
    headers = ["volume", "shape (ZYX)", "seconds", "MP/s", "peak RSS (MB)", "RSS vs smallest"]
    table = [[f"{r['size_gb']:g} GB", "x".join(map(str, r["shape"])), f"{r['seconds']:.0f}", f"{r['mpx_per_s']:.2f}",
              f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / rss[0]:.2f}x"] for r in rows]
    print(text_table(headers, table))
    print(f"peak RSS spread {summary['rss_spread']:.1%} (target <= 20%), throughput spread {summary['throughput_spread']:.1%}")
    name = "memory_scaling" + (f"_{args.tag}" if args.tag else "")
    write_json(name, {"machine": machine_info(), "model_base": args.base, "threads": args.threads, "rows": rows, "summary": summary})
    write_text(f"{name}.md", markdown_table(headers, table) + f"\n\nPeak RSS spread {summary['rss_spread']:.1%} "
               f"(target <= 20%); throughput spread {summary['throughput_spread']:.1%}.\n\n"
               f"`python benchmarks/memory_scaling.py --sizes {args.sizes} --base {args.base} --threads {args.threads}"
               + (f" --tag {args.tag}" if args.tag else "") + "`; "
               f"{time.strftime('%Y-%m-%dT%H:%M')}; {machine_info().get('cpu', '')} "
               f"(load average at the end {os.getloadavg()[0]:.1f}).\n")
    if not args.keep:
        for gb in args.sizes.split(","):
            shutil.rmtree(args.workdir / f"vol_{float(gb):g}GB.zarr", ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
