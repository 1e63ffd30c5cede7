"""The ``napari-regcon`` command line: a thin door onto :mod:`napari_regcon.core`.

Every command exits non-zero with one clear line on stderr for bad input and never leaves a
half-written output behind (outputs are written to a temporary file and renamed into place).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_regcon import __version__
from napari_regcon.cli_checks import (
    guarded,
    mask_ratio,
    model_name,
    nonneg_int,
    overlap_fraction,
    positive_float,
    positive_int,
)
from napari_regcon.console import progress_bar
from napari_regcon.core.drive import drive
from napari_regcon.core.errors import RegconError, is_out_of_memory
from napari_regcon.core.precision import PRECISIONS
from napari_regcon.core.recipes import RECIPES

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _StopFlag:
    """First Ctrl-C (or SIGTERM, as sent by SLURM or torchrun) asks training to stop cleanly at the
    next step, keeping the model trained so far; a second one aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        what = "terminated" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"\nnapari-regcon: {what}: stopping at the next step (Ctrl-C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in (self._old or {}).items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return self.event.is_set()


def _read(path: str, what: str) -> Any:
    from napari_regcon.core.io import read_array
    return read_array(path, what)


def _run_job(job: Any, out: str, desc: str, quiet: bool) -> dict:
    from napari_regcon.core import distributed
    from napari_regcon.core.bundle import as_bundle

    quiet = quiet or not distributed.is_main()
    with _StopFlag() as stop:
        bundle = job.run(out=out, should_stop=stop, callback=progress_bar(desc, quiet))
        if stop():
            step = as_bundle(bundle).training.step if bundle else 0
            raise _Interrupted(f"stopped at step {step}; {out} holds the model trained so far (resume with --resume {out}).")
    return bundle


def _notes(job: Any) -> None:
    """What the job changed in what was asked (e.g. a patch clipped to the image), one line each,
    printed even with --quiet."""
    for note in job.info.get("notes", []):
        _done(note)


def _done(message: str) -> None:
    from napari_regcon.core import distributed
    if distributed.is_main():
        print(f"napari-regcon: {message}", file=sys.stderr)


class _Interrupted(Exception):
    pass


@guarded(["out"], ["images", "resume"], bundle=True, images=["images"])
def cmd_pretrain(args: argparse.Namespace) -> int:
    from napari_regcon.core.checkpoint import check_writable, load_bundle
    from napari_regcon.core.io import read_voxel_size
    from napari_regcon.core.options import PretrainOptions, fill, parse_params
    from napari_regcon.core.pretext import with_voxel_size
    from napari_regcon.core.safety import check_resume
    from napari_regcon.core.workflows import pretrain_job

    images = [_read(p, "image") for p in args.images]
    check_writable(args.out)
    params = parse_params(args.param or [], "--param")
    if args.method == "mim":
        params = {"ratio": args.mask_ratio, "patch": args.mask_patch, "mask": args.mask, **params}
    voxel = read_voxel_size(args.images[0]) if args.ndim == 3 else None
    if args.ndim == 3:
        params = with_voxel_size(args.method, params, args.ndim, voxel)
    resume = load_bundle(args.resume) if args.resume else None
    if resume is not None:
        check_resume(resume, args.resume, "pretrain", args.steps, args.method)
    job = pretrain_job(images, options=fill(PretrainOptions, args, method_params=params, voxel_size=voxel),
                       resume=resume, sources=[str(p) for p in args.images])
    _notes(job)
    if args.method == "mim" and not args.quiet:
        voxel = params.get("voxel_size")
        where = f"voxel size (z, y, x) {' x '.join(f'{v:g}' for v in voxel)} from {args.images[0]}; " if voxel else ""
        cell = "x".join(map(str, job.task.cell_size(job.info["patch"])))
        print(f"napari-regcon: mim: {where}patch {'x'.join(map(str, job.info['patch']))}, mask cells {cell}, "
              f"mask {','.join(job.task.modes)}, ratio {job.task.ratio:g}", file=sys.stderr)
    _run_job(job, args.out, f"pretrain ({args.method})", args.quiet)
    _done(f"pretrained bundle written to {args.out}")
    return 0


@guarded(["out"], ["image", "labels", "init", "resume", "unlabeled"], bundle=True, images=["image", "unlabeled"])
def cmd_finetune(args: argparse.Namespace) -> int:
    from napari_regcon.core.checkpoint import check_writable, load_bundle, load_model_source
    from napari_regcon.core.io import read_voxel_size
    from napari_regcon.core.options import FinetuneOptions, fill, parse_params
    from napari_regcon.core.safety import check_class_count, check_resume
    from napari_regcon.core.workflows import finetune_job

    image = _read(args.image, "image")
    labels = _read(args.labels, "labels")
    init = load_model_source(args.init) if args.init else None
    resume = load_bundle(args.resume) if args.resume else None
    if resume is not None:
        check_resume(resume, args.resume, "finetune", args.steps)
    unlabeled = [_read(p, "unlabeled image") for p in (args.unlabeled or [])]
    check_writable(args.out)
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    voxel = read_voxel_size(args.image) if args.ndim == 3 else None
    options = fill(FinetuneOptions, args, class_names=names, voxel_size=voxel,
                   recipe_params=parse_params(args.recipe_param or [], "--recipe-param"))
    job = finetune_job(image, labels, options, init=init, resume=resume, unlabeled=unlabeled,
                       sources=[args.image, args.labels])
    check_class_count(job.info["classes"].values, args.labels)
    _notes(job)
    if not args.quiet:
        print(f"fine-tune: recipe '{job.info['recipe'].name}'"
              + (" (ends by itself when the prediction stops changing)" if job.config.stop_when_stable else ""),
              file=sys.stderr)
    _run_job(job, args.out, "fine-tune", args.quiet)
    _done(f"segmentation bundle written to {args.out}")
    return 0


@guarded(["out", "probabilities", "uncertainty"], ["model", "image"], images=["image"])
def cmd_predict(args: argparse.Namespace) -> int:
    from napari_regcon.core.bundle import as_bundle
    from napari_regcon.core.checkpoint import load_model_source
    from napari_regcon.core.io import check_chunking, check_output_path
    from napari_regcon.core.outputs import PredictionStopped, partial_path, predict_to_files
    from napari_regcon.core.predict import PredictOptions

    bundle = load_model_source(args.model)
    if not as_bundle(bundle, args.model).is_segmentation:
        raise RegconError(f"{args.model} is a pretrained (self-supervised) bundle without classes; fine-tune it on labels first.")
    image = _read(args.image, "image")
    check_chunking(image, args.image)
    check_output_path(args.out)
    for extra in (args.probabilities, args.uncertainty):  # (the guard has refused outputs naming the same file)
        if extra:
            check_output_path(extra)
    _check_tile(args.tile)
    options = PredictOptions(channel_axis=args.channel_axis, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                             device=args.device, precision=args.precision, min_size=args.min_size, crf=args.crf,
                             class_prior=args.class_prior)
    with _StopFlag() as stop:
        try:
            summary = drive(predict_to_files(bundle, image, args.out, args.probabilities, uncertainty=args.uncertainty,
                                              options=options, should_stop=stop),
                            progress_bar({"tiles": "predict", "crf": "CRF"}, args.quiet))
        except PredictionStopped:
            raise _Interrupted("prediction stopped; no output was written.") from None
    if not summary["complete"]:
        raise _Interrupted(f"prediction stopped; the finished part is kept in {partial_path(args.out)} and the same command resumes it.")
    resumed = f" (resumed: {summary['resumed_units']} finished units were kept)" if summary["resumed_units"] else ""
    extras = [p for p in (args.probabilities, args.uncertainty) if p]
    print(f"napari-regcon: {'CRF-refined ' if args.crf else ''}prediction written to {args.out}"
          + (f" and {' and '.join(extras)}" if extras else "") + resumed, file=sys.stderr)
    return 0


def _check_tile(tile: str | None) -> None:
    if tile is None:
        return
    from napari_regcon.core.options import parse_patch
    parts = parse_patch(tile, 3 if "," in str(tile) and len(str(tile).split(",")) == 3 else 2)
    if parts and min(parts[-2:]) < 32:
        raise RegconError(f"The tile size {tile} is too small to predict efficiently; use at least 32 pixels in Y and X (default 256).")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_regcon.core.bundle import as_bundle
    from napari_regcon.core.checkpoint import load_model_source
    from napari_regcon.core.evaluation import evaluate, parse_mapping

    pred = _read(args.pred, "prediction")
    truth = _read(args.truth, "ground-truth")
    values = as_bundle(load_model_source(args.model)).classes.values if args.model else None
    result = evaluate(pred, truth, ignore_zero=args.ignore_zero, classes=args.classes, bundle_values=values,
                      mapping=parse_mapping(args.map) if args.map else None, names=(args.pred, args.truth))
    print(json.dumps(result))
    return 0


@guarded(["out"], [])
def cmd_demo(args: argparse.Namespace) -> int:
    from napari_regcon.demo import run_demo

    report = run_demo(args.out, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, device=args.device,
                      seed=args.seed, quiet=args.quiet, precision=args.precision)
    print(json.dumps({"membrane_dice": report["membrane_dice"], "out": str(args.out)}))
    return 0


@guarded(["out"], ["model", "image"], images=["image"])
def cmd_export(args: argparse.Namespace) -> int:
    from napari_regcon.core.export import export_bioimageio

    report = export_bioimageio(args.model, args.out, image=args.image, channel_axis=args.channel_axis, name=args.name,
                               description=args.description, authors=args.author)
    print(f"napari-regcon: bioimage.io package written to {report.path} (bioimageio.spec {report.spec_version}: "
          f"{report.status}; TorchScript matches the predictor within {report.max_abs_diff:.1e})", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from napari_regcon.core.bundle import as_bundle
    from napari_regcon.core.checkpoint import load_model_source

    summary = as_bundle(load_model_source(args.model), args.model).describe()
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_common_training(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=positive_int, default=steps, help=f"optimisation steps (default {steps})")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic: auto (default) = bf16 on CPUs with bf16 units, fp16/bf16 on CUDA, else fp32")
    p.add_argument("--patch-size", default=None, help="patch size: 128 (YX) or 8,64,64 (ZYX); default 128 (2D) or 8,128,128 (3D), cut to the image")
    p.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2: slice-wise model (EM default); 3: volumetric")
    p.add_argument("--channel-axis", type=int, default=None, help="axis of the channels in a multi-channel image")
    p.add_argument("--batch-size", type=positive_int, default=None, help="patches per step (default 8 in 2D, 4 in 3D)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--base", type=positive_int, default=None,
                   help="U-Net width of the first level (default 16 in 2D, 8 in 3D)")
    p.add_argument("--depth", type=positive_int, default=3, help="U-Net poolings (default 3)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    _add_run_options(p)
    p.add_argument("--resume", default=None, metavar="BUNDLE", help="continue an interrupted run from its bundle")
    p.add_argument("--checkpoint-every", type=nonneg_int, default=100, help="save the bundle every N steps (default 100)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")


def _add_run_options(p: argparse.ArgumentParser, quiet: str = "no progress bar") -> None:
    """--device, --threads and --quiet: how every command that computes runs (``quiet``: its help)."""
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda or mps")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: the cores the 1-minute load average leaves free, at least 1: on a "
                        "shared CPU more threads than free cores run several times slower)")
    p.add_argument("--quiet", action="store_true", help=quiet)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"napari-regcon: error: {message} (see '{self.prog} --help').\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from napari_regcon.core.pretext import PRETEXTS

    parser = _Parser(prog="napari-regcon", description="Label-efficient segmentation of microscopy stacks: pretrain, fine-tune, predict, evaluate.")
    parser.add_argument("--version", action="version", version=f"napari-regcon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabeled images",
                       description="Pretrain a U-Net on unlabeled images with a self-supervised method; writes a bundle usable as --init for finetune.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="unlabeled images (.tif, .zarr, .npy, .png)")
    p.add_argument("--method", default="mim", choices=sorted(PRETEXTS), help="self-supervised method (default mim)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="output bundle file")
    p.add_argument("--mask-ratio", type=mask_ratio, default=0.6, help="mim: fraction of masked cells (default 0.6)")
    p.add_argument("--mask-patch", default="16",
                   help="mim: masked cell size, 16 or per axis 4,16,16 (ZYX); in 3D a single number follows the "
                        "voxel size of the TIFF when it is known (default 16)")
    p.add_argument("--mask", default="random",
                   help="mim masking: random, intensity (bright structures masked more often), channel (independent "
                        "mask per channel) or a combination such as intensity,channel (default random)")
    p.add_argument("--param", action="append", default=None, metavar="KEY=VALUE",
                   help="extra parameter of the method, e.g. --param temperature=0.1 (repeatable)")
    _add_common_training(p, 1000)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="train a segmentation model on painted labels",
                       description="Fine-tune on labels. Sparse labels (default): 0 = not annotated, every value > 0 is a class (paint a background class too). --dense: a full mask where 0 is background.")
    p.add_argument("--image", required=True, help="the image the labels belong to")
    p.add_argument("--labels", required=True, help="labels of the same shape (0 = not annotated)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="output bundle file")
    p.add_argument("--init", default=None, metavar="BUNDLE", help="start from a pretrained or segmentation bundle (fixes the architecture)")
    p.add_argument("--dense", action="store_true", help="labels are a full mask: 0 is a class (background)")
    p.add_argument("--unlabeled", nargs="*", default=None, metavar="IMAGE", help="unlabeled images for semi-supervised training")
    p.add_argument("--class-names", default=None, help="comma-separated names of the classes, in increasing label value")
    p.add_argument("--recipe", default="auto", choices=("auto", *RECIPES),
                   help="auto (default): 'strokes' when under 30%% of the painted planes is annotated (balanced loss, "
                        "edge-aware smoothness, averaged weights, stops when the prediction stops changing), else "
                        "'dense' (classes weighed alike in training, half of the labels' class prior added back at "
                        "prediction). 'balanced': full masks, for a model you will apply only to other stacks whose "
                        "objects fill a different share (none of the prior added back)")
    p.add_argument("--recipe-param", action="append", default=None, metavar="KEY=VALUE",
                   help="change one setting of the recipe (repeatable), e.g. smoothness=1")
    _add_common_training(p, 400)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", help="tiled prediction of an image with a segmentation bundle",
                       description="Predict labels (same values as the training labels) tile by tile; .zarr outputs are written tile by tile.")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="a segmentation bundle (from finetune) or its bioimage.io package")
    p.add_argument("--image", required=True, help="image to segment (.tif, .zarr, .npy, .png, .jpg; a trailing axis of 3 or 4 on PNG/JPEG/RGB TIFF is colour)")
    p.add_argument("--out", required=True, help="labels output: .tif, .zarr or .npy")
    p.add_argument("--probabilities", default=None, metavar="OUT", help="also write class probabilities (C, ...) here")
    p.add_argument("--uncertainty", default=None, metavar="OUT",
                   help="also write an uncertainty map here: the entropy of the class probabilities, 0 (sure) to 1 "
                        "(no idea); where to correct first")
    p.add_argument("--min-size", type=nonneg_int, default=0, metavar="N",
                   help="give connected regions smaller than N pixels the class around them (per slice for a 2D "
                        "model; default 0 = off)")
    p.add_argument("--crf", action="store_true",
                   help="refine with a fully connected CRF (2D, slice by slice; GLRP's post-processing); for compact "
                        "objects, not thin ones: it erases membranes")
    p.add_argument("--tile", default=None, help="tile size, e.g. 256 or 16,128,128 (default 256x256 for a 2D model, 16,128,128 for a 3D model)")
    p.add_argument("--overlap", type=overlap_fraction, default=0.25, help="tile overlap fraction, 0 <= overlap < 1 (default 0.25)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic: auto (default) = bf16 on CPUs with bf16 units (0.01 %% of labels differ from "
                        "fp32 in our measurement), fp16/bf16 on CUDA, else fp32")
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the channels (default: the bundle's, or the colour axis of an RGB image)")
    p.add_argument("--class-prior", default="auto", choices=("auto", "on", "off"),
                   help="a model fine-tuned on some planes of a stack leans towards that stack's class shares: auto "
                        "(default) = on the image it was trained on only, on = always, off = never")
    _add_run_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out / --probabilities / --uncertainty if they exist (refused otherwise)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice and IoU per class as one JSON object",
                       description="Compare a prediction with ground truth; prints one JSON object on stdout. Both "
                                   "files must use the same label values: give --model to map the bundle's values "
                                   "(e.g. sparse 1/2) onto a truth in class indices (0/1), or --map.")
    p.add_argument("--pred", required=True, help="predicted labels (from predict --out)")
    p.add_argument("--truth", required=True, help="ground-truth labels of the same shape and label values")
    p.add_argument("--model", default=None, metavar="BUNDLE", help="the bundle that made --pred: map its label values to the truth's")
    p.add_argument("--map", default=None, metavar="PRED=TRUTH,...", help="map prediction values to truth values, e.g. 1=0,2=1")
    p.add_argument("--ignore-zero", action="store_true", help="skip pixels where the truth is 0 (sparse truth)")
    p.add_argument("--classes", type=nonneg_int, nargs="*", default=None, help="report (and average over) only these label values")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole loop on the bundled EM sample (no downloads)",
                       description="Pretrain briefly, fine-tune on one labeled slice, predict the other slices, evaluate; writes prediction, overlay PNG and report.")
    p.add_argument("--out", default="regcon-demo", type=Path, help="output folder (default ./regcon-demo)")
    p.add_argument("--pretrain-steps", type=positive_int, default=150, help="self-supervised steps (default 150)")
    p.add_argument("--finetune-steps", type=positive_int, default=250, help="fine-tuning steps (default 250)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic of training and prediction (default auto: bf16 where the hardware has it)")
    _add_run_options(p, quiet="no progress messages")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="write a bioimage.io model package of a segmentation bundle",
                       description="Export a fine-tuned bundle as a bioimage.io model package (format 0.5): TorchScript "
                                   "weights, test input/output, cover, README, and the bundle itself (predict and "
                                   "finetune --init read the package back). Needs: pip install \"napari-regcon[export]\".")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="a segmentation bundle (from finetune)")
    p.add_argument("--out", required=True, metavar="DIR|ZIP", help="package.zip, or a new folder")
    p.add_argument("--image", default=None, help="image for the test input (default: the bundle's training image)")
    p.add_argument("--channel-axis", type=int, default=None, help="axis of the channels of --image")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    p.add_argument("--name", type=model_name, default=None, help="model name (letters, digits, spaces, _+-())")
    p.add_argument("--description", default=None, help="one-paragraph description of the model")
    p.add_argument("--author", action="append", default=None, metavar="NAME", help="author name (repeatable)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="describe a bundle", description="Print a bundle's (or bioimage.io package's) metadata as JSON.")
    p.add_argument("model", metavar="BUNDLE", help="a bundle (.pt) or a bioimage.io package exported by napari-regcon")
    p.set_defaults(func=cmd_info)
    return parser


def set_threads(requested: int | None) -> int | None:
    """Give torch ``requested`` CPU threads, or by default the cores the load average leaves free
    (:func:`~napari_regcon.core.device.default_threads`); returns the count set (None: left alone).

    An ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the environment (torchrun sets one per rank) is
    the user's choice and is kept when ``--threads`` is not given.
    """
    import torch

    from napari_regcon.core.device import default_threads

    if requested is not None:
        if requested < 1:
            raise RegconError(f"--threads must be at least 1, got {requested}.")
        n = requested
    elif any(os.environ.get(v, "").strip() for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return None
    else:
        n = default_threads()
    torch.set_num_threads(n)
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, turn errors into one line on stderr and an exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors (already printed)
        return int(exit_.code or 0)
    from napari_regcon.core import distributed

    clean = False
    try:
        if hasattr(args, "threads"):
            set_threads(args.threads)
        if args.command in ("pretrain", "finetune"):
            distributed.init_from_env(args.device)
        code = int(args.func(args) or 0)
        clean = True
        return code
    except RegconError as err:
        print(f"napari-regcon: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError: test it first
        if is_out_of_memory(err):
            print(f"napari-regcon: error: out of memory ({type(err).__name__}); "
                  "use a smaller --batch-size, --patch-size or --tile.", file=sys.stderr)
            return 1
        if not distributed.lost_peer(err):
            raise
        rank = distributed.world()[0]
        print(f"napari-regcon: error: rank {rank} lost contact with another rank, which failed or was stopped "
              "(see its message above); the last checkpoint written is kept.", file=sys.stderr)
        return 1
    except OSError as err:  # a read or write failing mid-run (disk full, file gone, network share)
        print(f"napari-regcon: error: {err.strerror or err}"
              + (f": {err.filename}" if getattr(err, "filename", None) else "") + ".", file=sys.stderr)
        return 1
    except _Interrupted as err:
        clean = True  # every rank stopped at the same step
        print(f"napari-regcon: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("napari-regcon: aborted; no partial output was left behind.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        distributed.shutdown(clean)


if __name__ == "__main__":
    raise SystemExit(main())
