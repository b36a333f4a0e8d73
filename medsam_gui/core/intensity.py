"""Intensity windowing: display presets and MedSAM's reference preprocessing to uint8.

A window is (level, width) in the scan's units (HU for CT); its bounds are
``[level - width / 2, level + width / 2]``. Windowing never changes the scan's data: it makes
a new array (for the model) or sets the display's contrast limits.
"""

from __future__ import annotations

import numpy as np

# (level, width)
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}
DEFAULT_CT_WINDOW = WINDOW_PRESETS["soft tissue"]
MR_PERCENTILES = (0.5, 99.5)


def window_bounds(level: float, width: float) -> tuple[float, float]:
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


def bounds_to_window(lo: float, hi: float) -> tuple[float, float]:
    return ((float(lo) + float(hi)) / 2.0, float(hi) - float(lo))


def mr_auto_bounds(array: np.ndarray) -> tuple[float, float]:
    """MR auto window: the 0.5 and 99.5 percentiles of the voxels > 0 (all finite voxels if none)."""
    data = np.asarray(array)
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data.ravel()
    positive = finite[finite > 0]
    sample = positive if positive.size else finite
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, MR_PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))


def default_bounds(array: np.ndarray, modality: str) -> tuple[float, float]:
    """CT: the soft-tissue window; MR and unknown: the percentile auto window."""
    if modality == "CT":
        return window_bounds(*DEFAULT_CT_WINDOW)
    return mr_auto_bounds(array)


def volume_to_uint8(array: np.ndarray, modality: str, bounds: tuple[float, float]) -> np.ndarray:
    """MedSAM's reference whole-volume preprocessing to uint8 (z, y, x).

    Clip to ``bounds``, min-max scale to 0..255 over the whole clipped volume, and truncate to
    uint8. For MR, voxels that were exactly 0 stay 0 (as in MedSAM's MR pre-processing).
    A constant volume maps to 0.
    """
    data = np.asarray(array)
    lo, hi = float(bounds[0]), float(bounds[1])
    clipped = np.clip(data.astype(np.float64, copy=False), lo, hi)
    if np.issubdtype(clipped.dtype, np.floating):
        clipped = np.nan_to_num(clipped, nan=lo, posinf=hi, neginf=lo)
    cmin, cmax = float(clipped.min()), float(clipped.max())
    if cmax > cmin:
        scaled = (clipped - cmin) / (cmax - cmin) * 255.0
    else:
        scaled = np.zeros_like(clipped)
    if modality == "MR":
        scaled[data == 0] = 0
    return scaled.astype(np.uint8)
