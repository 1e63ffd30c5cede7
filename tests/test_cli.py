"""The command line: the happy path end to end, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_regcon.cli import main

TINY = ["--steps", "3", "--base", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, em_small) -> dict[str, Path]:
    """Image, sparse labels, truth and trained bundles written once for the module."""
    d = tmp_path_factory.mktemp("cli")
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    paths = {"image": d / "image.tif", "labels": d / "labels.tif", "truth": d / "truth.tif",
             "pre": d / "pre.pt", "model": d / "model.pt", "dir": d}
    tifffile.imwrite(paths["image"], raw, photometric="minisblack")
    tifffile.imwrite(paths["labels"], labels, photometric="minisblack")
    tifffile.imwrite(paths["truth"], truth, photometric="minisblack")
    assert main(["pretrain", str(paths["image"]), "--method", "mim", "--out", str(paths["pre"]), *TINY]) == 0
    assert main(["finetune", "--image", str(paths["image"]), "--labels", str(paths["labels"]),
                 "--init", str(paths["pre"]), "--out", str(paths["model"]), *TINY]) == 0
    return paths


def _fails(capsys, argv: list[str], match: str, no_file: Path | None = None) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-regcon: error: ") and match.lower() in lines[0].lower(), lines[0]
    if no_file is not None:
        assert not no_file.exists(), f"{no_file} was left behind"
        assert not [p for p in no_file.parent.iterdir() if p.name.startswith(f".{no_file.name}")]


def test_happy_path_predict_evaluate(files, capsys, tmp_path) -> None:
    out = tmp_path / "pred.tif"
    probs = tmp_path / "probs.zarr"
    assert main(["predict", "--model", str(files["model"]), "--image", str(files["image"]), "--out", str(out),
                 "--probabilities", str(probs), "--quiet"]) == 0
    pred = tifffile.imread(out)
    assert pred.shape == (4, 128, 128) and set(np.unique(pred)) <= {1, 2}
    import zarr
    p = zarr.open(str(probs), mode="r")
    assert p.shape == (2, 4, 128, 128)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--truth", str(files["truth"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["classes"]) == {"1", "2"} and 0 <= result["classes"]["2"]["dice"] <= 1


@pytest.mark.parametrize("suffix", [".zarr", ".npy"])
def test_predict_other_formats(files, tmp_path, suffix) -> None:
    out = tmp_path / f"pred{suffix}"
    assert main(["predict", "--model", str(files["model"]), "--image", str(files["image"]), "--out", str(out), "--quiet"]) == 0
    arr = np.load(out) if suffix == ".npy" else __import__("zarr").open(str(out), mode="r")[...]
    assert arr.shape == (4, 128, 128)


def test_predict_uncertainty_and_min_size(files, capsys, tmp_path) -> None:
    """--uncertainty writes the entropy map of the probabilities; --min-size removes small regions; both
    give what the Python API (the widget's path) gives."""
    from napari_regcon.core.checkpoint import load_bundle
    from napari_regcon.core.postprocess import remove_small_regions, uncertainty_map
    from napari_regcon.core.predict import PredictOptions, predict

    base = ["predict", "--model", str(files["model"]), "--image", str(files["image"]), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain.tif"), "--probabilities", str(tmp_path / "p.npy")]) == 0
    assert main([*base, "--out", str(tmp_path / "u.tif"), "--uncertainty", str(tmp_path / "u.zarr")]) == 0
    assert main([*base, "--out", str(tmp_path / "clean.npy"), "--min-size", "30"]) == 0
    plain, probs = tifffile.imread(tmp_path / "plain.tif"), np.load(tmp_path / "p.npy")
    import zarr
    unc = zarr.open(str(tmp_path / "u.zarr"), mode="r")[...]
    assert unc.shape == plain.shape and unc.dtype == np.float32 and 0 <= unc.min() and unc.max() <= 1
    np.testing.assert_allclose(unc, uncertainty_map(probs, "entropy"), atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "u.tif"), plain)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch probabilities left
    clean = np.load(tmp_path / "clean.npy")
    np.testing.assert_array_equal(clean, remove_small_regions(plain, [1, 2], 30, per_plane=True))
    bundle = load_bundle(files["model"])
    api = predict(bundle, tifffile.imread(files["image"]), PredictOptions(min_size=30, uncertainty="entropy"))
    np.testing.assert_array_equal(api.labels, clean)
    np.testing.assert_allclose(api.uncertainty, unc, atol=1e-6)
    capsys.readouterr()
    _fails(capsys, [*base, "--out", str(tmp_path / "x.tif"), "--uncertainty", str(tmp_path / "x.tif")], "same file")
    _fails(capsys, [*base, "--out", str(tmp_path / "y.tif"), "--uncertainty", str(tmp_path / "u.png")], ".tif, .zarr or .npy")
    _fails(capsys, [*base, "--out", str(tmp_path / "y.tif"), "--min-size", "-1"], "--min-size")
    _fails(capsys, [*base, "--out", str(tmp_path / "y.tif"), "--uncertainty", str(tmp_path / "u.zarr")], "exists")


def test_resume_from_cli(files, tmp_path) -> None:
    out = tmp_path / "r.pt"
    args = ["finetune", "--image", str(files["image"]), "--labels", str(files["labels"]), "--out", str(out)]
    assert main([*args, *TINY]) == 0
    more = [a if a != "3" else "5" for a in TINY]
    assert main([*args, "--resume", str(out), *more]) == 0
    b = torch.load(out, weights_only=True)
    assert b["history"]["step"] == [1, 2, 3, 4, 5]


def test_bad_inputs(files, capsys, tmp_path) -> None:
    img, lab, model, pre = (str(files[k]) for k in ("image", "labels", "model", "pre"))
    out = tmp_path / "out.pt"
    ft = ["finetune", "--image", img, "--labels", lab, "--out", str(out), *TINY]
    # missing and unreadable files
    _fails(capsys, ["pretrain", str(tmp_path / "nope.tif"), "--out", str(out), *TINY], "does not exist", out)
    (tmp_path / "notes.txt").write_text("hello")
    _fails(capsys, ["pretrain", str(tmp_path / "notes.txt"), "--out", str(out), *TINY], "unsupported format", out)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    _fails(capsys, ["pretrain", str(tmp_path / "broken.tif"), "--out", str(out), *TINY], "not a valid TIF", out)
    (tmp_path / "empty.tif").write_bytes(b"")
    _fails(capsys, ["pretrain", str(tmp_path / "empty.tif"), "--out", str(out), *TINY], "empty", out)
    # shape mismatch, no annotation, one class
    tifffile.imwrite(tmp_path / "lab_small.tif", np.ones((4, 64, 64), np.uint8), photometric="minisblack")
    _fails(capsys, [*ft[:4], str(tmp_path / "lab_small.tif"), *ft[5:]], "must match", out)
    tifffile.imwrite(tmp_path / "lab_none.tif", np.zeros((4, 128, 128), np.uint8), photometric="minisblack")
    _fails(capsys, [*ft[:4], str(tmp_path / "lab_none.tif"), *ft[5:]], "no annotated pixel", out)
    tifffile.imwrite(tmp_path / "lab_one.tif", np.pad(np.ones((1, 8, 8), np.uint8), ((0, 3), (0, 120), (0, 120))), photometric="minisblack")
    _fails(capsys, [*ft[:4], str(tmp_path / "lab_one.tif"), *ft[5:]], "single class", out)
    # dimensionality: --ndim 3 on a 2D image; 4D image without channel axis
    tifffile.imwrite(tmp_path / "img2d.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    _fails(capsys, ["pretrain", str(tmp_path / "img2d.tif"), "--ndim", "3", "--out", str(out), *TINY], "--ndim 3 needs a ZYX stack", out)
    np.save(tmp_path / "img4d.npy", np.zeros((2, 3, 32, 32), np.float32))
    _fails(capsys, ["pretrain", str(tmp_path / "img4d.npy"), "--out", str(out), *TINY], "channel-axis", out)
    # NaN and constant images
    nan = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    nan[0, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    _fails(capsys, ["pretrain", str(tmp_path / "nan.tif"), "--out", str(out), *TINY], "NaN", out)
    tifffile.imwrite(tmp_path / "const.tif", np.full((2, 64, 64), 9, np.uint16))
    _fails(capsys, ["pretrain", str(tmp_path / "const.tif"), "--out", str(out), *TINY], "constant", out)
    # unknown method / bad option
    _fails(capsys, ["pretrain", img, "--method", "nosuch", "--out", str(out)], "invalid choice", out)
    # a patch larger than the image is clipped (test_patch_is_clipped_to_a_thin_stack), unless the network
    # cannot fit the image at all
    _fails(capsys, ["pretrain", img, "--patch-size", "1000", "--depth", "8", "--out", str(out), "--quiet"],
           "too small for this network, which needs at least 256 pixels in Y and X", out)


def test_bad_bundles_and_outputs(files, capsys, tmp_path) -> None:
    img = str(files["image"])
    pred = tmp_path / "pred.tif"
    pr = ["predict", "--image", img, "--out", str(pred), "--quiet"]
    (tmp_path / "foreign.pt").write_bytes(b"")
    torch.save({"state": torch.zeros(2)}, tmp_path / "foreign.pt")
    _fails(capsys, [*pr, "--model", str(tmp_path / "foreign.pt")], "foreign", pred)
    data = files["model"].read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    _fails(capsys, [*pr, "--model", str(tmp_path / "trunc.pt")], "truncated", pred)

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",))
    torch.save({"format": "napari-regcon-bundle", "x": Evil()}, tmp_path / "evil.pt")
    _fails(capsys, [*pr, "--model", str(tmp_path / "evil.pt")], "Python objects", pred)
    assert not (tmp_path / "pwned").exists()
    _fails(capsys, ["finetune", "--image", img, "--labels", str(files["labels"]), "--init", str(tmp_path / "evil.pt"),
                    "--out", str(tmp_path / "o.pt"), *TINY], "Python objects", tmp_path / "o.pt")
    _fails(capsys, [*pr, "--model", str(files["pre"])], "fine-tune it on labels first", pred)
    _fails(capsys, [*pr, "--model", str(tmp_path / "missing.pt")], "does not exist", pred)
    # unwritable outputs: a parent that is a file, a folder that does not exist, a read-only filesystem
    (tmp_path / "afile").write_text("x")
    _fails(capsys, [*pr[:-3], "--out", str(tmp_path / "afile" / "p.tif"), "--model", str(files["model"])], "Cannot write")
    _fails(capsys, [*pr[:-3], "--out", str(tmp_path / "nodir" / "p.tif"), "--model", str(files["model"])], "does not exist")
    _fails(capsys, ["pretrain", img, "--out", "/proc/regcon.pt", *TINY], "Cannot write")
    _fails(capsys, [*pr[:-3], "--out", str(tmp_path / "p.png"), "--model", str(files["model"])], ".tif, .zarr or .npy")
    _fails(capsys, ["evaluate", "--pred", str(files["truth"]), "--truth", str(tmp_path / "afile")], "unsupported format")
    # zarr inputs: a group of several arrays (not an array), chunks so small that tiles would crawl; --threads 0
    import zarr
    g = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    g.create_array("a", shape=(2, 64, 64), dtype="uint8")
    g.create_array("b", shape=(2, 64, 64), dtype="uint8")
    _fails(capsys, [*pr[:-3], "--image", str(tmp_path / "group.zarr"), "--out", str(pred), "--model", str(files["model"])],
           "not an array", pred)
    tiny = zarr.open(str(tmp_path / "tiny.zarr"), mode="w", shape=(2, 64, 64), dtype="uint8", chunks=(1, 4, 4))
    tiny[...] = 7
    _fails(capsys, [*pr[:-3], "--image", str(tmp_path / "tiny.zarr"), "--out", str(pred), "--model", str(files["model"])],
           "tiny chunks", pred)
    _fails(capsys, [*pr, "--model", str(files["model"]), "--threads", "0"], "argument --threads: must be at least 1", pred)


def test_console_script_help_and_error() -> None:
    """The installed entry point works and reports a bad call in one line."""
    for cmd in ("pretrain", "finetune", "predict", "evaluate", "demo", "info"):
        r = subprocess.run([sys.executable, "-m", "napari_regcon", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout
    r = subprocess.run([sys.executable, "-m", "napari_regcon", "predict", "--model", "x.pt", "--image", "y.tif",
                        "--out", "z.tif"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_demo_quick(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--pretrain-steps", "4", "--finetune-steps", "30", "--quiet",
                 "--precision", "fp32"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["membrane_dice"] <= 1 and report["precision"] == "fp32" and report["arithmetic"] == "fp32"
    assert report["torch_threads"] >= 1
    for name in ("prediction.tif", "overlay.png", "model.pt", "pretrained.pt", "image.tif", "labels.tif"):
        assert (out / name).stat().st_size > 0
    import imageio.v3 as iio
    png = iio.imread(out / "overlay.png")
    assert png.ndim == 3 and png.shape[2] == 3 and png.shape[1] > 3 * 384
    assert tifffile.imread(out / "prediction.tif").shape == (10, 384, 384)


def test_sigterm_stops_training_cleanly_and_keeps_the_model(files, tmp_path) -> None:
    """SIGTERM (SLURM's time limit, torchrun's stop) ends training at the next step with a resumable bundle."""
    import signal
    import time

    out = tmp_path / "pre.pt"
    proc = subprocess.Popen([sys.executable, "-m", "napari_regcon", "pretrain", str(files["image"]), "--out", str(out),
                             "--steps", "100000", "--base", "4", "--depth", "2", "--patch-size", "32",
                             "--batch-size", "2", "--threads", "1", "--checkpoint-every", "0"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline and "pretrain" not in seen:  # the progress bar has started
        seen += proc.stderr.read(1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + err
    assert "terminated: stopping at the next step" in err and "--resume" in err
    bundle = torch.load(out, weights_only=True)
    assert 0 < bundle["training"]["step"] < 100000



def test_patch_is_clipped_to_a_thin_stack(tmp_path, capsys, vessel_thin) -> None:
    """The two-photon preset's 16x64x64 patch and --ndim 3 train on a 3-plane stack: the patch is
    clipped to the stack, and one line says so (also with --quiet)."""
    raw, labels = vessel_thin  # 3 planes of a real two-photon stack
    tifffile.imwrite(tmp_path / "raw.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint8), photometric="minisblack")
    common = ["--ndim", "3", "--patch-size", "16,64,64", "--steps", "2", "--base", "4", "--depth", "2",
              "--batch-size", "2", "--quiet"]
    note = "The patch size 16x64x64 is larger than the stack (3x96x96), so training uses 3x64x64."
    assert main(["pretrain", str(tmp_path / "raw.tif"), "--out", str(tmp_path / "pre.pt"), *common]) == 0
    assert note in capsys.readouterr().err
    assert main(["finetune", "--image", str(tmp_path / "raw.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "--out", str(tmp_path / "ft.pt"), *common]) == 0
    err = capsys.readouterr().err
    assert note in err and sum(ln.count("patch size") for ln in err.splitlines()) == 1, err
    bundle = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert bundle["data"]["patch_size"] == [3, 64, 64] and bundle["model"]["ndim"] == 3
    # a network that pools Z once (pretrained on 8-plane patches) keeps whole poolings: 3 planes -> 2
    deep = np.concatenate([raw, raw[::-1], raw])
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="minisblack")
    assert main(["pretrain", str(tmp_path / "deep.tif"), "--out", str(tmp_path / "pool.pt"),
                 *common[:2], "--patch-size", "8,32,32", *common[4:]]) == 0
    capsys.readouterr()
    assert main(["finetune", "--image", str(tmp_path / "raw.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "--init", str(tmp_path / "pool.pt"), "--out", str(tmp_path / "ft2.pt"), *common]) == 0
    assert "so training uses 2x64x64" in capsys.readouterr().err
    assert torch.load(tmp_path / "ft2.pt", weights_only=True)["data"]["patch_size"] == [2, 64, 64]


def test_recipe_param_changes_one_setting(files, capsys, tmp_path) -> None:
    """--recipe-param KEY=VALUE reaches the recipe the bundle records; an unknown key is one clear error."""
    out = tmp_path / "bal.pt"
    common = ["finetune", "--image", str(files["image"]), "--labels", str(files["labels"]), *TINY]
    assert main([*common, "--recipe", "dense", "--recipe-param", "balanced=true", "--out", str(out)]) == 0
    recipe = torch.load(out, weights_only=True)["data"]["recipe"]
    assert recipe["name"] == "dense" and recipe["balanced"] is True
    capsys.readouterr()
    _fails(capsys, [*common, "--recipe-param", "balance=true", "--out", str(tmp_path / "x.pt")], "Unknown recipe setting")
    out = tmp_path / "transfer.pt"  # the recipe for a model applied to other stacks
    assert main([*common, "--recipe", "balanced", "--out", str(out)]) == 0
    recipe = torch.load(out, weights_only=True)["data"]["recipe"]
    assert recipe["name"] == "balanced" and recipe["balanced"] is True and recipe["plane_fraction"] == 1.0


def test_class_prior_follows_the_image(files, tmp_path) -> None:
    """A dense-slice model adds the labels' class shares on its own stack (read again from its file) and not
    on another image; --class-prior on/off force the choice."""
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.ascontiguousarray(tifffile.imread(files["image"])[:, ::-1]), photometric="minisblack")

    def probs(image: Path, choice: str) -> np.ndarray:
        out, p = tmp_path / f"{image.stem}_{choice}.tif", tmp_path / f"{image.stem}_{choice}_p.npy"
        assert main(["predict", "--model", str(files["model"]), "--image", str(image), "--out", str(out),
                     "--probabilities", str(p), "--class-prior", choice, "--quiet", "--overwrite"]) == 0
        return np.load(p)

    assert torch.load(files["model"], weights_only=True)["classes"]["offset_for"]
    np.testing.assert_allclose(probs(files["image"], "auto"), probs(files["image"], "on"))
    assert not np.allclose(probs(files["image"], "auto"), probs(files["image"], "off"))
    np.testing.assert_allclose(probs(other, "auto"), probs(other, "off"))
