"""The CLI's default CPU thread count follows the load: all free cores, never more than are free."""

from __future__ import annotations

import pytest
import torch

from napari_regcon import cli
from napari_regcon.core import device
from napari_regcon.core.device import default_threads


@pytest.mark.parametrize("cores, load, want", [(2, 0.1, 2), (2, 0.7, 1), (2, 4.0, 1), (8, 2.2, 6), (8, 0.0, 8), (1, 0.0, 1)])
def test_default_threads_leaves_busy_cores_alone(cores, load, want) -> None:
    assert default_threads(cores, load) == want


def test_default_threads_without_a_load_average_uses_every_core(monkeypatch) -> None:
    def no_load() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(device.os, "getloadavg", no_load)
    assert default_threads(4) == 4


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_sets_threads_from_the_load_unless_told(monkeypatch, restore_threads) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "cpu_cores", lambda: 2)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert cli.set_threads(None) == 1 and torch.get_num_threads() == 1  # one core busy elsewhere
    monkeypatch.setattr(device.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli.set_threads(None) == 2 and torch.get_num_threads() == 2  # idle: both cores
    assert cli.set_threads(1) == 1 and torch.get_num_threads() == 1  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun's per-rank setting is kept
    assert cli.set_threads(None) is None and torch.get_num_threads() == 1
