"""Hermes-R input preparation: the official converters (e.g. ``bcv_3d.py``) then ``nii2npy.py``.

Steps, as the official code does them with SimpleITK (same library, same arithmetic):

1. Re-direct to the identity direction: a B-spline resample on the same size and spacing with an
   affine transform (matrix inv(direction), centred on the image centre) and the output origin
   chosen so the physical centre stays. For a +-1 diagonal direction this keeps the voxel array
   (only the geometry is relabelled) and B-spline rounding moves some voxels by <= 1 toward 0.
2. In-plane B-spline to 1.5 mm (z spacing kept), then z nearest neighbour to 1.5 mm; new size
   round(n * spacing / 1.5); corner aligned (index 0 <-> index 0); samples outside are 0.
   Every resample writes the source's pixel type (int16 CT: the result is truncated toward 0).
3. Intensities in float32: CT clipped to [-991, 500]; MR and PET clipped to their own 2nd..98th
   percentiles; then z-score with the clipped volume's own mean and std.
4. Zero padding (z-score 0) to the window size: ceil((128 - n) / 2) before and after each axis
   shorter than 128.

Arrays are (z, y, x); SimpleITK geometry is (x, y, z). :func:`to_source_grid` maps a mask on the
1.5 mm grid back onto the scan's own grid (nearest neighbour, the redirect undone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ...core.volume import Volume

TARGET_SPACING = 1.5
CT_CLIP = (-991.0, 500.0)
PERCENTILE_CLIP = (2.0, 98.0)     # MR and PET (nii2npy: every modality but CT)
WINDOW = 128
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Prepared:
    """The network volume and what is needed to map results back.

    ``volume``: float32 (Z, Y, X) padded z-scored network input. ``pad``: ((before, after) z, y, x)
    zeros added. ``grid``: the unpadded 1.5 mm image (SimpleITK, identity direction) whose values
    are the resampled intensities (source pixel type). ``redirect``: the affine transform of step 1
    (maps redirected physical points to source physical points) or None when the direction was
    already the identity. ``clip``, ``mean``, ``std``: the intensity normalisation used."""

    volume: np.ndarray
    pad: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    grid: sitk.Image
    redirect: sitk.Transform | None
    clip: tuple[float, float]
    mean: float
    std: float


def to_sitk(volume: Volume) -> sitk.Image:
    """The scan as a SimpleITK image with its geometry (bool/float16 arrays are widened)."""
    arr = volume.array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return img


def redirect_transform(img: sitk.Image) -> sitk.AffineTransform | None:
    """Step 1's transform (output point -> input point), or None for an identity direction."""
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    if np.array_equal(direction, np.eye(3)):
        return None
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) * 0.5 for n in img.GetSize()])
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(np.linalg.inv(direction).ravel().tolist())
    transform.SetCenter(centre)
    return transform


def redirect(img: sitk.Image, transform: sitk.Transform | None) -> sitk.Image:
    """Step 1: the image on an identity-direction grid of the same size and spacing."""
    if transform is None:
        return img
    centre = np.asarray(transform.GetCenter())
    half = np.asarray(img.GetSpacing()) * (np.asarray(img.GetSize()) - 1) * 0.5
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(img.GetSize())
    resampler.SetOutputSpacing(img.GetSpacing())
    resampler.SetOutputDirection(IDENTITY)
    resampler.SetOutputOrigin(tuple(centre - half))
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkBSpline)
    return resampler.Execute(img)


def _resample(img: sitk.Image, spacing: tuple[float, float, float], interpolator: int) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    ref = sitk.Image(size, img.GetPixelIDValue())
    ref.SetSpacing(spacing)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    return sitk.Resample(img, ref, sitk.Transform(3, sitk.sitkIdentity), interpolator)


def resample_to_target(img: sitk.Image, spacing: float = TARGET_SPACING) -> sitk.Image:
    """Step 2: in-plane B-spline, then z nearest neighbour, to ``spacing`` mm."""
    in_plane = _resample(img, (spacing, spacing, img.GetSpacing()[2]), sitk.sitkBSpline)
    return _resample(in_plane, (spacing, spacing, spacing), sitk.sitkNearestNeighbor)


def normalise(values: np.ndarray, modality: str) -> tuple[np.ndarray, tuple[float, float], float, float]:
    """Step 3: (z-scored float32 array, clip bounds, mean, std). ``modality``: "CT", "MR", "PET"."""
    img = values.astype(np.float32)
    if modality == "CT":
        lo, hi = CT_CLIP
    else:
        lo, hi = (float(np.percentile(img, p)) for p in PERCENTILE_CLIP)
    img = np.clip(img, lo, hi)
    mean, std = np.mean(img), np.std(img)
    img -= mean
    img /= std if std > 0 else np.float32(1.0)
    return img, (lo, hi), float(mean), float(std)


def pad_to_window(img: np.ndarray, window: int = WINDOW):
    """Step 4: symmetric zero padding of axes shorter than ``window``; returns (array, pad)."""
    pad = tuple((d, d) if n < window else (0, 0) for n in img.shape for d in [math.ceil((window - n) / 2)])
    return np.pad(img, pad), pad


def prepare(volume: Volume, modality: str, window: int = WINDOW) -> Prepared:
    """Steps 1-4 on ``volume`` (any pixel type; ``modality`` "CT", "MR" or "PET")."""
    img = to_sitk(volume)
    transform = redirect_transform(img)
    grid = resample_to_target(redirect(img, transform))
    z_scored, clip, mean, std = normalise(sitk.GetArrayViewFromImage(grid), modality)
    padded, pad = pad_to_window(z_scored, window)
    return Prepared(padded, pad, grid, transform, clip, mean, std)


def to_source_grid(mask: np.ndarray, prepared: Prepared, volume: Volume) -> np.ndarray:
    """A uint8 (Z', Y', X') mask on the unpadded 1.5 mm grid -> uint8 (z, y, x) on ``volume``'s
    grid: nearest neighbour at each source voxel's physical point, mapped through the inverse of
    the redirect; source voxels outside the 1.5 mm grid get 0."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    img.CopyInformation(prepared.grid)
    ref = sitk.Image(list(volume.size_xyz), sitk.sitkUInt8)
    ref.SetSpacing(volume.spacing)
    ref.SetOrigin(volume.origin)
    ref.SetDirection(volume.direction)
    back = sitk.Transform(3, sitk.sitkIdentity) if prepared.redirect is None else prepared.redirect.GetInverse()
    out = sitk.Resample(img, ref, back, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)
