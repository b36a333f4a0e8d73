"""Universal Model preprocessing, as its official inference (MONAI 0.9 transforms) does it.

LoadImaged + channel first, Orientationd("RAS"), Spacingd(1.5 mm, bilinear, border padding,
float64 computation), ScaleIntensityRanged(-175..250 -> 0..1, clipped), CropForegroundd(> 0,
no margin). Arrays here are in RAS index order (x, y, z) as nibabel gives them; the app's
:class:`~medsam_gui.core.volume.Volume` is (z, y, x) with LPS geometry and is converted first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.volume import Volume
from ...errors import MedsamGuiError

TARGET_SPACING = 1.5
HU_MIN, HU_MAX = -175.0, 250.0
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SLAB = 16  # output x-planes resampled at once


@dataclass(frozen=True)
class Prepared:
    """The network's input and what is needed to bring results back to the scan's grid.

    image: (X, Y, Z) float32 in [0, 1] on the 1.5 mm RAS grid, cropped to the foreground box
    [crop_start, crop_end) of the uncropped (spacing_shape) grid; spacing_affine maps that grid's
    indices to RAS mm. oriented_* describe the scan after Orientationd (before resampling);
    axes / flips say how the scan's (x, y, z) array became the oriented one.
    """

    image: np.ndarray
    crop_start: tuple[int, int, int]
    crop_end: tuple[int, int, int]
    spacing_shape: tuple[int, int, int]
    spacing_affine: np.ndarray
    oriented_shape: tuple[int, int, int]
    oriented_affine: np.ndarray
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]


def ras_array(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The scan as nibabel would load it: array (x, y, z) float32 and its (4, 4) RAS affine."""
    affine = np.eye(4)
    affine[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)[None, :]
    affine[:3, 3] = volume.origin
    return np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0), _LPS_TO_RAS @ affine


def orient_ras(array: np.ndarray, affine: np.ndarray):
    """Orientationd("RAS"): permute/flip axes so index axis i runs along +world axis i.

    Returns (array, affine, axes, flips): new axis i is old axis axes[i], flipped if flips[i].
    """
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    world = np.argmax(np.abs(rot), axis=0)  # world axis of each index axis
    if sorted(world.tolist()) != [0, 1, 2]:
        raise MedsamGuiError("The scan's orientation is too oblique to map onto RAS axes; "
                             "resample it to an axis-aligned grid first.")
    axes = tuple(int(np.where(world == i)[0][0]) for i in range(3))
    flips = tuple(bool(rot[i, axes[i]] < 0) for i in range(3))
    out = array.transpose(axes)
    new = np.eye(4)
    new[:3, 3] = affine[:3, 3]
    for i, (a, f) in enumerate(zip(axes, flips)):
        col = affine[:3, a]
        new[:3, i] = -col if f else col
        if f:
            new[:3, 3] += col * (array.shape[a] - 1)
    out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return np.ascontiguousarray(out), new, axes, flips


def spacing_grid(shape, affine: np.ndarray, pixdim: float | np.ndarray = TARGET_SPACING) -> tuple[tuple[int, ...], np.ndarray]:
    """Spacingd's output grid (diagonal=False): shape and affine covering the input's corners."""
    rzs = affine[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new = np.eye(4)
    new[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * pixdim)
    corners = np.stack(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    inv = np.linalg.inv(new)
    out = inv[:3, :3] @ world + inv[:3, 3:4]
    out_shape = tuple(int(v) for v in np.round(np.ptp(out, axis=1) + 1.0))
    mat = inv[:3, :3]
    k = 0
    for i in range(world.shape[1]):
        if np.allclose(np.min(mat @ world - mat @ world[:, i:i + 1], 1), 0.0, rtol=1e-3):
            k = i
            break
    new[:3, 3] = world[:, k]
    return out_shape, new


def index_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """(4, 4) destination index -> source index, solved in float32 as MONAI 0.9 does."""
    src = torch.as_tensor(src_affine, dtype=torch.float32)
    dst = torch.as_tensor(dst_affine, dtype=torch.float32)
    return torch.linalg.solve(src, dst).double().numpy()


def resample_linear(array: np.ndarray, xform: np.ndarray, out_shape) -> np.ndarray:
    """Trilinear resampling (border padding, voxel centres) in float64 -> float32 (X', Y', Z')."""
    src = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64)[None, None]
    n = np.asarray(array.shape, dtype=np.float64)
    jy, jz = np.meshgrid(np.arange(out_shape[1]), np.arange(out_shape[2]), indexing="ij")
    out = np.empty(out_shape, dtype=np.float32)
    for x0 in range(0, out_shape[0], _SLAB):
        jx = np.arange(x0, min(out_shape[0], x0 + _SLAB), dtype=np.float64)
        idx = np.stack(np.broadcast_arrays(jx[:, None, None], jy[None], jz[None]), -1)
        coords = idx @ xform[:3, :3].T + xform[:3, 3]
        grid = (2.0 * coords + 1.0) / n - 1.0  # align_corners=False normalisation
        grid = torch.as_tensor(grid[..., ::-1].copy())[None]
        res = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[x0:x0 + len(jx)] = res[0, 0].numpy()
    return out


def scale_intensity(image: np.ndarray) -> np.ndarray:
    """ScaleIntensityRanged(-175, 250 -> 0, 1, clip=True) in float32."""
    out = (image.astype(np.float32) - np.float32(HU_MIN)) / np.float32(HU_MAX - HU_MIN)
    return np.clip(out, 0.0, 1.0)


def foreground_box(image: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """CropForegroundd's box of voxels > 0 (no margin): (start, end) per axis."""
    fg = image > 0
    if not fg.any():
        raise MedsamGuiError("The scan has no voxel above -175 HU: nothing for the Universal Model "
                             "to segment (is it a CT in Hounsfield units?).")
    start, end = [], []
    for ax in range(3):
        hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != ax)))
        start.append(int(hit[0]))
        end.append(int(hit[-1]) + 1)
    return tuple(start), tuple(end)


def preprocess(volume: Volume) -> Prepared:
    """The official preprocessing of one CT scan -> :class:`Prepared`."""
    array, affine = ras_array(volume)
    oriented, oaffine, axes, flips = orient_ras(array, affine)
    shape, saffine = spacing_grid(oriented.shape, oaffine)
    resampled = resample_linear(oriented, index_map(oaffine, saffine), shape)
    scaled = scale_intensity(resampled)
    start, end = foreground_box(scaled)
    image = np.ascontiguousarray(scaled[tuple(slice(s, e) for s, e in zip(start, end))])
    return Prepared(image, start, end, shape, saffine, tuple(oriented.shape), oaffine, axes, flips)
