"""The model bundle: one file with everything needed to predict or to continue training.

A bundle is plain data (dicts, lists, numbers, strings and tensors), saved with ``torch.save``
through a temporary file and an atomic rename, and loaded with ``torch.load(weights_only=True)``
so that a file from a stranger can never run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_regcon import __version__
from napari_regcon.core.errors import RegconError

FORMAT = "napari-regcon-bundle"
VERSION = 1
KINDS = ("pretrained", "segmentation")
_REQUIRED = ("format", "version", "kind", "model", "state_dict", "normalization")


def make_bundle(kind: str, model_config: dict, state_dict: dict[str, torch.Tensor], normalization: dict,
                *, classes: dict | None = None, pretext: dict | None = None, history: dict | None = None,
                training: dict | None = None, data: dict | None = None) -> dict[str, Any]:
    """Assemble a bundle dict (CPU tensors, plain values only)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": {"napari-regcon": str(__version__), "torch": str(torch.__version__)},
        "model": dict(model_config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "normalization": dict(normalization),
        "classes": classes or {"values": [], "names": []},
        "pretext": pretext or {},
        "history": history or {"step": [], "loss": []},
        "training": training or {},
        "data": data or {},
    }


def check_writable(path: str | Path) -> None:
    """Raise RegconError unless a file can be created next to ``path`` (checked before long work)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise RegconError(f"Cannot write {path}: the folder {parent} does not exist.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".regcon-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RegconError(f"Cannot write {path}: {err.strerror or err}.") from err
    if path.is_dir():
        raise RegconError(f"Cannot write {path}: it is a folder.")


def save_bundle(bundle: dict[str, Any], path: str | Path) -> Path:
    """Write ``bundle`` atomically: a crash mid-save leaves any previous file intact."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise RegconError(f"Cannot write {path}: {err.strerror or err}.") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(bundle, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_bundle(path: str | Path) -> dict[str, Any]:
    """Load and validate a bundle; never unpickles objects. Raises RegconError with the reason."""
    path = Path(path)
    if not path.exists():
        raise RegconError(f"The model bundle {path} does not exist.")
    if path.is_dir():
        raise RegconError(f"{path} is a folder, not a model bundle file.")
    if path.stat().st_size == 0:
        raise RegconError(f"The model bundle {path} is empty.")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RegconError(f"Refusing to load {path}: it contains Python objects, not plain data (it is not a napari-regcon bundle, and loading it could run code).") from err
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as err:
        raise RegconError(f"{path} is not a readable napari-regcon bundle (truncated or corrupted file).") from err
    except Exception as err:  # any other failure of torch's reader means the same to a user
        raise RegconError(f"{path} is not a readable napari-regcon bundle ({type(err).__name__}).") from err
    return validate_bundle(bundle, path)


def validate_bundle(bundle: Any, path: str | Path = "bundle") -> dict[str, Any]:
    """Check the structure of a loaded bundle and return it."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise RegconError(f"{path} is not a napari-regcon bundle (foreign file format).")
    missing = [k for k in _REQUIRED if k not in bundle]
    if missing:
        raise RegconError(f"{path} is an incomplete napari-regcon bundle (missing {', '.join(missing)}).")
    if int(bundle["version"]) > VERSION:
        raise RegconError(f"{path} was written by a newer napari-regcon (bundle version {bundle['version']}); please upgrade.")
    if bundle["kind"] not in KINDS:
        raise RegconError(f"{path} has an unknown kind {bundle['kind']!r}.")
    if not isinstance(bundle["state_dict"], dict) or not all(isinstance(v, torch.Tensor) for v in bundle["state_dict"].values()):
        raise RegconError(f"{path} has malformed weights.")
    return bundle
