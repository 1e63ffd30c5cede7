"""bioimage.io export: a valid offline package whose TorchScript weights reproduce our predictor, read back losslessly."""

from __future__ import annotations

import contextlib
import socket
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_regcon.cli import main
from napari_regcon.core.checkpoint import (
    PACKAGE_BUNDLE,
    load_bundle,
    load_model_source,
    save_bundle,
)
from napari_regcon.core.errors import RegconError
from napari_regcon.core.workflows import finetune_job, model_from_bundle, run_predict

TINY = {"steps": 3, "base": 4, "depth": 2, "batch_size": 2, "patch_size": 32, "device": "cpu"}


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Any attempt to open a network connection fails (validation must work without the network)."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline export/validation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        yield


def _export(model: Path, out: Path, **kwargs) -> object:
    from napari_regcon.core.export import export_bioimageio
    with _offline():
        return export_bioimageio(model, out, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory, em_small) -> dict[str, Path]:
    """A tiny fine-tuned 2D bundle (trained a few steps on em_small), its image, and (if the extra is installed) its package."""
    d = tmp_path_factory.mktemp("export")
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    paths = {"dir": d, "image": d / "image.tif", "model": d / "model.pt", "pre": d / "pre.pt"}
    tifffile.imwrite(paths["image"], raw, photometric="minisblack")
    finetune_job(raw, labels, class_names=["cell", "membrane"], sources=[str(paths["image"])],
                 **TINY).run(out=paths["model"])
    pretrained = load_bundle(paths["model"])  # the kind is all that matters for the refusal
    pretrained.update(kind="pretrained", classes={"values": [], "names": []})
    save_bundle(pretrained, paths["pre"])
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        return paths
    paths["zip"] = d / "model.bioimageio.zip"
    paths["report"] = _export(paths["model"], paths["zip"], authors=["Test Author"])
    return paths


def _package(files: dict) -> Path:
    if "zip" not in files:
        pytest.skip("bioimageio.spec (the 'export' extra) is not installed")
    return files["zip"]


def _rdf(pkg: Path) -> dict:
    with zipfile.ZipFile(pkg) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def _array(pkg: Path, name: str) -> np.ndarray:
    import io
    with zipfile.ZipFile(pkg) as zf:
        return np.load(io.BytesIO(zf.read(name)))


def test_package_validates_offline_with_bioimageio_spec(files) -> None:
    spec = pytest.importorskip("bioimageio.spec")
    pkg = _package(files)
    from napari_regcon.core.export import _KNOWN_URLS
    with _offline():
        descr = spec.load_description(pkg, perform_io_checks=True, known_files=dict(_KNOWN_URLS))
    assert not isinstance(descr, spec.InvalidDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("valid-format", "passed")
    assert files["report"].status == descr.validation_summary.status
    assert str(descr.format_version).startswith("0.5") and str(descr.license) == "BSD-3-Clause"
    assert len(descr.cite) == 5 and [a.name for a in descr.authors] == ["Test Author"]
    ipt, out = descr.inputs[0], descr.outputs[0]
    assert [str(a.id) for a in ipt.axes] == ["batch", "channel", "y", "x"]
    assert [str(a.id) for a in out.axes] == ["batch", "channel", "y", "x"]
    assert list(out.axes[1].channel_names) == ["cell", "membrane"]
    assert "membrane" in out.description and "softmax" in out.description
    # the stored percentile normalisation as a fixed scale_linear
    norm = load_bundle(files["model"])["normalization"]
    scale = [p for p in ipt.preprocessing if p.id == "scale_linear"][0].kwargs
    low, high = np.array(norm["low"]), np.array(norm["high"])
    np.testing.assert_allclose(scale.gain, 1 / (high - low), rtol=1e-12)
    np.testing.assert_allclose(scale.offset, -low / (high - low), rtol=1e-12)
    # documentation, cover and the attached bundle are in the package
    with zipfile.ZipFile(pkg) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        import imageio.v3 as iio
        cover = iio.imread(zf.read("cover.png"), extension=".png")
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", "weights_torchscript.pt",
            PACKAGE_BUNDLE} <= names
    assert "## Validation" in readme and "membrane" in readme
    assert cover.shape[1] == 2 * cover.shape[0] and cover.shape[2] == 3


def test_torchscript_weights_reproduce_the_predictor(files) -> None:
    pkg = _package(files)
    rdf = _rdf(pkg)
    x = _array(pkg, "test_input.npy")
    expected = _array(pkg, "test_output.npy")
    assert x.shape == (1, 1, 128, 128) and expected.shape == (1, 2, 128, 128)
    np.testing.assert_allclose(expected.sum(1), 1.0, atol=1e-5)  # probabilities
    # run the weights as a bioimage.io consumer does: the rdf's preprocessing, then the TorchScript module
    kw = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"][0]["kwargs"]
    prepped = (x * np.reshape(kw["gain"], (1, -1, 1, 1)) + np.reshape(kw["offset"], (1, -1, 1, 1))).astype(np.float32)
    with zipfile.ZipFile(pkg) as zf:
        import io
        net = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")), map_location="cpu")
    with torch.no_grad():
        got = net(torch.from_numpy(prepped)).numpy()
    bundle = load_bundle(files["model"])
    _, core = run_predict(bundle, x[0].copy(), channel_axis=0, probabilities=True, device="cpu",
                         precision="fp32", class_prior="on")  # in fp32 as the TorchScript weights; the
    # package keeps the labeled stack's class prior, and the test input is a crop of that stack
    assert np.abs(got - core[None]).max() < 1e-4
    assert np.abs(expected - core[None]).max() < 1e-4
    assert files["report"].max_abs_diff < 1e-4
    # the traced module is not tied to the test size: another valid size matches the eager network
    y = torch.from_numpy(prepped[..., 8:72, 16:112].copy())
    with torch.no_grad():
        eager = model_from_bundle(bundle)(y).softmax(1)
        np.testing.assert_allclose(net(y).numpy(), eager.numpy(), atol=1e-5)


def test_predict_with_package_equals_bundle(files, tmp_path) -> None:
    pkg = _package(files)
    folder = tmp_path / "pkgdir"
    _export(files["model"], folder)
    # lossless: the attachment is the bundle file byte for byte, and loads to the same weights
    with zipfile.ZipFile(pkg) as zf:
        assert zf.read(PACKAGE_BUNDLE) == files["model"].read_bytes()
    original = load_bundle(files["model"])
    for source in (pkg, folder):
        loaded = load_model_source(source)
        assert all(torch.equal(v, loaded["state_dict"][k]) for k, v in original["state_dict"].items())
        assert loaded["normalization"] == original["normalization"] and loaded["classes"] == original["classes"]
    outs = {}
    for key, model in (("bundle", files["model"]), ("zip", pkg), ("dir", folder)):
        out, probs = tmp_path / f"{key}.tif", tmp_path / f"{key}_p.tif"
        assert main(["predict", "--model", str(model), "--image", str(files["image"]), "--out", str(out),
                     "--probabilities", str(probs), "--quiet", "--device", "cpu"]) == 0
        outs[key] = (tifffile.imread(out), tifffile.imread(probs))
    for key in ("zip", "dir"):
        assert np.array_equal(outs[key][0], outs["bundle"][0]) and np.array_equal(outs[key][1], outs["bundle"][1])
    # a package is a valid --init for further fine-tuning
    labels = tmp_path / "labels.tif"
    lab = np.zeros((4, 128, 128), np.uint8)
    lab[0, :20], lab[0, 40:60] = 1, 2
    tifffile.imwrite(labels, lab, photometric="minisblack")
    assert main(["finetune", "--image", str(files["image"]), "--labels", str(labels), "--init", str(pkg),
                 "--out", str(tmp_path / "more.pt"), "--steps", "1", "--batch-size", "2", "--patch-size", "32",
                 "--device", "cpu", "--quiet"]) == 0


def test_export_3d_model(tmp_path, em_small) -> None:
    pytest.importorskip("bioimageio.spec")
    raw, truth = em_small
    raw, truth = raw[:, :64, :64].copy(), truth[:, :64, :64].copy()
    job = finetune_job(raw, truth, dense=True, ndim=3, **{**TINY, "patch_size": "4,32,32"})
    model = save_bundle(job.run(), tmp_path / "m3d.pt")
    report = _export(model, tmp_path / "m3d.zip", image=raw)
    rdf = _rdf(report.path)
    assert [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "z", "y", "x"]
    assert _array(report.path, "test_input.npy").shape == (1, 1, 4, 64, 64)
    n_classes = len(load_bundle(model)["classes"]["values"])
    assert _array(report.path, "test_output.npy").shape == (1, n_classes, 4, 64, 64)
    assert report.max_abs_diff < 1e-4


def _fails(capsys, argv: list[str], match: str, no_file: Path | None = None) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("napari-regcon: error: "), err
    assert match.lower() in lines[0].lower(), lines[0]
    if no_file is not None:
        assert not no_file.exists(), f"{no_file} was left behind"
        assert not [p for p in no_file.parent.iterdir() if p.name.startswith(f".{no_file.name}")], "temporary files left"


def test_bad_exports(files, capsys, tmp_path) -> None:
    model = str(files["model"])
    out = tmp_path / "pkg.zip"
    _fails(capsys, ["export", "--model", str(files["pre"]), "--out", str(out)], "fine-tune it on labels", out)
    _fails(capsys, ["export", "--model", model, "--out", str(tmp_path / "nodir" / "pkg.zip")], "does not exist")
    _fails(capsys, ["export", "--model", model, "--out", "/proc/regcon-pkg.zip"], "Cannot write")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _fails(capsys, ["export", "--model", model, "--out", str(mine), "--overwrite"], "not empty")
    assert (mine / "notes.txt").read_text() == "keep me"
    _fails(capsys, ["export", "--model", str(tmp_path / "missing.pt"), "--out", str(out)], "does not exist", out)
    if "zip" in files:  # the extra is installed: a training image that moved away must be replaced by --image
        moved = load_bundle(files["model"])
        moved["data"]["sources"] = [str(tmp_path / "gone.tif")]
        save_bundle(moved, tmp_path / "moved.pt")
        _fails(capsys, ["export", "--model", str(tmp_path / "moved.pt"), "--out", str(out)], "--image", out)


def test_missing_extra_is_one_clear_sentence(files, capsys, tmp_path, monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "bioimageio" or m.startswith("bioimageio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # makes `import bioimageio.spec` fail
    out = tmp_path / "pkg.zip"
    _fails(capsys, ["export", "--model", str(files["model"]), "--out", str(out)], 'pip install "napari-regcon[export]"', out)


def test_foreign_zips_and_folders_are_refused(files, capsys, tmp_path) -> None:
    pred = tmp_path / "pred.tif"
    pr = ["predict", "--image", str(files["image"]), "--out", str(pred), "--quiet"]
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as zf:
        zf.writestr("hello.txt", "not a model")
    _fails(capsys, [*pr, "--model", str(tmp_path / "foreign.zip")], "neither a napari-regcon bundle nor a bioimage.io", pred)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:  # someone else's bioimage.io package
        zf.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\nname: other model\n")
        zf.writestr("weights.pt", b"\0")
    _fails(capsys, [*pr, "--model", str(tmp_path / "other.zip")], "exported by 'napari-regcon export'", pred)
    with zipfile.ZipFile(tmp_path / "broken.zip", "w") as zf:  # our layout, but the attachment is missing
        zf.writestr("rdf.yaml", f"config:\n  napari_regcon:\n    bundle: {PACKAGE_BUNDLE}\n")
    _fails(capsys, [*pr, "--model", str(tmp_path / "broken.zip")], "incomplete", pred)
    (tmp_path / "folder").mkdir()
    _fails(capsys, [*pr, "--model", str(tmp_path / "folder")], "is a folder", pred)
    with pytest.raises(RegconError, match="neither"):
        load_model_source(tmp_path / "foreign.zip")
