"""3D propagation of a 2D box segmenter (MedSAM) through a structure, slice by slice.

The user draws a box on one slice (a *key* slice) or on several. Each key slice is segmented
with its box. Slices between two key slices use a box linearly interpolated between the two
key boxes (kind ``"interpolated"``). Beyond the outermost key slices the structure is followed
outward (kind ``"propagated"``): the next slice's box is the previous slice's mask bounding box
expanded by ``margin`` pixels and clipped to the slice, as in the reference MedSAM 3D
inference; when the mask touches a side of that box (the structure grew by more than the
margin), the side is moved out and the slice segmented again (``grow`` times at most). A direction stops when its mask vanishes, falls below ``min_area_px`` pixels or
below ``min_area_ratio`` times the previous slice's area, or at ``limits``.

Coordinates
-----------
Volumes are (z, y, x) numpy arrays. ``axis`` (0, 1 or 2) picks the array axis the slice index
runs along; slice ``i`` is ``np.take(volume, i, axis)``, a 2D (rows, cols) array:
axis 0 -> (y, x), axis 1 -> (z, x), axis 2 -> (z, y). Boxes are ``(x0, y0, x1, y1)`` in that
2D array's pixel coordinates (x = column, y = row), **inclusive** pixel indices (a box
``(3, 4, 3, 4)`` covers the single pixel at row 4, column 3), like MedSAM's ``get_bbox``.

Order of results
----------------
``order="spread"`` (default): results spread from the key slices like rings: first all key
slices (ascending), then every slice at distance 1 from its nearest key slice (the
interpolated slices next to each key, then the upward and downward propagation fronts), then
distance 2, and so on. The user sees the segmentation grow out of every key slice at once.
``order="sequential"``: key slices, then each gap between key slices bottom to top, then the
upward front to its end, then the downward front.

Nothing here imports Qt or torch; ``segment_slice`` is any callable (MedSAM, a test double).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import MedsamGuiError

Box = tuple  # (x0, y0, x1, y1)

KIND_KEY = "key"
KIND_INTERPOLATED = "interpolated"
KIND_PROPAGATED = "propagated"

DEFAULT_MARGIN = 5
DEFAULT_MIN_AREA_RATIO = 0.1
DEFAULT_MIN_AREA_PX = 3
DEFAULT_GROW = 2


class PropagationError(MedsamGuiError, ValueError):
    """Bad propagation input a user can cause (a key slice or box outside the scan)."""


@dataclass(frozen=True, eq=False)
class SliceResult:
    """One segmented slice.

    index: slice number along ``axis``; box: (x0, y0, x1, y1) inclusive pixel box that was
    given to the segmenter; mask: bool (rows, cols) array of slice ``np.take(vol, index, axis)``;
    kind: ``"key"``, ``"interpolated"`` or ``"propagated"``.
    """

    index: int
    box: tuple
    mask: np.ndarray
    kind: str

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))


def slice_shape(shape_zyx: Sequence[int], axis: int) -> tuple[int, int]:
    """(rows, cols) of ``np.take(volume, i, axis)`` for a volume of shape (z, y, x)."""
    _check_axis(axis)
    rest = [int(s) for j, s in enumerate(shape_zyx) if j != axis]
    return rest[0], rest[1]


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (x0, y0, x1, y1) bounding box of a 2D bool mask (rows, cols); None if empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def expand_box(box: Sequence[float], margin: float, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box grown by ``margin`` pixels on each side, rounded to ints and clipped to (rows, cols)."""
    h, w = hw
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        int(max(0, math.floor(x0 - margin))),
        int(max(0, math.floor(y0 - margin))),
        int(min(w - 1, math.ceil(x1 + margin))),
        int(min(h - 1, math.ceil(y1 + margin))),
    )


def interpolate_box(box_a: Sequence[float], box_b: Sequence[float], t: float) -> tuple[int, int, int, int]:
    """Box at fraction ``t`` (0 -> a, 1 -> b) between two boxes, each coordinate rounded."""
    return tuple(int(round((1.0 - t) * float(a) + t * float(b))) for a, b in zip(box_a, box_b))  # type: ignore[return-value]


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise PropagationError(f"axis must be 0, 1 or 2 (the array axis slices run along), got {axis!r}")


def _clean_box(box, hw: tuple[int, int], index: int) -> tuple:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise PropagationError(f"the box on slice {index} must be 4 numbers (x0, y0, x1, y1), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise PropagationError(f"the box on slice {index} has a non-finite coordinate: {box!r}")
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    h, w = hw
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        raise PropagationError(
            f"the box {tuple(box)} on slice {index} lies outside the slice ({w} columns x {h} rows); "
            "draw the box on the image"
        )
    clipped = (max(0.0, x0), max(0.0, y0), min(w - 1.0, x1), min(h - 1.0, y1))
    if all(float(v).is_integer() for v in clipped):
        return tuple(int(v) for v in clipped)
    return clipped


def _normalise(shape_zyx, key_boxes, axis, limits):
    _check_axis(axis)
    if len(shape_zyx) != 3:
        raise PropagationError(f"shape_zyx must have 3 values (z, y, x), got {tuple(shape_zyx)}")
    n = int(shape_zyx[axis])
    hw = slice_shape(shape_zyx, axis)
    if not key_boxes:
        raise PropagationError("propagation needs a box on at least one slice")
    keys: dict[int, tuple] = {}
    for idx, box in key_boxes.items():
        i = int(idx)
        if not 0 <= i < n:
            raise PropagationError(f"key slice {i} is outside the scan (slices 0..{n - 1} along axis {axis})")
        keys[i] = _clean_box(box, hw, i)
    if limits is None:
        lo, hi = 0, n - 1
    else:
        lo, hi = (int(v) for v in limits)
        if lo > hi:
            lo, hi = hi, lo
        lo, hi = max(0, lo), min(n - 1, hi)
    return n, hw, dict(sorted(keys.items())), lo, hi


def _plan(keys: Mapping[int, tuple], lo: int, hi: int, order: str) -> list[tuple]:
    """Planned steps: (index, kind, info). info: box for key/interpolated, direction (+1/-1)
    for propagated. Propagation steps are listed as far as ``limits``; they are skipped at run
    time once their direction has stopped."""
    if order not in ("spread", "sequential"):
        raise PropagationError(f"order must be 'spread' or 'sequential', got {order!r}")
    ks = list(keys)
    steps: list[tuple] = [(k, KIND_KEY, keys[k]) for k in ks]
    gaps: list[tuple[int, tuple]] = []  # (distance to nearest key, step)
    for a, b in zip(ks[:-1], ks[1:]):
        for i in range(a + 1, b):
            box = interpolate_box(keys[a], keys[b], (i - a) / (b - a))
            gaps.append((min(i - a, b - i), (i, KIND_INTERPOLATED, box)))
    up = [(ks[-1] + d, (ks[-1] + d, KIND_PROPAGATED, +1)) for d in range(1, hi - ks[-1] + 1)]
    down = [(ks[0] - d, (ks[0] - d, KIND_PROPAGATED, -1)) for d in range(1, ks[0] - lo + 1)]
    if order == "sequential":
        steps += [s for _, s in gaps] + [s for _, s in up] + [s for _, s in down]
        return steps
    rings: dict[int, list[tuple]] = {}
    for d, step in gaps:
        rings.setdefault(d, []).append(step)
    for d, (_, step) in enumerate(up, start=1):
        rings.setdefault(d, []).append(step)
    for d, (_, step) in enumerate(down, start=1):
        rings.setdefault(d, []).append(step)
    for d in sorted(rings):
        steps += rings[d]
    return steps


def slices_to_encode(shape_zyx: Sequence[int], key_boxes: Mapping[int, Sequence[float]], *, axis: int = 0,
                     limits: tuple[int, int] | None = None, order: str = "spread") -> list[int]:
    """Slice indices in the order :func:`propagate` may segment them (propagation fronts
    listed up to ``limits``; they usually stop earlier). The GUI encodes them ahead in this
    order so MedSAM embeddings are ready when the propagation reaches them."""
    _, _, keys, lo, hi = _normalise(shape_zyx, key_boxes, axis, limits)
    return [step[0] for step in _plan(keys, lo, hi, order)]


def propagate(
    shape_zyx: Sequence[int],
    key_boxes: Mapping[int, Sequence[float]],
    segment_slice: Callable[[int, tuple], np.ndarray],
    *,
    axis: int = 0,
    margin: float = DEFAULT_MARGIN,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    min_area_px: int = DEFAULT_MIN_AREA_PX,
    limits: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
    order: str = "spread",
    prefetch: Callable[[list[int]], None] | None = None,
    lookahead: int = 2,
    grow: int = DEFAULT_GROW,
) -> Iterator[SliceResult]:
    """Segment a structure through a volume from boxes on one or more key slices.

    shape_zyx: volume shape (z, y, x). key_boxes: {slice index: (x0, y0, x1, y1)} inclusive
    pixel boxes on ``np.take(volume, index, axis)``; boxes are clipped to the slice.
    segment_slice(index, box) -> bool (rows, cols) mask of that slice.
    margin: pixels added around the previous mask's bounding box for the next box.
    min_area_ratio / min_area_px: a propagated mask smaller than ``min_area_ratio`` x the
    previous slice's area, or than ``min_area_px`` pixels (or empty), ends that direction and
    is not yielded. limits: inclusive (first, last) slice numbers propagation may reach (key
    slices and slices between them are always segmented). cancel(): checked before each slice;
    True stops the generator (results already yielded stand). order: "spread" or
    "sequential" (see module docstring). prefetch(indices): called before each slice with up
    to ``lookahead`` slice indices that will be segmented after it (for embedding ahead).
    grow: on a propagated slice whose mask touches a side of its box (the structure grew
    past the margin), that side is moved out by ``margin`` and the slice segmented again, at
    most ``grow`` times (MedSAM: decoder passes only, the embedding is reused); the result's
    ``box`` is the last box used.

    Yields :class:`SliceResult` (index, box, mask, kind).
    """
    n, hw, keys, lo, hi = _normalise(shape_zyx, key_boxes, axis, limits)
    steps = _plan(keys, lo, hi, order)
    return _run(steps, hw, segment_slice, float(margin), float(min_area_ratio), int(min_area_px),
                cancel, prefetch, int(lookahead), max(0, int(grow)))


def _call(segment_slice, index, box, hw) -> np.ndarray:
    mask = np.asarray(segment_slice(index, box)).astype(bool, copy=False)
    if mask.shape != hw:
        raise ValueError(f"segment_slice returned a mask of shape {mask.shape} for slice {index}; expected {hw}")
    return mask


def _grow_box(mask: np.ndarray, box: tuple, margin: float, hw: tuple[int, int]) -> tuple | None:
    """The box widened by ``margin`` on every side where the mask touches it (and the slice
    continues beyond); None when the mask touches no such side."""
    h, w = hw
    x0, y0, x1, y1 = (int(v) for v in box)
    step = max(1, int(math.ceil(margin)))
    if not mask[y0:y1 + 1, x0:x1 + 1].any():
        return None
    nx0 = max(0, x0 - step) if x0 > 0 and mask[y0:y1 + 1, x0].any() else x0
    nx1 = min(w - 1, x1 + step) if x1 < w - 1 and mask[y0:y1 + 1, x1].any() else x1
    ny0 = max(0, y0 - step) if y0 > 0 and mask[y0, x0:x1 + 1].any() else y0
    ny1 = min(h - 1, y1 + step) if y1 < h - 1 and mask[y1, x0:x1 + 1].any() else y1
    new = (nx0, ny0, nx1, ny1)
    return None if new == (x0, y0, x1, y1) else new


def _run(steps, hw, segment_slice, margin, min_area_ratio, min_area_px, cancel, prefetch, lookahead, grow):
    done: dict[int, np.ndarray] = {}  # index -> mask, for slices propagation continues from
    areas: dict[int, int] = {}
    dead = {+1: False, -1: False}

    def alive(step) -> bool:
        return not (step[1] == KIND_PROPAGATED and dead[step[2]])

    for pos, step in enumerate(steps):
        if not alive(step):
            continue
        if cancel is not None and cancel():
            return
        index, kind, info = step
        if kind == KIND_PROPAGATED:
            prev = done.get(index - info)
            bbox = None if prev is None else mask_bbox(prev)
            if bbox is None:
                dead[info] = True
                continue
            box = expand_box(bbox, margin, hw)
        else:
            box = info
        if prefetch is not None and lookahead > 0:
            ahead = [s[0] for s in steps[pos + 1:] if alive(s)][:lookahead]
            if ahead:
                prefetch(ahead)
        mask = _call(segment_slice, index, box, hw)
        if kind == KIND_PROPAGATED:
            for _ in range(grow):
                wider = _grow_box(mask, box, margin, hw)
                if wider is None:
                    break
                box = wider
                mask = _call(segment_slice, index, box, hw)
        area = int(np.count_nonzero(mask))
        if kind == KIND_PROPAGATED:
            prev_area = areas[index - info]
            if area == 0 or area < min_area_px or area < min_area_ratio * prev_area:
                dead[info] = True
                continue
        done[index] = mask
        areas[index] = area
        yield SliceResult(index=int(index), box=tuple(box), mask=mask, kind=kind)


def _slice_index(axis: int, index: int) -> tuple:
    sl: list = [slice(None)] * 3
    sl[axis] = int(index)
    return tuple(sl)


def propagate_to_volume(
    labels_zyx: np.ndarray,
    key_boxes: Mapping[int, Sequence[float]],
    segment_slice: Callable[[int, tuple], np.ndarray],
    label_value: int,
    *,
    axis: int = 0,
    overwrite: bool = False,
    replace: bool = False,
    on_result: Callable[[SliceResult], None] | None = None,
    **kwargs,
) -> list[int]:
    """Run :func:`propagate` and paint each mask into ``labels_zyx`` (z, y, x int, in place).

    Mask pixels get ``label_value``; pixels that hold another label keep it unless
    ``overwrite``. ``replace``: on every segmented slice, pixels of ``label_value`` outside the
    new mask are cleared (a re-run replaces the structure there) instead of kept. ``on_result``
    is called with each SliceResult after it is painted. Other keyword arguments go to
    :func:`propagate`. Returns the sorted slice indices (along ``axis``) where any voxel
    changed. Cancelling keeps what was painted so far.
    """
    if labels_zyx.ndim != 3:
        raise ValueError(f"labels must be a 3D (z, y, x) array, got shape {labels_zyx.shape}")
    value = int(label_value)
    if value <= 0:
        raise PropagationError(f"label value must be a positive integer, got {label_value}")
    if np.issubdtype(labels_zyx.dtype, np.integer) and value > np.iinfo(labels_zyx.dtype).max:
        raise PropagationError(f"label value {value} does not fit the label map's type {labels_zyx.dtype}")
    changed: set[int] = set()
    for res in propagate(labels_zyx.shape, key_boxes, segment_slice, axis=axis, **kwargs):
        sl = labels_zyx[_slice_index(axis, res.index)]  # a view
        before = sl.copy()
        paint = res.mask if overwrite else (res.mask & ((sl == 0) | (sl == value)))
        if replace:
            sl[(sl == value) & ~res.mask] = 0
        sl[paint] = value
        if not np.array_equal(before, sl):
            changed.add(res.index)
        if on_result is not None:
            on_result(res)
    return sorted(changed)
