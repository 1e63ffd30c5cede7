"""Random patch sampling that reads only the patches it needs from lazy arrays.

Unlabeled sampling (pretraining) draws patches uniformly from all images; labeled sampling
(fine-tuning) centres patches near annotated pixels, class-balanced, so a few scribbles on a
large stack still fill every batch with supervision.
"""

from __future__ import annotations

import numpy as np

from .errors import RegconError
from .labels import LabelSet
from .normalize import Normalization
from .volume import Volume

#: The training patch when none is asked for (cut to the image): 128² in 2D; flat 8x128x128 (ZYX) in
#: 3D, whose steps (batch 4, width 8) are ~10x cheaper than 16x128x128 / 8 / 16 and gave a higher
#: vessel Dice (docs/benchmarks.md, "3D fine-tune defaults").
DEFAULT_PATCH = {2: (128, 128), 3: (8, 128, 128)}


def default_patch_size(shape_zyx: tuple[int, int, int], ndim: int, multiple: int = 8,
                       xy: int | None = None, z: int | None = None) -> tuple[int, ...]:
    """Largest patch up to ``xy`` (and ``z`` in 3D; default :data:`DEFAULT_PATCH`) that fits the image,
    a multiple of ``multiple``."""
    default = DEFAULT_PATCH.get(ndim, DEFAULT_PATCH[2])
    xy = default[-1] if xy is None else xy
    z = (default[0] if ndim == 3 else 1) if z is None else z

    def fit(size: int, want: int, mult: int) -> int:
        p = min(want, size) // mult * mult
        if p < mult:
            raise RegconError(f"The image is too small ({shape_zyx[-2:]} pixels in YX, {shape_zyx[0]} in Z) for this network; it needs at least {mult} pixels per axis.")
        return p
    yx = (fit(shape_zyx[1], xy, multiple), fit(shape_zyx[2], xy, multiple))
    if ndim == 2:
        return yx
    return (fit(shape_zyx[0], z, 1), *yx)


def fit_patch(patch: tuple[int, ...], shape_zyx: tuple[int, int, int], ndim: int, multiple: int = 8,
              z_multiple: int = 1) -> tuple[tuple[int, ...], str]:
    """Clip each axis of ``patch`` to the image ``shape_zyx``; returns the patch and a one-line note
    saying what changed ("" when nothing did).

    A clipped Y/X side is rounded down to a multiple of ``multiple`` (2**depth of the network), a
    clipped Z side to a multiple of ``z_multiple`` (2**number of Z poolings), so any stack with at
    least one plane (and ``multiple`` pixels in Y and X) gets a patch it can train on.
    """
    sizes = tuple(shape_zyx[-ndim:])
    mults = (multiple, multiple) if ndim == 2 else (z_multiple, multiple, multiple)
    fitted = []
    for axis, (p, s, m) in enumerate(zip(patch, sizes, mults)):
        if p > s:
            p = s // m * m
            if p < 1:
                need = f"{m} planes (its Z poolings)" if ndim == 3 and axis == 0 else f"{m} pixels in Y and X"
                raise RegconError(f"The {'stack' if ndim == 3 else 'image'} ({'x'.join(map(str, sizes))}) is too "
                                  f"small for this network, which needs at least {need}.")
        fitted.append(int(p))
    out = tuple(fitted)
    if out == tuple(patch):
        return out, ""
    what = "stack" if ndim == 3 else "image"
    return out, (f"The patch size {'x'.join(map(str, patch))} is larger than the {what} "
                 f"({'x'.join(map(str, sizes))}), so training uses {'x'.join(map(str, out))}.")


def check_patch_size(patch: tuple[int, ...], shapes: list[tuple[int, int, int]], ndim: int) -> None:
    """Raise when a patch does not fit inside every image."""
    for shape in shapes:
        spatial = shape[1:] if ndim == 2 else shape
        if any(p > s for p, s in zip(patch, spatial)):
            raise RegconError(f"The patch size {tuple(patch)} is larger than the image ({'x'.join(map(str, spatial))}); choose a smaller --patch-size.")


class PatchSampler:
    """Draw batches of normalised patches (and encoded targets when labels are given).

    Parameters
    ----------
    volumes
        Images as (C, Z, Y, X) views.
    norm
        Normalisation applied to every patch.
    patch_size
        (Y, X) for a 2D model (patches are single planes), (Z, Y, X) for a 3D model.
    labels
        One LabelSet per image, or None entries for unlabeled images.
    """

    def __init__(self, volumes: list[Volume], norm: Normalization, patch_size: tuple[int, ...],
                 labels: list[LabelSet | None] | None = None, seed: int = 0,
                 uniform_fraction: float = 0.0, plane_fraction: float = 0.0) -> None:
        self.volumes = volumes
        self.uniform_fraction = float(uniform_fraction)  # labeled sampling: share of patches drawn anywhere
        self.plane_fraction = float(plane_fraction)  # ... and of the rest, share drawn anywhere on annotated planes
        self.norm = norm
        self.patch = tuple(int(p) for p in patch_size)
        self.ndim = len(self.patch)
        self.labels = labels or [None] * len(volumes)
        self.rng = np.random.default_rng(seed)
        check_patch_size(self.patch, [v.shape[1:] for v in volumes], self.ndim)
        sizes = np.array([float(np.prod(v.shape[1:])) for v in volumes])
        self._p_volume = sizes / sizes.sum()
        self._labeled = [i for i, lab in enumerate(self.labels) if lab is not None]
        self._planes = {i: np.unique(np.concatenate([c[:, 0] for c in self.labels[i].coords.values()]))
                        for i in self._labeled} if self.plane_fraction > 0 else {}

    @property
    def patch3(self) -> tuple[int, int, int]:
        """Patch as (Z, Y, X); Z = 1 for a 2D model."""
        return self.patch if self.ndim == 3 else (1, *self.patch)

    def _start_uniform(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch3))

    def _start_on_planes(self, i: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Anywhere in Y/X, over an annotated plane: a patch whose classes come in the image's own
        proportions (as in a prediction tile), not in the balanced ones of :meth:`_start_near`."""
        z = int(self.rng.choice(self._planes[i]))
        lo = int(np.clip(z - int(self.rng.integers(0, self.patch3[0])), 0, shape[0] - self.patch3[0]))
        return (lo, *(int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape[1:], self.patch3[1:])))

    def _start_near(self, labels: LabelSet, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        cls = int(self.rng.integers(labels.n_classes))
        pts = labels.coords[cls]
        point = pts[int(self.rng.integers(len(pts)))]
        start = []
        for c, s, p in zip(point, shape, self.patch3):
            lo = int(c) - int(self.rng.integers(0, p))
            start.append(int(np.clip(lo, 0, s - p)))
        return tuple(start)

    def _read(self, i: int, start: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch3))
        img = self.norm.apply(self.volumes[i].read(*sl))
        tgt = self.labels[i].read(*sl) if self.labels[i] is not None else None
        if self.ndim == 2:
            img = img[:, 0]
            tgt = tgt[0] if tgt is not None else None
        return img, tgt

    def _start_neighbour(self, i: int, start: tuple[int, int, int], max_dz: int) -> tuple[int, int, int]:
        """Same Y/X window as ``start``, Z shifted by 1..``max_dz`` planes (unshifted if the stack is too thin)."""
        last = self.volumes[i].shape[1] - self.patch3[0]
        zs = [z for z in range(start[0] - max_dz, start[0] + max_dz + 1) if 0 <= z <= last and z != start[0]]
        return (int(self.rng.choice(zs)) if zs else start[0], start[1], start[2])

    def sample(self, batch_size: int, group: int = 1, max_dz: int = 0) -> dict[str, np.ndarray]:
        """A batch: ``image`` (B, C, *patch) float32, ``zpos`` (B,) the patch's relative Z position in
        its stack (0..1, centre of the patch), ``index`` (B,) which image it came from, ``origin``
        (B, 3) the patch's start (z, y, x) in its image, and, when labeled, ``target`` (B, *patch) int64.

        With ``group`` > 1 the patches come in groups of ``group`` that share the image and the Y/X
        window and lie at most ``max_dz`` planes apart in Z (neighbouring slices, for contrast by
        relative position).
        """
        images, targets, zpos, index, origins = [], [], [], [], []
        for n in range(batch_size):
            if group > 1 and n % group:
                i = index[-1]
                start = self._start_neighbour(i, tuple(origins[n - n % group]), max_dz)
            elif self._labeled:
                i = int(self.rng.choice(self._labeled))
                if self.uniform_fraction > 0 and self.rng.random() < self.uniform_fraction:
                    start = self._start_uniform(self.volumes[i].shape[1:])  # unpainted context
                elif self.plane_fraction > 0 and self.rng.random() < self.plane_fraction:
                    start = self._start_on_planes(i, self.volumes[i].shape[1:])
                else:
                    start = self._start_near(self.labels[i], self.volumes[i].shape[1:])
            else:
                i = int(self.rng.choice(len(self.volumes), p=self._p_volume))
                start = self._start_uniform(self.volumes[i].shape[1:])
            img, tgt = self._read(i, start)
            depth = self.volumes[i].shape[1]
            zpos.append((start[0] + self.patch3[0] / 2 - 0.5) / max(depth - 1, 1))
            index.append(i)
            origins.append(start)
            images.append(img)
            if tgt is not None:
                targets.append(tgt)
        batch = {"image": np.stack(images), "zpos": np.asarray(zpos, np.float32), "index": np.asarray(index, np.int64),
                 "origin": np.asarray(origins, np.int64).reshape(-1, 3)}
        if targets:
            batch["target"] = np.stack(targets)
        return batch


class SemiSupervisedSampler(PatchSampler):
    """Labeled batches (as :class:`PatchSampler`) plus as many unlabeled patches in ``image_u``.

    The unlabeled patches are drawn uniformly from ``unlabeled`` volumes (which may include the
    labeled image itself: its unannotated parts are the most relevant unlabeled data). Both
    streams share one random generator, so resuming a run restores both.
    """

    def __init__(self, volumes: list[Volume], norm: Normalization, patch_size: tuple[int, ...],
                 labels: list[LabelSet | None], unlabeled: list[Volume], seed: int = 0,
                 unlabeled_batch: int | None = None) -> None:
        super().__init__(volumes, norm, patch_size, labels=labels, seed=seed)
        if not unlabeled:
            raise RegconError("Semi-supervised training needs at least one unlabeled image.")
        self.unlabeled = PatchSampler(unlabeled, norm, patch_size, seed=seed)
        self.unlabeled.rng = self.rng
        self.unlabeled_batch = unlabeled_batch

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """The labeled batch plus ``image_u`` (B_u, C, *patch) and ``index_u`` (B_u,) unlabeled patches."""
        batch = super().sample(batch_size)
        extra = self.unlabeled.sample(self.unlabeled_batch or batch_size)
        batch["image_u"] = extra["image"]
        batch["index_u"] = extra["index"]
        return batch
