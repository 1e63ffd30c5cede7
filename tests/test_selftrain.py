"""Self-training on the unlabeled planes (core/selftrain.py): when it runs, what the second pass learns from,
and what a stop in the second pass keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.selftrain import planes_to_predict, pseudo_labels, unlabeled_planes
from napari_regcon.core.workflows import SelfTrainingJob, finetune_job, run_predict

FAST = dict(steps=4, batch_size=2, patch_size=(32, 32), seed=0, device="cpu", checkpoint_every=0, precision="fp32")


def _stack(planes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(planes, 64, 64)).astype(np.float32)
    return img, (img > 0.5).astype(np.uint8) + 1


def _plane_labels(truth: np.ndarray, planes: tuple[int, ...]) -> np.ndarray:
    lab = np.zeros_like(truth)
    lab[list(planes)] = truth[list(planes)]
    return lab


def test_pseudo_labels_fill_only_the_planes_nobody_labeled():
    _, truth = _stack()
    lab = _plane_labels(truth, (1, 4))
    lab[2, :3, :3] = 1  # a plane with a few strokes is the user's, not the model's
    free = unlabeled_planes(lab)
    assert free.tolist() == [0, 3, 5]
    pred = np.full((len(free), 64, 64), 2, np.uint8)
    out = pseudo_labels(lab, free, pred)
    assert (out[free] == 2).all()
    np.testing.assert_array_equal(out[[1, 2, 4]], lab[[1, 2, 4]])
    assert lab[0].max() == 0  # the user's array is not touched


def test_a_large_stack_predicts_evenly_spaced_planes_within_the_budget():
    lab = np.zeros((100, 64, 64), np.uint8)
    lab[0, :4, :4] = 1
    planes = planes_to_predict(lab, max_pixels=10 * 64 * 64)
    assert len(planes) == 10 and planes[0] == 1 and planes[-1] == 99
    assert len(planes_to_predict(lab)) == 99  # within the default budget: all of them


def test_the_second_pass_learns_from_the_first_models_answer_on_the_unlabeled_planes():
    img, truth = _stack()
    lab = _plane_labels(truth, (1, 4))
    job = finetune_job(img, lab, **FAST)
    assert isinstance(job, SelfTrainingJob) and job.total_steps == 8
    assert any("second pass" in n for n in job.info["notes"])
    seen: dict = {}
    make_second = job.second

    def spy(first: dict):
        seen["first"], seen["job2"] = first, make_second(first)
        return seen["job2"]

    job.second = spy
    events = []
    bundle = job.run(callback=lambda e: events.append((e.event, e.step, e.total)))
    assert [e for e in events if e[0] == "start"] == [("start", 0, 8)]
    assert [s for e, s, _ in events if e == "step"] == list(range(1, 9))
    assert events[-1] == ("done", 8, 8)
    free = [0, 2, 3, 5]
    teacher, _ = run_predict(seen["first"], img[free], device="cpu", precision="fp32", class_prior="on")
    student_labels = np.asarray(seen["job2"].info["labelset"].data)
    np.testing.assert_array_equal(student_labels[free], teacher)  # the teacher's classes, plane for plane
    np.testing.assert_array_equal(student_labels[[1, 4]], truth[[1, 4]])  # the user's planes as painted
    assert seen["job2"].info["labelset"].plane_share == 1.0
    # the result is the second network, with the first pass's classes (the prior of the user's labels)
    for k, v in bundle["state_dict"].items():
        torch.testing.assert_close(v, seen["job2"].model.state_dict()[k].cpu())
    assert bundle["classes"] == seen["first"]["classes"]
    assert bundle["data"]["recipe"]["self_train"] is True
    assert job.model is seen["job2"].model  # the widget's last preview shows the result


def test_stopped_in_the_second_pass_the_first_model_is_kept(tmp_path):
    img, truth = _stack()
    job = finetune_job(img, _plane_labels(truth, (1, 4)), **FAST)
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] > 6  # polled before each step: four of the first pass, two of the second

    out = tmp_path / "model.pt"
    events = []
    bundle = job.run(out, should_stop=stop, callback=lambda e: events.append(e.event))
    assert events[-1] == "cancelled"
    first_model = job.model  # not replaced: the second pass did not finish
    for k, v in first_model.state_dict().items():
        torch.testing.assert_close(bundle["state_dict"][k], v.cpu())
        torch.testing.assert_close(load_bundle(out)["state_dict"][k], v.cpu())


@pytest.mark.parametrize("case", ["strokes", "every plane", "3D network", "correction round", "dense flag",
                                  "recipe param"])
def test_no_second_pass_where_it_was_not_measured_or_has_nothing_to_learn(case):
    img, truth = _stack(8)
    lab = _plane_labels(truth, (1, 4))
    kw = dict(FAST)
    if case == "strokes":
        lab = np.zeros_like(truth)
        lab[1, 10, 5:40], lab[1, 40, 5:40] = 1, 2
    elif case == "every plane":
        lab = truth
    elif case == "3D network":
        kw.update(ndim=3, patch_size=(8, 32, 32))
    elif case == "correction round":
        kw["init"] = finetune_job(img, lab, **{**FAST, "recipe_params": {"self_train": False}}).run()
    elif case == "dense flag":
        lab, kw["dense"] = truth - 1, True
    elif case == "recipe param":
        kw["recipe_params"] = {"self_train": False}
    job = finetune_job(img, lab, **kw)
    assert not isinstance(job, SelfTrainingJob)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_the_blank_planes_are_read_along_z_whatever_the_channel_axis(axis):
    from napari_regcon.core.volume import as_volume
    from napari_regcon.core.workflows import _take_planes

    zyx = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    image = zyx if axis is None else np.stack([zyx, -zyx], axis=axis)
    got = _take_planes(as_volume(image, axis), np.array([0, 3]))
    want = zyx[[0, 3]] if axis is None else np.stack([zyx[[0, 3]], -zyx[[0, 3]]], axis=axis)
    np.testing.assert_array_equal(got, want)


def test_the_live_preview_is_not_redone_while_the_first_model_waits_for_the_second(monkeypatch):
    """During the second pass the preview's model (the first pass's) does not change: one prediction per plane."""
    from napari_regcon._widgets import jobs
    from napari_regcon._widgets.state import PlaneTracker

    img, truth = _stack()
    job = finetune_job(img, _plane_labels(truth, (1, 4)), **FAST)
    calls: list[tuple[int, int | None]] = []
    real = jobs.predict_plane
    step = {"now": 0}

    def counted(bundle, image, channel_axis, z, *a, **k):
        calls.append((step["now"], z))
        return real(bundle, image, channel_axis, z, *a, **k)

    monkeypatch.setattr(jobs, "predict_plane", counted)
    tracker, enabled = PlaneTracker(), __import__("threading").Event()
    tracker.set(2)
    enabled.set()
    previewer = jobs._Previewer(job, img, jobs.FinetuneParams(preview_every=0.0), tracker, enabled)
    for ev in job.events():
        if ev.event != "step":
            continue
        step["now"] = ev.step
        previewer.next_at = 0.0  # as if the cadence allowed a preview after every step
        if ev.step == 7:
            tracker.set(3)  # the user looks at another plane: that one is predicted once
        previewer()
    first, second = [c for c in calls if c[0] <= 4], [c for c in calls if c[0] > 4]
    assert len(first) == 4  # the first pass trains: every step's preview is new
    assert second == [(5, 2), (7, 3)]
    assert not job.model_frozen  # the job ended: its model is the second pass's
