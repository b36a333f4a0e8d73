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
# MR intensities have no absolute unit (unlike HU), so MR presets are (low, high) percentiles
# of the scan's voxels > 0; "auto" is the default MR window
MR_PRESETS: dict[str, tuple[float, float]] = {
    "auto": MR_PERCENTILES,
    "contrast": (2.0, 98.0),
    "full range": (0.0, 100.0),
    "bright detail": (50.0, 99.9),
}


def window_bounds(level: float, width: float) -> tuple[float, float]:
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


def bounds_to_window(lo: float, hi: float) -> tuple[float, float]:
    return ((float(lo) + float(hi)) / 2.0, float(hi) - float(lo))


def _mr_sample(array: np.ndarray) -> np.ndarray:
    """The voxels MR percentiles are taken over: finite voxels > 0 (all finite ones if none)."""
    data = np.asarray(array)
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data.ravel()
    positive = finite[finite > 0]
    return positive if positive.size else finite


def _ordered(lo: float, hi: float) -> tuple[float, float]:
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def mr_auto_bounds(array: np.ndarray) -> tuple[float, float]:
    """MR auto window: the 0.5 and 99.5 percentiles of the voxels > 0 (all finite voxels if none)."""
    sample = _mr_sample(array)
    if sample.size == 0:
        return (0.0, 1.0)
    return _ordered(*np.percentile(sample, MR_PERCENTILES))


def mr_preset_bounds(array: np.ndarray) -> dict[str, tuple[float, float]]:
    """{MR preset name: (lo, hi)}: each preset's percentiles of the voxels > 0 (one pass over
    the scan for all presets; "auto" equals :func:`mr_auto_bounds`)."""
    sample = _mr_sample(array)
    if sample.size == 0:
        return {name: (0.0, 1.0) for name in MR_PRESETS}
    qs = [q for pair in MR_PRESETS.values() for q in pair]
    values = np.percentile(sample, qs)
    return {name: _ordered(values[2 * i], values[2 * i + 1]) for i, name in enumerate(MR_PRESETS)}


def default_bounds(array: np.ndarray, modality: str) -> tuple[float, float]:
    """CT: the soft-tissue window; MR and unknown: the percentile auto window."""
    if modality == "CT":
        return window_bounds(*DEFAULT_CT_WINDOW)
    return mr_auto_bounds(array)


def _clipped_f64(part: np.ndarray, lo: float, hi: float) -> np.ndarray:
    clipped = np.clip(part.astype(np.float64, copy=False), lo, hi)
    return np.nan_to_num(clipped, nan=lo, posinf=hi, neginf=lo, copy=False)


UINT8_CHUNK_VOXELS = 1 << 22  # float64 temporaries of volume_to_uint8: <= 32 MiB per chunk


def _chunks(data: np.ndarray) -> list[tuple]:
    if data.ndim == 0:
        return [(Ellipsis,)]
    per = max(1, UINT8_CHUNK_VOXELS // max(1, int(np.prod(data.shape[1:]))))
    return [(slice(a, min(a + per, data.shape[0])),) for a in range(0, data.shape[0], per)]


def _is_small_int(data: np.ndarray) -> bool:
    return data.dtype.kind in "iu" and data.dtype.itemsize <= 2


def _lut_to_uint8(data: np.ndarray, modality: str, bounds: tuple[float, float],
                  scale: tuple[float, float]) -> np.ndarray:
    """:func:`part_to_uint8` of an 8/16-bit integer array through a look-up table: the same
    float64 operations on each value in its range, then one table look-up per voxel (~5-25x
    faster on a CT than the float64 pass over every voxel)."""
    vmin, vmax = int(data.min()), int(data.max())
    lut = part_to_uint8(np.arange(vmin, vmax + 1, dtype=np.int64), modality, bounds, scale)
    out = np.empty(data.shape, dtype=np.uint8)
    flat, dst = data.reshape(-1), out.reshape(-1)
    for a in range(0, flat.size, UINT8_CHUNK_VOXELS):
        part = flat[a:a + UINT8_CHUNK_VOXELS]
        dst[a:a + part.size] = lut[part.astype(np.int32) - vmin] if vmin else lut[part]
    return out


def uint8_scale(array: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float] | None:
    """(min, max) of the whole volume clipped to ``bounds``: the range :func:`volume_to_uint8`
    maps to 0..255 (None for an empty or constant volume: everything maps to 0). One pass, a
    few slices at a time."""
    data = np.asarray(array)
    if data.size == 0:
        return None
    lo, hi = float(bounds[0]), float(bounds[1])
    if _is_small_int(data):  # clipping is monotone: the clipped extremes are the extremes clipped
        cmin, cmax = (float(v) for v in _clipped_f64(np.array([data.min(), data.max()]), lo, hi))
    else:
        cmin, cmax = np.inf, -np.inf
        for sl in _chunks(data):
            c = _clipped_f64(data[sl], lo, hi)
            cmin, cmax = min(cmin, float(c.min())), max(cmax, float(c.max()))
    return (cmin, cmax) if cmax > cmin else None


def part_to_uint8(part: np.ndarray, modality: str, bounds: tuple[float, float],
                  scale: tuple[float, float] | None) -> np.ndarray:
    """:func:`volume_to_uint8` of a part of a volume (a slice, a slab: any sub-array), given the
    whole volume's :func:`uint8_scale`: bit for bit the same values as the whole volume's
    result there, without computing (or keeping) the rest of it."""
    data = np.asarray(part)
    if scale is None or data.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    lo, hi = float(bounds[0]), float(bounds[1])
    cmin, cmax = scale
    scaled = (_clipped_f64(data, lo, hi) - cmin) / (cmax - cmin) * 255.0
    if modality == "MR":
        scaled[data == 0] = 0
    return scaled.astype(np.uint8)


def volume_to_uint8(array: np.ndarray, modality: str, bounds: tuple[float, float]) -> np.ndarray:
    """MedSAM's reference whole-volume preprocessing to uint8 (z, y, x).

    Clip to ``bounds``, min-max scale to 0..255 over the whole clipped volume, and truncate to
    uint8. For MR, voxels that were exactly 0 stay 0 (as in MedSAM's MR pre-processing).
    A constant volume maps to 0. Computed a few slices at a time (the same float64 operations
    on every voxel, so the same result as on the whole volume at once) so that a 512 x 512 x 300
    CT needs ~32 MiB of temporaries instead of ~1.5 GiB; 8/16-bit integer scans go through a
    per-value table (same bytes). One slice of it alone: :func:`part_to_uint8` with
    :func:`uint8_scale`.
    """
    data = np.asarray(array)
    scale = uint8_scale(data, bounds)
    if scale is None:
        return np.zeros(data.shape, dtype=np.uint8)
    if _is_small_int(data):
        return _lut_to_uint8(data, modality, bounds, scale)
    out = np.empty(data.shape, dtype=np.uint8)
    for sl in _chunks(data):
        out[sl] = part_to_uint8(data[sl], modality, bounds, scale)
    return out
