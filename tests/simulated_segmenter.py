"""A simulated 2D box segmenter for evaluating propagation without model weights.

Given the reference mask of one structure (z, y, x bool), ``SimulatedSegmenter(ref, axis)``
behaves like a box-prompted 2D model: called with ``(index, (x0, y0, x1, y1))`` it returns
the reference's part inside the box on slice ``np.take(ref, index, axis)`` (inclusive box),
optionally with the slice's reference eroded/dilated by a few pixels and/or a random,
seeded boundary noise (the boundary moved in and out by a smooth random field of amplitude
``noise_px`` pixels, its standard deviation), always cut to the box as a box-prompted model's output would be.
Used by tests/test_propagation.py and the figures in docs/propagation.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


class SimulatedSegmenter:
    def __init__(self, reference_zyx: np.ndarray, axis: int = 0, *, erode: int = 0, dilate: int = 0,
                 noise_px: float = 0.0, noise_scale: float = 3.0, seed: int = 0):
        self.reference = np.asarray(reference_zyx).astype(bool)
        self.axis = int(axis)
        self.erode = int(erode)
        self.dilate = int(dilate)
        self.noise_px = float(noise_px)
        self.noise_scale = float(noise_scale)
        self.seed = int(seed)
        self.calls: list[tuple[int, tuple]] = []

    def reference_slice(self, index: int) -> np.ndarray:
        return np.take(self.reference, int(index), axis=self.axis)

    def __call__(self, index: int, box) -> np.ndarray:
        self.calls.append((int(index), tuple(box)))
        ref = self.reference_slice(index)
        out = ref.copy()
        if self.erode:
            out = ndi.binary_erosion(out, iterations=self.erode)
        if self.dilate:
            out = ndi.binary_dilation(out, iterations=self.dilate)
        if self.noise_px > 0 and ref.any():
            rng = np.random.default_rng([self.seed, int(index)])
            field = ndi.gaussian_filter(rng.standard_normal(ref.shape), self.noise_scale)
            field /= max(float(field.std()), 1e-12)
            # signed distance (pixels): > 0 inside, < 0 outside
            sdist = ndi.distance_transform_edt(out) - ndi.distance_transform_edt(~out)
            out = (sdist - 0.5 + self.noise_px * field) > 0
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        inbox = np.zeros_like(out)
        inbox[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = True
        return out & inbox


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def largest_slice(reference_zyx: np.ndarray, axis: int = 0) -> int:
    """Index (along ``axis``) of the slice where the reference's area is largest."""
    other = tuple(j for j in range(3) if j != axis)
    return int(np.argmax(np.asarray(reference_zyx, bool).sum(axis=other)))


def reference_box(reference_zyx: np.ndarray, index: int, axis: int = 0) -> tuple[int, int, int, int]:
    """Inclusive (x0, y0, x1, y1) bounding box of the reference on one slice."""
    sl = np.take(np.asarray(reference_zyx, bool), int(index), axis=axis)
    rows = np.flatnonzero(sl.any(axis=1))
    cols = np.flatnonzero(sl.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])
