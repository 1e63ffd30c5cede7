"""Issue 16: the faults a new user found; one parametrised case each, every one exit 2 and one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile

from napari_regcon.cli import build_parser, main

TINY = ["--steps", "2", "--base", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def f(tmp_path_factory, em_small) -> dict:
    d = tmp_path_factory.mktemp("faults")
    raw, truth = em_small
    raw, truth = raw[:2, :64, :64].copy(), truth[:2, :64, :64].copy()
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    p = {k: str(d / n) for k, n in (("img", "in.tif"), ("lab", "lab.tif"), ("truth", "truth.tif"),
                                     ("pre", "pre.pt"), ("model", "m.pt"), ("d", ""))}
    tifffile.imwrite(p["img"], raw, photometric="minisblack")
    tifffile.imwrite(p["lab"], labels, photometric="minisblack")
    tifffile.imwrite(p["truth"], truth - 1, photometric="minisblack")  # 0/1: class indices
    assert main(["pretrain", p["img"], "--out", p["pre"], *TINY]) == 0
    assert main(["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["model"], *TINY]) == 0
    nan = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    tifffile.imwrite(d / "many.tif", np.arange(2 * 64 * 64).reshape(2, 64, 64).astype(np.uint16) % 301,
                     photometric="minisblack")
    np.save(d / "img2d.npy", raw[0])
    (d / "existing.tif").write_bytes(b"keep me")
    (d / "demo_dir").mkdir()
    (d / "demo_dir" / "mine.txt").write_text("user file")
    (d / "pred.zarr").mkdir()
    (d / "pred.zarr" / "zarr.json").write_text("{}")
    tifffile.imwrite(d / "pred12.tif", truth, photometric="minisblack")  # values 1/2, as a sparse bundle predicts
    return p


def _one_line_exit_2(capsys, argv: list[str], match: str) -> None:
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("napari-regcon: error: "), err
    assert match.lower() in err[0].lower(), err[0]
    assert "Traceback" not in err[0]


CASES = {
    # 1-2: an output that is an input
    "predict-out-is-image": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["img"], "--quiet"], "also an input"),
    "predict-probs-is-image": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/x.tif",
                                          "--probabilities", p["img"], "--quiet"], "also an input"),
    "finetune-out-is-labels": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["lab"], *TINY], "also an input"),
    "finetune-out-is-image": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["img"], *TINY], "also an input"),
    "bundle-out-extension": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["d"] + "/b.tif", *TINY], "must end in .pt"),
    # 3, 14: existing outputs
    "demo-existing-folder": (lambda p: ["demo", "--out", p["d"] + "/demo_dir", "--quiet"], "already exists"),
    "predict-existing-tif": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/existing.tif", "--quiet"], "--overwrite"),
    "predict-existing-zarr": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/pred.zarr", "--quiet"], "--overwrite"),
    # 4-5: resume mismatches
    "pretrain-resume-other-method": (lambda p: ["pretrain", p["img"], "--method", "regcon", "--resume", p["pre"], "--out", p["d"] + "/r1.pt", *TINY], "--method mim"),
    "finetune-resume-pretrained": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--resume", p["pre"], "--out", p["d"] + "/r2.pt", *TINY], "pretrained bundle"),
    "pretrain-resume-segmentation": (lambda p: ["pretrain", p["img"], "--resume", p["model"], "--out", p["d"] + "/r3.pt", *TINY], "segmentation bundle"),
    "finetune-resume-fewer-steps": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--resume", p["model"], "--out", p["d"] + "/r4.pt", *TINY], "already done 2 steps"),
    # 6-7, 9-10: numeric options
    "predict-batch-0": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/b0.tif", "--batch-size", "0"], "at least 1"),
    "finetune-batch-0": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["d"] + "/b0.pt", "--batch-size", "0"], "at least 1"),
    "finetune-lr-negative": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["d"] + "/lr.pt", "--lr", "-1"], "greater than 0"),
    "finetune-steps-0": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["d"] + "/s0.pt", "--steps", "0"], "at least 1"),
    "finetune-steps-negative": (lambda p: ["finetune", "--image", p["img"], "--labels", p["lab"], "--out", p["d"] + "/s5.pt", "--steps=-5"], "at least 1"),
    "predict-overlap-1": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/o.tif", "--overlap", "1.0"], "less than 1"),
    "predict-overlap-1.5": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/o.tif", "--overlap", "1.5"], "less than 1"),
    "predict-overlap-negative": (lambda p: ["predict", "--model", p["model"], "--image", p["img"], "--out", p["d"] + "/o.tif", "--overlap=-0.5"], "at least 0"),
    # 8, 12: evaluate
    "evaluate-nan": (lambda p: ["evaluate", "--pred", p["d"] + "/nan.tif", "--truth", p["truth"]], "NaN"),
    "evaluate-disjoint-values": (lambda p: ["evaluate", "--pred", p["d"] + "/pred12.tif", "--truth", p["truth"]], "--model"),
    "evaluate-missing-class": (lambda p: ["evaluate", "--pred", p["truth"], "--truth", p["truth"], "--classes", "7"], "no such value"),
    # 13-14: info, channel axis, many classes, names
    "info-image": (lambda p: ["info", p["img"]], "TIFF image"),
    "channel-axis-out-of-range": (lambda p: ["pretrain", p["d"] + "/img2d.npy", "--channel-axis", "5", "--out", p["d"] + "/c.pt", *TINY], "out of range"),
    "labels-300-classes": (lambda p: ["finetune", "--image", p["img"], "--labels", p["d"] + "/many.tif", "--dense", "--out", p["d"] + "/many.pt", *TINY], "one value per object"),
    "export-bad-name": (lambda p: ["export", "--model", p["model"], "--out", p["d"] + "/pkg.zip", "--name", "bad/name!"], "not a valid model name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault_is_one_line(f, capsys, case) -> None:
    argv, match = CASES[case]
    before = {n: os.stat(f[n]).st_mtime_ns for n in ("img", "lab", "model", "pre")}
    _one_line_exit_2(capsys, argv(f), match)
    assert {n: os.stat(f[n]).st_mtime_ns for n in before} == before  # no input was touched
    assert (f["d"] + "/existing.tif") and open(f["d"] + "/existing.tif", "rb").read() == b"keep me"


def test_evaluate_maps_values_with_model(f, capsys) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--pred", f["d"] + "/pred12.tif", "--truth", f["truth"], "--model", f["model"]]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["classes"]) == {"0", "1"} and r["mean_dice"] == 1.0
    assert main(["evaluate", "--pred", f["truth"], "--truth", f["truth"], "--classes", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["classes"]) == {"1"} and r["mean_dice"] == r["classes"]["1"]["dice"]


def test_info_reads_a_package_folder(f, tmp_path, capsys) -> None:
    import shutil
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(f["model"], pkg / "napari_regcon_bundle.pt")
    (pkg / "rdf.yaml").write_text("config:\n  napari_regcon:\n    bundle: napari_regcon_bundle.pt\n")
    assert main(["info", str(pkg)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "segmentation"


def test_stale_temps_removed_and_live_lock_refused(f, tmp_path, capsys) -> None:
    from napari_regcon.core.safety import lock_path
    out = tmp_path / "pred.tif"
    stale = [tmp_path / ".pred.tif.abcd1234", tmp_path / ".pred.tif.zz_y9x8w.tmp"]
    stale[0].mkdir()
    stale[1].write_bytes(b"x")
    lock_path(out).write_text(f"{2**22 + 12345}@{os.uname().nodename}")  # a dead PID: taken over
    assert main(["predict", "--model", f["model"], "--image", f["img"], "--out", str(out), "--quiet"]) == 0
    assert not any(p.exists() for p in stale) and not lock_path(out).exists()
    capsys.readouterr()
    lock_path(out).write_text(f"{os.getppid()}@{os.uname().nodename}")  # a live process holds it
    _one_line_exit_2(capsys, ["predict", "--model", f["model"], "--image", f["img"], "--out", str(out), "--quiet",
                              "--overwrite"], "being written by another")


def test_colour_png_is_read_as_channels(f, tmp_path, capsys) -> None:
    import imageio.v3 as iio
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    _one_line_exit_2(capsys, ["predict", "--model", f["model"], "--image", str(tmp_path / "rgb.png"),
                              "--out", str(tmp_path / "p.tif"), "--quiet"], "channel")
    lab = np.zeros((64, 64), np.uint8)
    lab[:8], lab[-8:] = 1, 2
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    assert main(["finetune", "--image", str(tmp_path / "rgb.png"), "--labels", str(tmp_path / "lab.tif"),
                 "--out", str(tmp_path / "c.pt"), *TINY]) == 0
    assert main(["predict", "--model", str(tmp_path / "c.pt"), "--image", str(tmp_path / "rgb.png"),
                 "--out", str(tmp_path / "p.tif"), "--quiet"]) == 0
    assert tifffile.imread(tmp_path / "p.tif").shape == (64, 64)


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
