"""Multi-process training with PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc-per-node N -m napari_regcon pretrain ...`` starts N processes with the usual
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); :func:`init_from_env` joins them into
one process group (NCCL on GPUs, gloo on CPU), and the training loop wraps the model in
``DistributedDataParallel``. Each rank samples its own patches; only rank 0 writes files and logs.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the process that writes bundles and logs."""
    return world()[0] == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by torchrun's environment; False when not launched by it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown(clean: bool = True) -> None:
    """Leave the process group (no-op when not distributed).

    On a clean exit the ranks first meet at a barrier, so none tears its sockets down while another
    is still talking to it, and DDP wrappers left in reference cycles are collected before the group
    goes (a late destructor touching a destroyed gloo group aborts the process). After a failure
    there is no barrier: the other ranks may never reach it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if clean:
        try:
            dist.barrier()
        except RuntimeError:  # a peer is gone; leave anyway
            pass
    dist.destroy_process_group()


def lost_peer(err: BaseException) -> bool:
    """True when ``err`` is a collective failing because another rank crashed or was stopped."""
    return world()[1] > 1 and isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                "NCCL", "Timed out", "timed out"))


def mean_across_ranks(value: float, device: torch.device) -> float:
    """Average a float over all ranks (the value itself when not distributed)."""
    rank, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / size


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank (so every rank stops at the same step)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
