"""Dense CRF post-processing (GLRP): improves noisy maps along clear edges, both backends, CLI --crf."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

from napari_regcon.cli import main
from napari_regcon.core import postprocess
from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.normalize import Normalization
from napari_regcon.core.postprocess import crf_refine, densecrf_available

BACKENDS = ["numpy", pytest.param("densecrf", marks=pytest.mark.skipif(not densecrf_available(), reason="pydensecrf2 not installed"))]


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey image with clear edges (a disc and a bar), its truth and a noisy, blurred probability map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    truth = (((yy - 40) ** 2 + (xx - 50) ** 2 < 25 ** 2) | ((yy > 70) & (xx < 30))).astype(int)
    image = np.where(truth, 180.0, 60.0) + rng.normal(0, 10, truth.shape)
    p1 = np.clip(gaussian_filter(truth.astype(float), 3) * 0.6 + 0.2 + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    return image, truth, np.stack([1 - p1, p1]).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_improves_a_noisy_map_along_clear_edges(backend: str) -> None:
    image, truth, probs = _scene()
    before = (probs.argmax(0) == truth).mean()
    refined = crf_refine(probs, image, backend=backend)
    after = (refined.argmax(0) == truth).mean()
    assert before < 0.9 and after > 0.99
    assert refined.shape == probs.shape and np.allclose(refined.sum(0), 1, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_keeps_a_correct_confident_map(backend: str) -> None:
    image, truth, _ = _scene()
    probs = np.stack([1 - truth, truth]).astype(np.float32) * 0.9 + 0.05
    refined = crf_refine(probs, image, backend=backend)
    assert (refined.argmax(0) == truth).mean() >= 0.999


def test_backends_agree_and_auto_falls_back(monkeypatch) -> None:
    image, truth, probs = _scene(1)
    numpy_result = crf_refine(probs, image, backend="numpy")
    if densecrf_available():
        dense = crf_refine(probs, image, backend="densecrf")
        assert (dense.argmax(0) == numpy_result.argmax(0)).mean() > 0.99
    monkeypatch.setattr(postprocess, "densecrf_available", lambda: False)
    assert np.array_equal(crf_refine(probs, image), numpy_result)  # auto without the extension
    with pytest.raises(RegconError, match="not installed"):
        crf_refine(probs, image, backend="densecrf")


def test_stacks_are_refined_slice_by_slice_and_channels_are_used() -> None:
    image, truth, probs = _scene()
    stack = np.stack([probs, probs[:, ::-1]], 1)  # (K, Z, Y, X)
    img = np.stack([image, image[::-1]])
    refined = crf_refine(stack, img, backend="numpy", intensity_range=(0, 255))
    assert refined.shape == stack.shape
    alone = crf_refine(probs[:, ::-1], image[::-1], backend="numpy", intensity_range=(0, 255))
    assert np.allclose(refined[:, 1], alone, atol=1e-5)
    two = crf_refine(probs, np.stack([image, image]), backend="numpy")  # (C, Y, X) image
    assert (two.argmax(0) == truth).mean() > 0.99


def test_bad_inputs() -> None:
    image, _, probs = _scene()
    with pytest.raises(RegconError, match="does not match"):
        crf_refine(probs, image[:50])
    with pytest.raises(RegconError, match="at least 2 classes"):
        crf_refine(probs[:1], image)
    with pytest.raises(RegconError, match="backend"):
        crf_refine(probs, image, backend="gpu")
    bad = probs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(RegconError, match="NaN"):
        crf_refine(bad, image)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, em_small) -> dict:
    d = tmp_path_factory.mktemp("crf")
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    tifffile.imwrite(d / "image.tif", raw, photometric="minisblack")
    tifffile.imwrite(d / "labels.tif", labels, photometric="minisblack")
    assert main(["finetune", "--image", str(d / "image.tif"), "--labels", str(d / "labels.tif"), "--out", str(d / "m.pt"),
                 "--steps", "3", "--base", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--quiet"]) == 0
    return {"dir": d, "image": d / "image.tif", "model": d / "m.pt"}


def test_cli_predict_with_crf(model_files, tmp_path, capsys) -> None:
    base = ["predict", "--model", str(model_files["model"]), "--image", str(model_files["image"]), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain.tif"), "--probabilities", str(tmp_path / "plain.npy")]) == 0
    assert main([*base, "--out", str(tmp_path / "crf.tif"), "--probabilities", str(tmp_path / "crf.npy"), "--crf"]) == 0
    assert main([*base, "--out", str(tmp_path / "crf_only.tif"), "--crf"]) == 0
    plain, crf = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "crf.npy")
    labels = tifffile.imread(tmp_path / "crf.tif")
    assert crf.shape == plain.shape == (2, 4, 128, 128) and labels.shape == (4, 128, 128)
    assert set(np.unique(labels)) <= {1, 2}
    assert np.array_equal(labels, np.array([1, 2])[crf.argmax(0)])
    assert np.array_equal(tifffile.imread(tmp_path / "crf_only.tif"), labels)
    # the CLI refines the model's own probabilities with the grey levels the model saw
    norm = Normalization.from_dict(load_bundle(model_files["model"])["normalization"])
    raw = tifffile.imread(model_files["image"]).astype(np.float32)
    expect = crf_refine(plain[:, 2], norm.apply(raw[2][None]), intensity_range=(0, 1))
    assert np.allclose(crf[:, 2], expect, atol=1e-4)
    assert not np.allclose(crf, plain, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crf.npy", "crf.tif", "crf_only.tif", "plain.npy", "plain.tif"]
    assert not [p for p in model_files["dir"].iterdir() if p.name.startswith(".regcon-crf")]
    capsys.readouterr()
