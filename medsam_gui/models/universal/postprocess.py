"""The Universal Model's official organ post-processing and the way back to the scan's grid.

Masks here are bool (X, Y, Z) on the network's cropped 1.5 mm RAS grid (see preprocess), keyed
by 0-based organ index. Rules (official utils.organ_post_process, run for every organ):

- most organs: the largest 26-connected component;
- pancreas (10): largest component; portal & splenic vein (9): its raw mask with every slice
  below the pancreas' lowest z cleared;
- lungs (15 right, 16 left): both masks merged, the two largest components kept, the one with
  the smaller mean x is the left lung (none when fewer than two components);
- kidney tumour (25) / liver tumour (26): kept inside the organs' mask (raw kidneys / liver,
  largest 2 / 1 components), closed then dilated by a 5^3 cube;
- hepatic vessel (14) and the other lesions (27..31): unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

from .preprocess import Prepared, index_map, spacing_grid

PANCREAS, PORTAL_VEIN, RIGHT_LUNG, LEFT_LUNG = 10, 9, 15, 16
TUMOUR_ORGANS = {25: (1, 2), 26: (5,)}
UNCHANGED = {14, 27, 28, 29, 30, 31}
_CUBE3 = np.ones((3, 3, 3), dtype=bool)
_CUBE5 = np.ones((5, 5, 5), dtype=bool)


def needed_classes(classes: Iterable[int]) -> list[int]:
    """The organs whose raw masks the rules for ``classes`` read (including themselves), sorted."""
    need = set(classes)
    for c in list(need):
        if c == PORTAL_VEIN:
            need.add(PANCREAS)
        elif c in (RIGHT_LUNG, LEFT_LUNG):
            need.update((RIGHT_LUNG, LEFT_LUNG))
        elif c in TUMOUR_ORGANS:
            need.update(TUMOUR_ORGANS[c])
    return sorted(need)


def largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """The k largest 26-connected components of a bool mask (ties: first found first)."""
    labels, n = ndimage.label(mask, structure=_CUBE3)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.argsort(-areas, kind="stable")[:k] + 1
    return np.isin(labels, keep)


def split_lungs(right: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lungs from the two raw lung masks."""
    labels, n = ndimage.label(right | left, structure=_CUBE3)
    if n < 2:
        empty = np.zeros(right.shape, dtype=bool)
        return empty, empty.copy()
    areas = np.bincount(labels.ravel())[1:]
    one, two = np.argsort(-areas, kind="stable")[:2] + 1
    x_one = np.nonzero(labels == one)[0].mean()
    x_two = np.nonzero(labels == two)[0].mean()
    left_label, right_label = (one, two) if x_one < x_two else (two, one)
    return labels == right_label, labels == left_label


def clear_below_pancreas(vein: np.ndarray, pancreas: np.ndarray) -> np.ndarray:
    """The vein mask with every z below the pancreas' lowest slice cleared (kept if no pancreas)."""
    z = np.flatnonzero(pancreas.any(axis=(0, 1)))
    out = vein.copy()
    if z.size:
        out[:, :, : z[0]] = False
    return out


def inside_organ(tumour: np.ndarray, organs: list[np.ndarray]) -> np.ndarray:
    """The tumour inside its organ(s): largest len(organs) components, closed and dilated (5^3)."""
    organ = largest_components(np.logical_or.reduce(organs), len(organs))
    organ = ndimage.binary_dilation(ndimage.binary_closing(organ, structure=_CUBE5), structure=_CUBE5)
    return tumour & organ


def postprocess(hard: Mapping[int, np.ndarray], classes: Iterable[int]) -> dict[int, np.ndarray]:
    """Official post-processing of ``classes`` from raw masks ``hard`` (needs needed_classes)."""
    out: dict[int, np.ndarray] = {}
    for c in classes:
        if c in out:
            continue
        if c in (RIGHT_LUNG, LEFT_LUNG):
            out[RIGHT_LUNG], out[LEFT_LUNG] = split_lungs(hard[RIGHT_LUNG], hard[LEFT_LUNG])
        elif c == PORTAL_VEIN:
            out[c] = clear_below_pancreas(hard[c], largest_components(hard[PANCREAS]))
        elif c in TUMOUR_ORGANS:
            out[c] = inside_organ(hard[c], [hard[o] for o in TUMOUR_ORGANS[c]])
        elif c in UNCHANGED:
            out[c] = hard[c].copy()
        else:
            out[c] = largest_components(hard[c])
    return {c: out[c] for c in classes}


def to_scan_grid(mask: np.ndarray, prepared: Prepared) -> np.ndarray:
    """A cropped-grid mask back on the scan's own grid: uint8 (z, y, x).

    As the official Invertd: the crop is padded back with zeros, the 1.5 mm grid sampled at the
    scan's voxels with nearest neighbour (border padding), and the orientation undone.
    """
    full = np.zeros(prepared.spacing_shape, dtype=np.uint8)
    full[tuple(slice(s, e) for s, e in zip(prepared.crop_start, prepared.crop_end))] = mask
    pixdim = np.linalg.norm(prepared.oriented_affine[:3, :3], axis=0)
    _, grid = spacing_grid(prepared.spacing_shape, prepared.spacing_affine, pixdim)
    xform = index_map(prepared.spacing_affine, grid)
    shape = prepared.oriented_shape
    limits = np.asarray(prepared.spacing_shape) - 1
    oriented = np.empty(shape, dtype=np.uint8)
    jy, jz = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for x in range(shape[0]):
        idx = np.stack([np.full(jy.shape, x), jy, jz], -1) @ xform[:3, :3].T + xform[:3, 3]
        idx = np.clip(np.rint(idx), 0, limits).astype(np.intp)
        oriented[x] = full[idx[..., 0], idx[..., 1], idx[..., 2]]
    oriented = oriented[tuple(slice(None, None, -1) if f else slice(None) for f in prepared.flips)]
    xyz = oriented.transpose(np.argsort(prepared.axes))
    return np.ascontiguousarray(xyz.transpose(2, 1, 0))
