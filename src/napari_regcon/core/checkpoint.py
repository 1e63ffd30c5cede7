"""The model bundle file: one file with everything needed to predict or to continue training.

A bundle is plain data (dicts, lists, numbers, strings and tensors), saved with ``torch.save``
through a temporary file and an atomic rename, and loaded with ``torch.load(weights_only=True)``
so that a file from a stranger can never run code. Its layout and the rules that follow from it
are :class:`~napari_regcon.core.bundle.Bundle`; loading checks a file against it.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .bundle import FORMAT, KINDS, VERSION, Bundle, cpu_weights, software_versions, timestamp
from .errors import RegconError


def make_bundle(kind: str, model_config: dict, state_dict: dict[str, torch.Tensor], normalization: dict,
                *, classes: dict | None = None, pretext: dict | None = None, history: dict | None = None,
                training: dict | None = None, data: dict | None = None) -> dict[str, Any]:
    """Assemble a bundle dict from plain sections (CPU tensors, plain values only), checked by :class:`Bundle`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    raw = {"format": FORMAT, "version": VERSION, "kind": kind, "created": timestamp(),
           "software": software_versions(), "model": dict(model_config),
           "state_dict": cpu_weights(state_dict), "normalization": dict(normalization),
           "classes": classes or {"values": [], "names": []}, "pretext": pretext or {},
           "history": history or {"step": [], "loss": []}, "training": training or {}, "data": data or {}}
    return Bundle.from_dict(raw).to_dict()


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
    if path.is_dir() and path.suffix.lower() != ".zarr":  # an existing zarr store is replaced with --overwrite
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
    return _read_bundle(path, path)


def _read_bundle(source: str | Path | BinaryIO, path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a file or stream, then :func:`validate_bundle`."""
    from .filekind import image_kind

    what = image_kind(source) if isinstance(source, (str, Path)) else None
    if what:
        raise RegconError(f"{path} is {what}, not a napari-regcon bundle or bioimage.io package.")
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            bundle = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RegconError(f"Refusing to load {path}: it contains Python objects, not plain data (it is not a napari-regcon bundle, and loading it could run code).") from err
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as err:
        raise RegconError(f"{path} is not a readable napari-regcon bundle (truncated or corrupted file).") from err
    except Exception as err:  # any other failure of torch's reader means the same to a user
        raise RegconError(f"{path} is not a readable napari-regcon bundle ({type(err).__name__}).") from err
    return validate_bundle(bundle, path)


def validate_bundle(bundle: Any, path: str | Path = "bundle") -> dict[str, Any]:
    """Check a loaded bundle, nested parts included (:meth:`Bundle.from_dict`, :meth:`Bundle.validate`); return it."""
    Bundle.from_dict(bundle, path).validate(path)
    return bundle


# --- bioimage.io model packages (written by core/export.py) ------------------------------------

PACKAGE_BUNDLE = "napari_regcon_bundle.pt"
"""File name of the napari-regcon bundle attached to an exported bioimage.io package."""
PACKAGE_CONFIG_KEY = "napari_regcon"
"""Key under the package's ``config`` that names the attached bundle."""
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _is_rdf_name(name: str) -> bool:
    return name in _RDF_NAMES or name.endswith(".bioimageio.yaml")


def _package_bundle_name(rdf_text: str, where: Path) -> str:
    """The attached bundle's file name from a package's rdf.yaml (plain YAML, read with safe_load)."""
    import yaml

    try:
        rdf = yaml.safe_load(rdf_text)
    except yaml.YAMLError as err:
        raise RegconError(f"{where} is not a readable bioimage.io model package (its rdf.yaml is not valid YAML).") from err
    rdf = rdf if isinstance(rdf, dict) else {}
    config = rdf.get("config") if isinstance(rdf.get("config"), dict) else {}
    ours = config.get(PACKAGE_CONFIG_KEY) if isinstance(config.get(PACKAGE_CONFIG_KEY), dict) else {}
    name = ours.get("bundle")
    if not isinstance(name, str):
        attached = [a.get("source") if isinstance(a, dict) else a for a in rdf.get("attachments") or []]
        name = PACKAGE_BUNDLE if PACKAGE_BUNDLE in attached else None
    if name is None:
        raise RegconError(f"{where} is a bioimage.io model package without an attached napari-regcon bundle; "
                          "napari-regcon can only use packages exported by 'napari-regcon export'.")
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise RegconError(f"{where} names an invalid bundle file {name!r} in its rdf.yaml.")
    return name


def load_model_source(path: str | Path) -> dict[str, Any]:
    """Load a segmentation or pretrained bundle from a bundle file or a bioimage.io package (zip or folder).

    A package exported by napari-regcon carries the original bundle as an attachment; it is read
    with ``torch.load(weights_only=True)`` and validated like any bundle, so prediction and
    fine-tuning from a package use exactly the same model and normalisation as from the bundle.
    """
    path = Path(path)
    if not path.exists():
        raise RegconError(f"The model {path} does not exist.")
    if path.is_dir():
        rdfs = sorted(p for p in path.iterdir() if p.is_file() and _is_rdf_name(p.name))
        if not rdfs:
            raise RegconError(f"{path} is a folder, but neither a bioimage.io model package (no rdf.yaml in it) "
                              "nor a napari-regcon bundle file.")
        name = _package_bundle_name(rdfs[0].read_text(encoding="utf-8", errors="replace"), path)
        inner = path / name
        if not inner.is_file():
            raise RegconError(f"The bioimage.io package {path} is incomplete: its napari-regcon bundle {name} is missing.")
        return load_bundle(inner)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                rdfs = sorted(n for n in names if _is_rdf_name(n))
                if rdfs:
                    name = _package_bundle_name(zf.read(rdfs[0]).decode("utf-8", errors="replace"), path)
                    if name not in names:
                        raise RegconError(f"The bioimage.io package {path} is incomplete: its napari-regcon bundle {name} is missing.")
                    with zf.open(name) as fh:
                        data = io.BytesIO(fh.read())
                    return _read_bundle(data, f"{path} ({name})")
                if not any(n.endswith("data.pkl") for n in names):  # torch.save files are zips holding data.pkl
                    raise RegconError(f"{path} is a zip file, but neither a napari-regcon bundle nor a bioimage.io model package.")
        except (zipfile.BadZipFile, OSError) as err:
            raise RegconError(f"{path} is not a readable model file (corrupted zip archive).") from err
    return load_bundle(path)
