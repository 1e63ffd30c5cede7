"""Fixed multiscale image features as a network's first layer: what a random forest (ilastik) sees.

Per input channel and scale sigma (pixels, in plane): the Gaussian-smoothed intensity, its gradient
magnitude and the two eigenvalues of its Hessian, scale-normalised (sigma and sigma squared), next
to the raw channel. With a few brush strokes a network must learn its first filters from very few
pixels; these filters are the ones a forest generalises from, so the network starts from them. They
are computed in float32 by separable convolutions, have no weights, and add nothing to a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import RegconError

FEATURES_PER_SCALE = 4  # smoothed, gradient magnitude, Hessian eigenvalues (larger, smaller)


def as_scales(value: object) -> list[float]:
    """A ``filter_scales`` setting (a number, a list of numbers, or "1;2;4") as a list of sigmas."""
    items = value.replace(";", " ").replace(",", " ").split() if isinstance(value, str) else value
    if isinstance(items, (int, float)):
        items = [items]
    try:
        return [float(v) for v in items]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise RegconError(f"filter_scales must be a list of sigmas in pixels, e.g. [1, 2, 4, 8], not {value!r}.") from None


def feature_channels(in_channels: int, scales: Sequence[float]) -> int:
    """Channels the bank gives for ``in_channels`` inputs: the raw channels and 4 per scale."""
    return in_channels * (1 + FEATURES_PER_SCALE * len(scales))


def _gaussian_kernels(sigma: float) -> torch.Tensor:
    """Sampled Gaussian and its first and second derivatives, radius 3 sigma: (3, 2r+1)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    g1 = -x / sigma ** 2 * g
    g2 = (x ** 2 / sigma ** 4 - 1.0 / sigma ** 2) * g
    g2 = g2 - g2.mean()  # a constant image has no curvature
    return torch.stack([g, g1, g2]).float()


def _band_matrix(kernels: torch.Tensor, n: int) -> torch.Tensor:
    """The 1D convolutions of ``kernels`` (K, 2r+1) on a length-``n`` axis with replicated edges, as one
    (K * n, n) matrix: a matrix product is several times faster on a CPU than a long thin convolution."""
    k, width = kernels.shape
    r = width // 2
    rows = torch.arange(n).repeat_interleave(width)
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp_(0, n - 1).reshape(-1)
    out = torch.zeros(k, n, n, dtype=kernels.dtype)
    for i in range(k):
        out[i].index_put_((rows, cols), kernels[i].repeat(n), accumulate=True)
    return out.reshape(k * n, n)


class FilterBank(nn.Module):
    """``(N, C, *spatial) -> (N, C * (1 + 4 * len(scales)), *spatial)``; 2D or 3D (features per plane)."""

    def __init__(self, ndim: int, in_channels: int, scales: Sequence[float]) -> None:
        super().__init__()
        self.ndim, self.in_channels = ndim, in_channels
        self.scales = [float(s) for s in scales]
        self._kernels = [_gaussian_kernels(s) for s in self.scales]
        self._bands: dict[tuple[int, int, str], torch.Tensor] = {}

    @property
    def out_channels(self) -> int:
        return feature_channels(self.in_channels, self.scales)

    def _band(self, i: int, n: int, device: torch.device) -> torch.Tensor:
        key = (i, n, str(device))
        if key not in self._bands:
            if len(self._bands) > 64:
                self._bands.clear()
            self._bands[key] = _band_matrix(self._kernels[i], n).to(device)
        return self._bands[key]

    def _scale(self, planes: torch.Tensor, i: int) -> list[torch.Tensor]:
        m, h, w = planes.shape
        sigma = self.scales[i]
        along_y = torch.matmul(self._band(i, h, planes.device), planes).view(m, 3, h, w)  # g, g', g'' along Y
        both = torch.matmul(along_y, self._band(i, w, planes.device).t()).view(m, 3, h, 3, w)  # then along X
        g, gx, gxx = both[:, 0, :, 0], both[:, 0, :, 1], both[:, 0, :, 2]
        gy, gxy, gyy = both[:, 1, :, 0], both[:, 1, :, 1], both[:, 2, :, 0]
        grad = torch.sqrt(gx * gx + gy * gy + 1e-12) * sigma
        half = torch.sqrt(0.25 * (gxx - gyy) ** 2 + gxy * gxy + 1e-12)
        mean = 0.5 * (gxx + gyy)
        s2 = sigma * sigma
        return [g, grad, (mean + half) * s2, (mean - half) * s2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.scales:
            return x
        shape = x.shape
        n, c, h, w = shape[0], shape[1], shape[-2], shape[-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            planes = x.float().reshape(-1, h, w)  # every channel (and Z plane) alike
            maps = [planes]
            for i in range(len(self.scales)):
                maps += self._scale(planes, i)
            out = torch.stack(maps, 1)  # (M, F, H, W)
        feats = out.shape[1]
        if self.ndim == 2:
            out = out.view(n, c * feats, h, w)
        else:
            d = shape[2]
            out = out.view(n, c, d, feats, h, w).transpose(2, 3).reshape(n, c * feats, d, h, w)
        return out.to(x.dtype)
