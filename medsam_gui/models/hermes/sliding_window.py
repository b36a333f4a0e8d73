"""Hermes-R sliding-window inference (the official ``inference_sliding_window``).

Cubic windows of ``window`` voxels (128) at a stride of round(window * (1 - overlap)) (published:
overlap 0.5, stride 64). Per axis the official code visits ``size // stride`` starts, each
clamped so the window ends inside the volume (so a start can repeat: a repeated window counts
again in the average); axes shorter than the window are zero-padded at the end first. Each
window's logits go through a sigmoid; a voxel's probability is the plain mean over the windows
that cover it, and a structure is present where it is >= 0.5.

Identical windows give identical outputs, so each distinct window runs once and is weighted by
how often the official loop visits it. Sums are kept per structure, centred on 0.5 (p - 0.5),
in float32, or float16 when float32 would not fit :data:`ACCUMULATOR_BUDGET` (centring keeps
float16 precise where it matters, near the threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

ACCUMULATOR_BUDGET = 2 * 1024**3  # bytes of float32 sums above which float16 is used


class WindowsStopped(Exception):
    """``stop()`` turned true between two windows."""


def stride_for(window: int, overlap: float) -> int:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    return max(1, round(window * (1.0 - overlap)))


def axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis of ``size`` (>= window) voxels, in visiting order, repeats
    kept: ``size // stride`` starts (more if needed to reach the end), each clamped to size - window."""
    count = max(size // stride, math.ceil((size - window) / stride) + 1)
    return [min(i * stride, size - window) for i in range(count)]


@dataclass(frozen=True)
class WindowPlan:
    """The windows over a volume of ``shape`` (Z, Y, X), padded at the end to ``padded``."""

    shape: tuple[int, int, int]
    window: int
    stride: int

    @property
    def padded(self) -> tuple[int, int, int]:
        return tuple(max(n, self.window) for n in self.shape)

    @property
    def starts(self) -> tuple[list[int], list[int], list[int]]:
        return tuple(axis_starts(n, self.window, self.stride) for n in self.padded)

    def calls(self) -> list[tuple[int, int, int, int, int, int]]:
        """(d0, d1, h0, h1, w0, w1) of every network call of the official loop, in order."""
        w = self.window
        sd, sh, sw = self.starts
        return [(d, d + w, h, h + w, x, x + w) for d in sd for h in sh for x in sw]

    def distinct(self) -> list[tuple[tuple[int, int, int], int]]:
        """((d0, h0, w0), times visited) of each distinct window, in first-visit order."""
        counts: dict[tuple[int, int, int], int] = {}
        for d0, _, h0, _, w0, _ in self.calls():
            counts[(d0, h0, w0)] = counts.get((d0, h0, w0), 0) + 1
        return list(counts.items())

    def coverage(self) -> np.ndarray:
        """float32 (Z, Y, X) padded: how many calls cover each voxel."""
        axes = []
        for n, starts in zip(self.padded, self.starts):
            c = np.zeros(n, dtype=np.float32)
            for s in starts:
                c[s:s + self.window] += 1
            axes.append(c)
        return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def sliding_window(forward: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray, channels: int, *,
                   window: int = 128, overlap: float = 0.5,
                   progress: Callable[[int, int], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Mean window probability minus 0.5, (channels, Z, Y, X) float32 (float16 past the budget).

    ``forward``: float32 (1, 1, w, w, w) CPU tensor -> logits (1, channels, w, w, w) (any device).
    ``volume``: float32 (Z, Y, X). ``progress(done, total)`` after each distinct window;
    ``stop()`` is polled before each one (raises :class:`WindowsStopped`). A voxel is inside
    structure c where the result is >= 0."""
    plan = WindowPlan(tuple(volume.shape), window, stride_for(window, overlap))
    padded = np.zeros(plan.padded, dtype=np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    too_big = channels * padded.size * 4 > ACCUMULATOR_BUDGET
    sums = np.zeros((channels, *plan.padded), dtype=np.float16 if too_big else np.float32)
    todo = plan.distinct()
    for done, ((d, h, w), times) in enumerate(todo):
        if stop is not None and stop():
            raise WindowsStopped
        x = torch.from_numpy(padded[d:d + window, h:h + window, w:w + window]).reshape(1, 1, *(window,) * 3)
        with torch.no_grad():
            p = torch.sigmoid(forward(x).float())[0].sub_(0.5).mul_(times).cpu().numpy()
        sums[:, d:d + window, h:h + window, w:w + window] += p.astype(sums.dtype, copy=False)
        del p
        if progress is not None:
            progress(done + 1, len(todo))
    counts = plan.coverage()
    for c in range(channels):
        sums[c] /= counts
    return sums[(slice(None), *(slice(0, n) for n in volume.shape))]
