"""Out of memory (host or torch device) gives the one-line hint in the CLI and the widget, never a traceback."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_regcon import cli
from napari_regcon._widgets import jobs
from napari_regcon._widgets.updates import Failed
from napari_regcon.core.errors import is_out_of_memory
from napari_regcon.core.options import PretrainOptions


def _device_oom() -> BaseException:
    # the message deliberately lacks the words "out of memory": detection must go by type
    return torch.OutOfMemoryError("Tried to allocate 20.00 GiB")


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(_device_oom())
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("something else"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("make", [_device_oom, MemoryError])
def test_cli_prints_the_hint_on_out_of_memory(capsys, monkeypatch, make) -> None:
    def boom(args):
        raise make()

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert cli.main(["info", "whatever.pt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-regcon: error: out of memory")
    assert "--batch-size" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("make", [_device_oom, MemoryError])
def test_widget_run_reports_out_of_memory(monkeypatch, make) -> None:
    def boom(*args, **kwargs):
        raise make()

    monkeypatch.setattr(jobs, "pretrain_job", boom)
    updates = list(jobs.pretrain_updates([np.zeros((32, 32), np.float32)], PretrainOptions(device="cpu"),
                                         threading.Event()))
    assert len(updates) == 1 and isinstance(updates[0], Failed)
    assert updates[0].message.startswith("Out of memory")
