"""Export a fine-tuned bundle as a bioimage.io model package (model format 0.5) and check it offline.

The package holds TorchScript weights that output class probabilities (the U-Net followed by a
softmax over classes), a test input and the probabilities our own tiled predictor gives for it, a
cover image, a README, the citation, license and author fields, and the original napari-regcon
bundle as an attachment, which :func:`napari_regcon.core.checkpoint.load_model_source` reads back
losslessly. The bundle's percentile normalisation becomes a fixed per-channel ``scale_linear``
(gain ``1/(high-low)``, offset ``-low/(high-low)``), so any bioimage.io consumer normalises exactly
as we do. ``bioimageio.spec`` (the ``export`` extra) is imported only here, when exporting.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import nn

from .. import __version__
from .bundle import Bundle, as_bundle
from .checkpoint import (
    PACKAGE_BUNDLE,
    PACKAGE_CONFIG_KEY,
    check_writable,
    load_model_source,
    save_bundle,
)
from .errors import RegconError
from .io import atomic_path, read_array
from .models import UNetConfig
from .normalize import Normalization
from .volume import Volume, as_volume

WEIGHTS = "weights_torchscript.pt"
TEST_INPUT = "test_input.npy"
TEST_OUTPUT = "test_output.npy"
SAMPLE_INPUT = "sample_input.tif"
SAMPLE_OUTPUT = "sample_output.tif"
COVER = "cover.png"
README = "README.md"
TOLERANCE = 1e-4
"""Largest allowed difference between the TorchScript weights' and our predictor's probabilities."""

_GLRP_URL = "http://pure.bit.edu.cn/en/publications/glrp-global-and-local-contrastive-learning-based-on-relative-posi"
CITATIONS: tuple[dict[str, str], ...] = (
    {"text": "Lin G. et al. (2023) A region-level contrastive learning-based deep model for glomerular "
             "ultrastructure segmentation on electron microscope images (USRegCon). J. Southern Medical "
             "University 43(5):815-824.", "doi": "10.12122/j.issn.1673-4254.2023.05.18"},
    {"text": "Zhao X. et al. (2024) GLRP: Global and local contrastive learning based on relative position for "
             "medical image segmentation on cardiac MRI. Int. J. Imaging Systems and Technology 34(2):e22992.",
     "url": _GLRP_URL},
    {"text": "Wu W. et al. (2023) Semi-supervised medical image segmentation with multiscale contrastive "
             "learning and cross-supervision. IEEE EMBC 2023.", "doi": "10.1109/EMBC40787.2023.10341018"},
    {"text": "Yan X. et al. (2023) Localized Region Contrast for enhancing self-supervised learning in medical "
             "image segmentation. MICCAI 2023, LNCS 14221.", "doi": "10.1007/978-3-031-43895-0_44"},
    {"text": "Xu T. et al. (2023) Masked image modeling for label-efficient segmentation in two-photon "
             "excitation microscopy. MILLanD @ MICCAI 2023.", "doi": "10.1007/978-3-031-44917-8_11"},
)
# URLs the validator would otherwise HEAD-request: declared known so validation never needs the network
_KNOWN_URLS = {_GLRP_URL: None}
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.float32)


@dataclass
class ExportReport:
    """What was written and how it was checked."""

    path: Path
    status: str
    """bioimage.io validation status of the written package (``valid-format`` or ``passed``)."""
    max_abs_diff: float
    """Largest |TorchScript - napari-regcon predictor| probability on the test input."""
    spec_version: str
    format_version: str
    warnings: list[str] = field(default_factory=list)


class _Probabilities(nn.Module):
    """The U-Net followed by a softmax over the class axis: the exported network outputs probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _require_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as err:
        raise RegconError('Exporting to bioimage.io needs the bioimageio.spec package; install it with '
                          'pip install "napari-regcon[export]".') from err
    return spec


def check_export_target(out: str | Path) -> tuple[Path, bool]:
    """Validate ``--out`` before any work: a ``.zip`` file, or a new/empty/previously exported folder."""
    out = Path(out)
    as_zip = out.suffix.lower() == ".zip"
    parent = out.parent if str(out.parent) else Path(".")
    if as_zip or not out.exists():
        if out.is_dir():
            raise RegconError(f"Cannot write {out}: it is a folder.")
        check_writable(out)
        return out, as_zip
    if not out.is_dir():
        raise RegconError(f"Cannot write the package folder {out}: a file of that name exists; use a .zip name or a new folder.")
    if any(out.iterdir()) and not (out / "rdf.yaml").is_file():
        raise RegconError(f"Cannot write the package folder {out}: it is not empty and not a bioimage.io package; choose a new folder.")
    check_writable(parent / f"{out.name}.zip")  # the folder is replaced by a sibling written next to it
    return out, as_zip


def _safe_name(text: str, limit: int = 64) -> str:
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", " ", text)
    name = re.sub(r"\s+", " ", name).strip()[:limit].strip()
    return name if len(name) >= 5 else "napari-regcon model"


def _crop(vol: Volume, cfg: UNetConfig) -> np.ndarray:
    """A central crop of ``vol`` (C, [Z,] Y, X) whose spatial sizes the network accepts."""
    c, z, y, x = vol.shape
    div = cfg.divisor
    if cfg.ndim == 2:
        sizes, maxima, spatial = (y, x), (256, 256), (y, x)
    else:
        sizes, maxima, spatial = (z, y, x), (16, 128, 128), (z, y, x)
    crop = []
    for s, m, d in zip(sizes, maxima, div):
        n = min(s, max(m, d)) // d * d
        if n < d:
            raise RegconError(f"The image ({'x'.join(map(str, spatial))}) is too small for a test input; "
                              f"this network needs at least {'x'.join(map(str, div))} pixels.")
        crop.append(n)
    starts = [(s - n) // 2 for s, n in zip(sizes, crop)]
    sl = tuple(slice(a, a + n) for a, n in zip(starts, crop))
    if cfg.ndim == 2:
        block = vol.read(z // 2, *sl)[:, 0]
    else:
        block = vol.read(*sl)
    return np.ascontiguousarray(block, np.float32)


def _scale_linear(norm: Normalization) -> tuple[list[float], list[float]]:
    low = np.asarray(norm.low, np.float64)
    high = np.asarray(norm.high, np.float64)
    gain = 1.0 / (high - low)
    return [float(g) for g in gain], [float(v) for v in -low * gain]


def _cover(raw: np.ndarray, probs: np.ndarray, gain: list[float], offset: list[float], path: Path) -> None:
    """A 2:1 PNG: the (normalised) test input next to the predicted classes (but the first) over it."""
    import imageio.v3 as iio

    if raw.ndim == 4:  # 3D: middle plane
        raw, probs = raw[:, raw.shape[1] // 2], probs[:, probs.shape[1] // 2]
    gray = np.clip(raw[0] * gain[0] + offset[0], 0, 1)
    rgb = np.repeat(gray[..., None], 3, -1) * 255
    pred = probs.argmax(0)
    colors = _PALETTE[(pred - 1) % len(_PALETTE)]
    overlay = np.where((pred > 0)[..., None], 0.55 * rgb + 0.45 * colors, rgb)  # the first class (background) uncoloured
    img = np.concatenate([rgb, overlay], axis=1)
    reps = max(1, 256 // img.shape[0])  # small crops are enlarged so the cover is readable
    img = np.kron(img, np.ones((reps, reps, 1), np.float32))
    iio.imwrite(path, np.clip(img, 0, 255).astype(np.uint8))


def _readme(bundle: Bundle, name: str, description: str, class_rows: list[str], diff: float,
            shape_in: tuple[int, ...], gain: list[float], offset: list[float]) -> str:
    cfg, norm = bundle.model, bundle.normalization
    assert norm is not None  # a segmentation bundle always has one (Bundle.validate)
    method = bundle.pretext.method
    steps = bundle.training.step
    losses = bundle.history.loss
    axes = "batch, channel, y, x" if cfg.ndim == 2 else "batch, channel, z, y, x"
    lines = [
        f"# {name}", "", description, "",
        "Exported from a [napari-regcon](https://github.com/napari-regcon/napari-regcon) segmentation bundle "
        f"(napari-regcon {__version__}, PyTorch {torch.__version__}).", "",
        "## Model", "",
        f"- {cfg.ndim}D U-Net (GroupNorm), base width {cfg.base}, depth {cfg.depth}, "
        f"{cfg.in_channels} input channel(s), {cfg.out_channels} classes.",
        f"- Input axes: {axes}; every spatial size must be a multiple of "
        f"{'x'.join(map(str, cfg.divisor))}.",
        f"- Pretraining: {method or 'none'}; fine-tuning steps: {steps}"
        + (f"; final training loss {losses[-1]:.4f}." if losses else "."), "",
        "## Input normalisation", "",
        f"Percentile normalisation (percentiles {norm.p_low} / {norm.p_high} of the "
        "training images, per channel): `(x - low) / (high - low)` with "
        f"low = {list(norm.low)}, high = {list(norm.high)}. The package states it as a fixed `scale_linear` "
        f"preprocessing with gain = {gain} and offset = {offset} along the channel axis.", "",
        "## Output", "",
        "Class probabilities (softmax over the channel axis, computed inside the TorchScript weights):", "",
        "| channel | class name | label value |", "|---|---|---|", *class_rows, "",
        "The predicted label of a pixel is the label value of its most probable channel.", "",
        "## Validation", "",
        f"`test_input.npy` ({'x'.join(map(str, shape_in))}, raw intensities) is a central crop of the training "
        "image; `test_output.npy` holds the probabilities napari-regcon's own tiled predictor gives for it. "
        "The TorchScript weights, run on the test input after the package's preprocessing, reproduce it "
        f"within {diff:.2e} (max. absolute difference; tolerance {TOLERANCE:g}). Check the model on your own "
        "data by comparing its prediction with a few hand-labelled slices (e.g. `napari-regcon evaluate`).", "",
        "## Use with napari-regcon", "",
        f"The original bundle is attached as `{PACKAGE_BUNDLE}`; napari-regcon reads it back losslessly:", "",
        "```bash",
        "napari-regcon predict --model this-package.zip --image stack.tif --out prediction.tif",
        "napari-regcon finetune --init this-package.zip --image stack.tif --labels labels.tif --out model.pt",
        "```", "",
        "## License and citation", "",
        "BSD-3-Clause. Please cite the methods napari-regcon builds on (listed under `cite` in rdf.yaml).", "",
    ]
    return "\n".join(lines)


def export_bioimageio(model: str | Path, out: str | Path, *, image: Any = None, channel_axis: int | None = None,
                      name: str | None = None, description: str | None = None,
                      authors: Sequence[str] | None = None) -> ExportReport:
    """Write a bioimage.io model package (``.zip`` or folder) for a fine-tuned bundle and validate it offline.

    ``image`` (array or path) gives the test input; by default the bundle's training image is used.
    The package is built in a temporary folder next to ``out`` and renamed into place only after
    it validated, so a failure never leaves a partial package behind.
    """
    model = Path(model)
    bundle = load_model_source(model)
    typed = as_bundle(bundle, model)
    if not typed.is_segmentation:
        raise RegconError(f"{model} is a pretrained (self-supervised) bundle without classes; fine-tune it on labels "
                          "before exporting it.")
    out, as_zip = check_export_target(out)
    spec = _require_spec()
    cfg = typed.model
    channel_axis = typed.channel_axis(channel_axis)
    if image is None:
        sources = [s for s in typed.data.sources if s and Path(s).exists()]
        if not sources:
            raise RegconError(f"The training image of {model} is not available here; give an image for the "
                              "package's test input with --image.")
        image = sources[0]
    if isinstance(image, (str, Path)):
        image = read_array(image, "image")
    vol = as_volume(image, channel_axis)
    if vol.shape[0] != cfg.in_channels:
        raise RegconError(f"The model expects {cfg.in_channels} channel(s) but the image has {vol.shape[0]}; check the channel axis.")
    if cfg.ndim == 3 and not vol.is_3d:
        raise RegconError("This is a 3D model, but the test image is 2D; give it a ZYX stack.")

    from .predict import PredictOptions, predict

    raw = _crop(vol, cfg)
    spatial = raw.shape[1:]
    # the expected output is what our own predictor gives (one tile covering the crop), in fp32 as
    # the TorchScript weights run (a copy: Volume.read returns a view of float32 input, which the
    # predictor normalises in place). The package keeps a labeled stack's class prior, if the bundle has
    # one, as the bundle applies it on that stack (the crop is not the whole stack, so say so).
    probs = predict(typed, raw.copy(), PredictOptions(channel_axis=0, probabilities=True, tile=spatial,
                                                      device="cpu", precision="fp32", class_prior="on")).probabilities
    probs = np.ascontiguousarray(probs, np.float32)
    assert typed.normalization is not None  # a segmentation bundle always has one (Bundle.validate)
    gain, offset = _scale_linear(typed.normalization)

    values = typed.classes.values
    names = [str(n) for n in typed.classes.names or [f"class {v}" for v in values]]
    class_rows = [f"| {i} | {n} | {v} |" for i, (n, v) in enumerate(zip(names, values))]
    mapping = ", ".join(f"{i}={n} (label {v})" for i, (n, v) in enumerate(zip(names, values)))
    name = _safe_name(name or f"napari-regcon {cfg.ndim}D {' '.join(names)}")
    method = typed.pretext.method
    description = (description or (
        f"{cfg.ndim}D U-Net segmentation of {cfg.in_channels}-channel microscopy images into {len(values)} classes "
        f"({', '.join(names)}), fine-tuned on a few painted labels with napari-regcon"
        + (f" after {method} self-supervised pretraining" if method else "")
        + f". Outputs class probabilities; channels: {mapping}."))[:1024]

    try:
        with atomic_path(out) as tmp:
            src = tmp.with_name(tmp.name + ".files")  # staging files, next to the package being written
            src.mkdir()
            diff = _write_files(typed, model, src, raw, probs, gain, offset)
            _cover(raw, probs, gain, offset, src / COVER)
            (src / README).write_text(_readme(typed, name, description, class_rows, diff, (1, *raw.shape),
                                              gain, offset), encoding="utf-8")
            rdf = _rdf(spec, cfg, name, description, authors, names, values, gain, offset, mapping, method)
            status, warnings = _package(spec, rdf, src, tmp, as_zip)
    except OSError as err:
        raise RegconError(f"Cannot write {out}: {err.strerror or err}.") from err
    return ExportReport(out, status, diff, str(spec.__version__), rdf["format_version"], warnings)


def _write_files(bundle: Bundle, model_path: Path, src: Path, raw: np.ndarray, probs: np.ndarray,
                 gain: list[float], offset: list[float]) -> float:
    """TorchScript weights, test tensors and the attached bundle; returns the weights' max. deviation."""
    x = raw[None]
    np.save(src / TEST_INPUT, x)
    np.save(src / TEST_OUTPUT, probs[None])
    tifffile.imwrite(src / SAMPLE_INPUT, raw, photometric="minisblack")  # viewable samples of the same tensors
    tifffile.imwrite(src / SAMPLE_OUTPUT, probs, photometric="minisblack")
    # what a bioimage.io consumer feeds the weights: the raw test input after scale_linear along channels
    shape = (1, -1) + (1,) * (x.ndim - 2)
    norm_x = (x.astype(np.float64) * np.reshape(gain, shape) + np.reshape(offset, shape)).astype(np.float32)
    wrapped = _Probabilities(bundle.build_model()).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what bioimage.io consumers run
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a training-only shape check; output is verified
        traced = torch.jit.trace(wrapped, torch.from_numpy(norm_x), check_trace=False)
        torch.jit.save(traced, str(src / WEIGHTS))
        got = torch.jit.load(str(src / WEIGHTS), map_location="cpu")(torch.from_numpy(norm_x)).numpy()
    diff = float(np.abs(got - probs[None]).max())
    if not diff <= TOLERANCE:
        raise RegconError(f"The exported TorchScript weights do not reproduce napari-regcon's prediction "
                          f"(max. difference {diff:.2e} > {TOLERANCE:g}); the package was not written.")
    if _is_bundle_file(model_path):
        shutil.copyfile(model_path, src / PACKAGE_BUNDLE)  # the original bytes: a lossless round trip
    else:
        save_bundle(bundle.to_dict(), src / PACKAGE_BUNDLE)
    return diff


def _is_bundle_file(path: Path) -> bool:
    """True for a plain bundle file (torch's zip format), False for a bioimage.io package or folder."""
    import zipfile

    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("data.pkl") for n in zf.namelist())


def _rdf(spec: Any, cfg: UNetConfig, name: str, description: str, authors: Sequence[str] | None,
         class_names: list[str], values: list[int], gain: list[float], offset: list[float], mapping: str,
         method: str | None) -> dict[str, Any]:
    div = cfg.divisor
    space = ["y", "x"] if cfg.ndim == 2 else ["z", "y", "x"]
    in_axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"channel{i}" for i in range(cfg.in_channels)]},
        *({"type": "space", "id": a, "size": {"min": d, "step": d}} for a, d in zip(space, div)),
    ]
    out_axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": class_names},
        *({"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}} for a in space),
    ]
    out_desc = f"Class probabilities (softmax over channels): {mapping}"
    return {
        "type": "model",
        "format_version": spec.ModelDescr.implemented_format_version,
        "name": name,
        "description": description,
        "authors": [{"name": a} for a in (authors or ["napari-regcon user"])],
        "cite": [dict(c) for c in CITATIONS],
        "license": "BSD-3-Clause",
        "tags": ["napari-regcon", "segmentation", "semantic-segmentation", "unet", "pytorch", f"{cfg.ndim}d",
                 "microscopy", *([f"self-supervised-{method}"] if method else [])],
        "documentation": {"source": README},
        "covers": [{"source": COVER}],
        "attachments": [{"source": PACKAGE_BUNDLE}],
        "inputs": [{
            "id": "raw",
            "description": "Raw image intensities; normalised by the fixed percentile scaling of the training data.",
            "axes": in_axes,
            "test_tensor": {"source": TEST_INPUT},
            "sample_tensor": {"source": SAMPLE_INPUT},
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain, "offset": offset}},
            ],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": out_desc if len(out_desc) <= 128 else "Class probabilities (softmax over channels); see README.",
            "axes": out_axes,
            "test_tensor": {"source": TEST_OUTPUT},
            "sample_tensor": {"source": SAMPLE_OUTPUT},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"torchscript": {"source": WEIGHTS, "pytorch_version": torch.__version__.split("+")[0],
                                    "comment": "U-Net followed by a softmax over classes (torch.jit.trace)."}},
        "config": {PACKAGE_CONFIG_KEY: {"bundle": PACKAGE_BUNDLE, "version": str(__version__),
                                        "class_values": values, "class_names": class_names}},
    }


def _package(spec: Any, rdf: dict, src: Path, tmp: Path, as_zip: bool) -> tuple[str, list[str]]:
    """Build and validate the description, write the package to ``tmp``; returns (status, warnings)."""
    from bioimageio.spec import ValidationContext

    ctx = ValidationContext(root=src, file_name="rdf.yaml", perform_io_checks=True, known_files=dict(_KNOWN_URLS),
                            log_warnings=False, progressbar=False)
    descr = spec.build_description(rdf, context=ctx)
    if isinstance(descr, spec.InvalidDescr):
        raise RegconError(f"The bioimage.io description is invalid: {_reason(descr)}")
    with ctx:
        try:
            if as_zip:
                written = spec.save_bioimageio_package(descr, output_path=tmp)
            else:
                written = spec.save_bioimageio_package_as_folder(descr, output_path=tmp) / "rdf.yaml"
        except ValueError as err:  # raised by bioimageio.spec when the written package does not validate
            raise RegconError(f"The written bioimage.io package does not validate: {str(err).splitlines()[0]}") from err
        check = spec.load_description(written, perform_io_checks=True, known_files=dict(_KNOWN_URLS),
                                      progressbar=False)
    if isinstance(check, spec.InvalidDescr):
        raise RegconError(f"The written bioimage.io package does not validate: {_reason(check)}")
    summary = check.validation_summary
    warnings = [f"{w.loc}: {w.msg}" for d in summary.details for w in d.warnings]
    return str(summary.status), warnings


def _reason(descr: Any) -> str:
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in descr.validation_summary.details for e in d.errors]
    return "; ".join(errors[:3]) or "unknown reason"
