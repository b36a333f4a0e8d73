"""Sliding-window inference with MONAI 0.9's Gaussian blending (roi 96, overlap 0.5 as published).

The image is zero-padded (half before, rest after) on axes shorter than the window; windows
start every int(roi * (1 - overlap)) voxels, the last one moved back to end at the border (the
official loop keeps such near-duplicate windows); each window's logits are weighted by
``max(p_a * p_b * p_c, 1e-3)``, ``p`` the MONAI 0.9 Gaussian line (sigma = roi / 8, erf
kernel), summed, and divided by the summed weights. Arrays are (X, Y, Z) like the network input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import numpy as np
import torch

from ..auto_model import AutoSegmentationCancelled

ROI = 96
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (1, 1, r, r, r) -> (1, K, r, r, r) logits


def gaussian_line(roi: int = ROI, sigma_scale: float = SIGMA_SCALE) -> torch.Tensor:
    """(roi,) float32 importance profile: MONAI 0.9's erf-sampled Gaussian around roi // 2, peak 1."""
    sigma = torch.tensor(roi * sigma_scale, dtype=torch.float32)
    tail = int(max(float(sigma) * 4.0, 0.5) + 0.5)
    x = torch.arange(-tail, tail + 1, dtype=torch.float32)
    t = 0.70710678 / sigma
    kernel = (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)
    offsets = torch.arange(roi) - roi // 2 + tail
    line = kernel[offsets.clamp(0, len(kernel) - 1)] * ((offsets >= 0) & (offsets < len(kernel)))
    return line / line.max()


def importance_map(roi: int = ROI) -> torch.Tensor:
    """(roi, roi, roi) float32 blend weights max(p_a p_b p_c, 1e-3)."""
    p = gaussian_line(roi)
    weights = p[:, None, None] * p[None, :, None] * p[None, None, :]
    return weights.clamp(min=max(float(weights[weights > 0].min()), MIN_WEIGHT))


def padding(shape, roi: int = ROI) -> list[tuple[int, int]]:
    """Per axis (before, after) zeros that bring an axis up to the window size."""
    return [(max(roi - n, 0) // 2, max(roi - n, 0) - max(roi - n, 0) // 2) for n in shape]


def window_starts(shape, roi: int = ROI, overlap: float = 0.5) -> list[tuple[int, int, int]]:
    """Window corners in the padded image, in MONAI's order (last axis fastest)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    per_axis = []
    for n in shape:
        n = max(n, roi)
        step = roi if n == roi else max(int(roi * (1 - overlap)), 1)
        count = next((i for i in range(math.ceil(n / step)) if i * step + roi >= n), 0) + 1
        per_axis.append([i * step - max(i * step + roi - n, 0) for i in range(count)])
    return list(product(*per_axis))


def sliding_window(image: np.ndarray, predictor: Predictor, num_classes: int, *, roi: int = ROI,
                   overlap: float = 0.5, accumulate: torch.dtype = torch.float32,
                   progress: Callable[[int, int], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Blended logits (K, X, Y, Z) of ``image`` (X, Y, Z) float32, in ``accumulate`` dtype.

    ``accumulate`` = torch.float16 halves the memory of the K sums (the weights' sum stays
    float32). ``progress(done, total)`` follows each window; ``stop()`` is checked before each
    one and raises AutoSegmentationCancelled.
    """
    pads = padding(image.shape, roi)
    padded = np.pad(np.asarray(image, dtype=np.float32), pads)
    x = torch.from_numpy(padded)
    weights = importance_map(roi)
    total_shape = tuple(padded.shape)
    sums = torch.zeros((num_classes,) + total_shape, dtype=accumulate)
    counts = torch.zeros(total_shape, dtype=torch.float32)
    starts = window_starts(image.shape, roi, overlap)
    for done, start in enumerate(starts):
        if stop is not None and stop():
            raise AutoSegmentationCancelled("Automatic segmentation cancelled.")
        box = tuple(slice(s, s + roi) for s in start)
        with torch.no_grad():
            logits = predictor(x[box][None, None])[0]
        sums[(slice(None),) + box] += (logits * weights).to(accumulate)
        counts[box] += weights
        if progress is not None:
            progress(done + 1, len(starts))
    crop = tuple(slice(b, n - a) for (b, a), n in zip(pads, total_shape))
    sums = sums[(slice(None),) + crop]
    counts = counts[crop]
    for k in range(num_classes):  # in place, one class at a time: no second K-sized buffer
        sums[k] = (sums[k].float() / counts).to(accumulate)
    return sums
