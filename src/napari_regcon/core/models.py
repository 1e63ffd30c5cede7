"""A small U-Net for 2D and 3D with GroupNorm, any number of input channels and classes.

GroupNorm (not BatchNorm) because it behaves the same in train and eval mode and with batch
size 1: a BatchNorm U-Net pretrained on masked inputs collapses at evaluation (BENCHMARKS.md).
The configuration is a plain dict stored in the model bundle; ``build_model`` rebuilds it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import RegconError
from .filterbank import FilterBank


@dataclass
class UNetConfig:
    """Architecture of a :class:`UNet` (3D only: ``pool_z`` says per level whether Z is pooled, ``conv_z``
    per resolution level, encoder and decoder, whether its convolutions span Z (3x3x3) or stay in plane (1x3x3))."""

    ndim: int = 2
    in_channels: int = 1
    out_channels: int = 2
    base: int = 16
    depth: int = 3
    pool_z: list[bool] = field(default_factory=list)
    conv_z: list[bool] = field(default_factory=list)
    filter_scales: list[float] = field(default_factory=list)  # fixed multiscale features first (filterbank.py)

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise RegconError(f"--ndim must be 2 or 3, not {self.ndim}.")
        if any(not 0.3 <= float(s) <= 64 for s in self.filter_scales):
            raise RegconError(f"Filter scales must be between 0.3 and 64 pixels, not {self.filter_scales}.")
        if self.depth < 1 or self.base < 2:
            raise RegconError("The network needs depth >= 1 and base width >= 2.")
        if self.ndim == 3 and not self.pool_z:
            self.pool_z = [True] * self.depth
        if self.ndim == 3 and not self.conv_z:
            self.conv_z = [True] * (self.depth + 1)
        if self.ndim == 2:
            self.pool_z, self.conv_z = [], []
        if self.ndim == 3 and (len(self.pool_z) != self.depth or len(self.conv_z) != self.depth + 1):
            raise RegconError(f"A 3D network of depth {self.depth} needs {self.depth} pool_z and "
                              f"{self.depth + 1} conv_z flags, not {len(self.pool_z)} and {len(self.conv_z)}.")

    @property
    def divisor(self) -> tuple[int, ...]:
        """Each spatial size must be a multiple of this (Z first in 3D)."""
        xy = 2 ** self.depth
        if self.ndim == 2:
            return (xy, xy)
        return (2 ** sum(bool(p) for p in self.pool_z), xy, xy)

    def to_dict(self) -> dict:
        """The bundle's ``model`` section; ``conv_z`` only when some level stays in plane, so a network
        of earlier versions is written as they wrote it (and they can read it)."""
        d = asdict(self)
        if all(d["conv_z"]):
            del d["conv_z"]
        if not d["filter_scales"]:
            del d["filter_scales"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in ("ndim", "in_channels", "out_channels", "base", "depth", "pool_z", "conv_z",
                                        "filter_scales") if k in d}
        for key in ("pool_z", "conv_z"):  # bundles from before conv_z existed: 3x3x3 everywhere
            known[key] = [bool(p) for p in known.get(key, [])]
        known["filter_scales"] = [float(s) for s in known.get("filter_scales", [])]
        return cls(**known)


def anisotropic_pool_z(patch_z: int, depth: int, min_z: int = 4) -> list[bool]:
    """Pool Z only while it stays >= ``min_z`` (nnU-Net style for thin anisotropic stacks)."""
    flags, z = [], patch_z
    for _ in range(depth):
        ok = z // 2 >= min_z and z % 2 == 0
        flags.append(ok)
        z = z // 2 if ok else z
    return flags


def anisotropic_plan(voxel_zyx: tuple[float, float, float], depth: int, patch_z: int, min_z: int = 2,
                     ratio: float = 2.0) -> tuple[list[bool], list[bool]]:
    """``(pool_z, conv_z)`` for a stack with voxel size ``voxel_zyx`` (nnU-Net's rule for anisotropic data).

    While the Z step is at least ``ratio`` times the in-plane step at a level, that level's convolutions
    stay in plane (1x3x3) and only Y/X are pooled, which halves the in-plane resolution and brings the
    voxel closer to isotropic; from the level where it is near isotropic on, convolutions span Z and Z
    is pooled too (while the patch keeps >= ``min_z`` planes). Fifteen planes 5 µm apart at 1 µm
    in plane: in-plane at the first two levels, 3D below.
    """
    vz, vy, vx = (float(v) for v in voxel_zyx)
    vxy = min(vy, vx)
    pool_z, conv_z, z = [], [], patch_z
    for _ in range(depth):
        near = vz < ratio * vxy
        conv_z.append(near)
        can_pool = near and z // 2 >= min_z and z % 2 == 0
        pool_z.append(can_pool)
        z, vz = (z // 2, vz * 2) if can_pool else (z, vz)
        vxy *= 2
    conv_z.append(vz < ratio * vxy)
    return pool_z, conv_z


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


def max_pool(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Max pooling with stride = ``kernel`` over the last ``len(kernel)`` axes (sizes are multiples of it).

    Without autograd on the CPU (prediction, the stability probe) it is the elementwise maximum of
    the strided views of each window position: the same values as ``max_pool2d``/``max_pool3d``,
    whose CPU kernel for NCHW tensors ran 3-9x slower (a 2x2 pool of 3x16x256² took 15 ms against
    3-4 ms with one thread). In training the library's kernel stays: its backward is the faster one.
    """
    if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
        return nn.functional.max_pool2d(x, kernel) if len(kernel) == 2 else nn.functional.max_pool3d(x, kernel)
    lead = (slice(None),) * (x.ndim - len(kernel))
    out = None
    for offset in itertools.product(*(range(k) for k in kernel)):
        view = x[lead + tuple(slice(o, s - s % k, k) for o, s, k in zip(offset, x.shape[-len(kernel):], kernel))]
        out = view if out is None else torch.maximum(out, view)
    assert out is not None
    return out


class _Block(nn.Sequential):
    def __init__(self, ndim: int, cin: int, cout: int, span_z: bool = True) -> None:
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        k, pad = (3, 1) if ndim == 2 or span_z else ((1, 3, 3), (0, 1, 1))
        super().__init__(
            conv(cin, cout, k, padding=pad, bias=False), nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True),
            conv(cout, cout, k, padding=pad, bias=False), nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net: ``encoder`` blocks, ``decoder`` blocks and a 1x1 ``head``.

    ``features(x)`` returns the bottleneck and the decoder outputs (coarse to fine), which the
    self-supervised pretexts use; ``forward(x)`` returns the head's logits.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        nd, base, depth = config.ndim, config.base, config.depth
        widths = [base * 2 ** i for i in range(depth + 1)]
        span = config.conv_z or [True] * (depth + 1)
        self.bank = FilterBank(nd, config.in_channels, config.filter_scales)
        self.encoder = nn.ModuleList([_Block(nd, self.bank.out_channels, widths[0], span[0])] +
                                     [_Block(nd, widths[i], widths[i + 1], span[i + 1]) for i in range(depth)])
        tconv = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        self._kernels = [self._kernel(i) for i in range(depth)]
        self.upsample = nn.ModuleList([tconv(widths[i + 1], widths[i], self._kernels[i], stride=self._kernels[i])
                                       for i in reversed(range(depth))])
        self.decoder = nn.ModuleList([_Block(nd, 2 * widths[i], widths[i], span[i]) for i in reversed(range(depth))])
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.head = conv(widths[0], config.out_channels, 1)
        self.widths = widths

    def _kernel(self, level: int) -> tuple[int, ...]:
        if self.config.ndim == 2:
            return (2, 2)
        return (2 if self.config.pool_z[level] else 1, 2, 2)

    def _pool(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return max_pool(x, self._kernels[level])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the bottleneck and the skip features (fine to coarse)."""
        skips = []
        x = self.bank(x)
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self._pool(x, level - 1)
            x = block(x)
            skips.append(x)
        return x, skips[:-1]

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the decoder outputs from coarse to fine; the last is full resolution."""
        outs = []
        x = z
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], 1))
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck and decoder features (coarse to fine)."""
        z, skips = self.encode(x)
        return z, self.decode(z, skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[1][-1])


def build_model(config: UNetConfig | dict) -> UNet:
    """Build a U-Net from a config object or its dict form (as stored in a bundle)."""
    if isinstance(config, dict):
        config = UNetConfig.from_dict(config)
    return UNet(config)


def transferable_state(pretrained: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("encoder.", "upsample.", "decoder.")
                       ) -> dict[str, torch.Tensor]:
    """The part of a pretrained state dict that transfers to a segmentation net (never the head)."""
    return {k: v for k, v in pretrained.items() if k.startswith(prefixes)}
