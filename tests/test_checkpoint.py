"""The model bundle: bit-exact round trip, validation, refusal of code, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_regcon.core.checkpoint import load_bundle, make_bundle, save_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.models import UNetConfig, build_model
from napari_regcon.core.workflows import model_from_bundle


def _bundle(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = UNetConfig(base=4, depth=2)
    net = build_model(cfg)
    return make_bundle("segmentation", cfg.to_dict(), net.state_dict(), {"low": [0.0], "high": [1.0]},
                       classes={"values": [1, 2], "names": ["a", "b"]})


def test_round_trip_is_bit_exact(tmp_path) -> None:
    b = _bundle()
    path = save_bundle(b, tmp_path / "m.pt")
    loaded = load_bundle(path)
    assert loaded.keys() == b.keys()
    for k, v in b["state_dict"].items():
        assert torch.equal(v, loaded["state_dict"][k])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model_from_bundle(b)(x), model_from_bundle(loaded)(x))
    assert loaded["classes"]["values"] == [1, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pickled_object_is_refused_and_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    b = _bundle()
    b["history"] = _Evil()
    path = tmp_path / "evil.pt"
    torch.save(b, path)
    with pytest.raises(RegconError, match="Python objects"):
        load_bundle(path)
    assert not marker.exists()


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: torch.save({"weights": torch.zeros(3)}, p), "foreign"),
    (lambda p: p.write_text("hello, not a bundle"), "not a readable"),
])
def test_foreign_and_empty_files(tmp_path, make, match) -> None:
    path = tmp_path / "x.pt"
    make(path)
    with pytest.raises(RegconError, match=match):
        load_bundle(path)


def test_truncated_bundle(tmp_path) -> None:
    path = save_bundle(_bundle(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RegconError, match="truncated or corrupted"):
        load_bundle(path)


def test_kill_during_write_leaves_previous_bundle(tmp_path) -> None:
    """kill -9 in the middle of writing a new bundle: the previous one stays loadable."""
    path = tmp_path / "m.pt"
    script = textwrap.dedent(f"""
        import torch, sys
        from napari_regcon.core.checkpoint import make_bundle, save_bundle
        small = make_bundle("pretrained", {{}}, {{"w": torch.zeros(2)}}, {{}})
        save_bundle(small, {str(path)!r})
        print("first", flush=True)
        big = make_bundle("pretrained", {{}}, {{"w": torch.zeros(400_000_000 // 4)}}, {{}})
        save_bundle(big, {str(path)!r})
        print("second", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".m.pt.*.tmp")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bundle = load_bundle(path)
    assert bundle["state_dict"]["w"].shape == (2,)


def test_unwritable_destination(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RegconError, match="Cannot write"):
        save_bundle(_bundle(), blocker / "m.pt")
    assert np.array_equal(np.array(sorted(p.name for p in tmp_path.iterdir())), np.array(["file"]))


def test_saved_bundle_is_readable_by_others(tmp_path) -> None:
    path = save_bundle(_bundle(), tmp_path / "m.pt")
    assert path.stat().st_mode & 0o044  # not the 0600 of a temp file
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]
