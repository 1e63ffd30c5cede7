"""The fixed multiscale input features: the filters a random forest uses, computed in the network."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_regcon.core.filterbank import FilterBank, feature_channels
from napari_regcon.core.models import UNetConfig, build_model


def test_features_equal_scipys_gaussian_derivatives() -> None:
    """Smoothed intensity and gradient magnitude are scipy's Gaussian filters with replicated edges."""
    rng = np.random.default_rng(0)
    img = rng.random((40, 56))
    bank = FilterBank(2, 1, [1.0, 3.0])
    out = bank(torch.from_numpy(img).float()[None, None])[0].double().numpy()
    assert out.shape == (feature_channels(1, [1, 3]), 40, 56) == (9, 40, 56)
    np.testing.assert_allclose(out[0], img, atol=1e-6)  # the raw channel first
    for i, s in enumerate([1.0, 3.0]):
        kw = {"sigma": s, "mode": "nearest", "truncate": 3.0}
        g = ndi.gaussian_filter(img, **kw)
        grad = np.hypot(ndi.gaussian_filter(img, order=(1, 0), **kw), ndi.gaussian_filter(img, order=(0, 1), **kw))
        np.testing.assert_allclose(out[1 + 4 * i], g, atol=1e-5)
        np.testing.assert_allclose(out[2 + 4 * i], grad * s, atol=1e-5)


def test_a_dark_line_is_a_ridge_of_the_hessian() -> None:
    """On a thin dark line (a membrane) the larger Hessian eigenvalue peaks on the line, at the line's
    scale; a flat image gives no gradient and no curvature."""
    img = np.ones((64, 64), np.float32)
    img[:, 31:33] = 0.0
    out = FilterBank(2, 1, [1.0, 2.0, 8.0])(torch.from_numpy(img)[None, None])[0]
    across = out[:, 32]  # a row across the line
    large = [across[3 + 4 * i] for i in range(3)]
    for lam in large[:2]:
        assert int(lam.argmax()) in (31, 32) and float(lam.max()) > 0.1
    assert float(large[1].max()) > float(large[2].max())  # a 2-px line answers at 1-2 px, not 8
    flat = FilterBank(2, 1, [2.0])(torch.full((1, 1, 32, 32), 0.7))[0]
    assert float(flat[2:].abs().max()) < 1e-4


def test_3d_features_are_the_2d_features_of_each_plane() -> None:
    x = torch.rand(2, 2, 3, 24, 20)
    out = FilterBank(3, 2, [1.5])(x)
    plane = FilterBank(2, 1, [1.5])(x[1:2, 1, 2][:, None])[0]
    assert out.shape == (2, 10, 3, 24, 20)
    torch.testing.assert_close(out[1, 5:10, 2], plane, atol=1e-6, rtol=1e-5)


def test_a_network_with_the_bank_keeps_its_weights_and_config() -> None:
    """The bank has no weights: the state dict holds only the first convolution's wider input; the config
    round-trips through the bundle's dict, and a config without scales is written as before."""
    cfg = UNetConfig(filter_scales=[1, 2, 4])
    model = build_model(cfg)
    assert model.encoder[0][0].weight.shape[1] == 13
    assert not any(k.startswith("bank") for k in model.state_dict())
    again = build_model(cfg.to_dict())
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))
    assert "filter_scales" not in UNetConfig().to_dict()
    with pytest.raises(Exception, match="Filter scales"):
        UNetConfig(filter_scales=[0.1])


def test_the_recipe_setting_reaches_the_network_and_stays_through_a_correction_round(em_small, tiny) -> None:
    """``filter_scales`` builds a fresh network with the bank; a correction round continues that network
    (not a plain one), prediction rebuilds it from the bundle, and a bad value is one clear sentence."""
    from napari_regcon.core.errors import RegconError
    from napari_regcon.core.workflows import finetune_job, run_predict

    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0, ::7] = truth[0, ::7]
    first = finetune_job(raw, labels, steps=4, seed=0, recipe="strokes",
                         recipe_params={"filter_scales": [1, 2]}, **tiny).run()
    assert first["model"]["filter_scales"] == [1.0, 2.0]
    again = finetune_job(raw, labels, init=first, steps=4, seed=1, recipe="strokes", **tiny)
    assert again.model.config.filter_scales == [1.0, 2.0]
    pred, _ = run_predict(again.run(), raw)
    assert pred.shape == raw.shape
    with pytest.raises(RegconError, match="filter_scales"):
        finetune_job(raw, labels, steps=4, recipe="strokes", recipe_params={"filter_scales": "wide"}, **tiny)
