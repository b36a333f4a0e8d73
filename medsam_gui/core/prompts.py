"""Prompts for MedSAM: boxes in slice pixel coordinates and RECIST long-axis lines.

Coordinates: a slice is a 2D array indexed (row, column) = (y, x). A :class:`Box` is
(x0, y0, x1, y1) with x = column and y = row, in pixel units of that slice (pixel centres at
integer coordinates, as in the reference MedSAM inference where the box comes from the
label's index extent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x0, y0, x1, y1) in slice pixels; always normalised so that
    ``x0 <= x1`` and ``y0 <= y1`` (corners given in any order are swapped on creation)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        vals = [float(v) for v in (self.x0, self.y0, self.x1, self.y1)]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"box coordinates must be finite, got {vals}")
        x0, y0, x1, y1 = vals
        object.__setattr__(self, "x0", min(x0, x1))
        object.__setattr__(self, "x1", max(x0, x1))
        object.__setattr__(self, "y0", min(y0, y1))
        object.__setattr__(self, "y1", max(y0, y1))

    @classmethod
    def from_xyxy(cls, xyxy: Sequence[float]) -> "Box":
        if len(xyxy) != 4:
            raise ValueError(f"a box needs 4 numbers x0,y0,x1,y1, got {len(xyxy)}")
        return cls(*xyxy)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) centre."""
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def clip(self, h: int, w: int) -> "Box":
        """This box clipped to a slice of ``h`` rows and ``w`` columns (pixel centres
        0..w-1 and 0..h-1)."""
        xmax, ymax = float(w - 1), float(h - 1)
        return Box(
            min(max(self.x0, 0.0), xmax),
            min(max(self.y0, 0.0), ymax),
            min(max(self.x1, 0.0), xmax),
            min(max(self.y1, 0.0), ymax),
        )

    def expand(self, margin: float) -> "Box":
        """The box grown by ``margin`` pixels on every side (not clipped)."""
        return Box(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin)

    def is_empty(self) -> bool:
        """True for a degenerate box (zero width or height)."""
        return self.width <= 0 or self.height <= 0


def recist_to_box(p0_xy: Sequence[float], p1_xy: Sequence[float], margin: float = 5.0) -> Box:
    """A square box around a RECIST long-axis line.

    The box is centred on the midpoint of the line from ``p0_xy`` to ``p1_xy`` (each (x, y) in
    slice pixels) and its side is ``length + 2 * margin`` where ``length`` is the Euclidean
    length of the line: a lesion whose longest diameter is the line fits inside whatever the
    line's direction, with ``margin`` pixels to spare along the line. The result is not
    clipped; call ``.clip(h, w)``.
    """
    x0, y0 = float(p0_xy[0]), float(p0_xy[1])
    x1, y1 = float(p1_xy[0]), float(p1_xy[1])
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    length = math.hypot(x1 - x0, y1 - y0)
    half = length / 2.0 + float(margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return Box(cx - half, cy - half, cx + half, cy + half)


# ------------------------------------------------------------------------------------------
# prompt shapes drawn on a 3D scan
# ------------------------------------------------------------------------------------------
PROMPT_KINDS = ("box", "recist")


@dataclass(frozen=True)
class Prompt:
    """One drawn prompt: ``kind`` "box" (rectangle, 4 vertices) or "recist" (long-axis line,
    2 vertices), the ``label`` value it segments, and its ``vertices`` as an (N, 3) float64
    array of voxel coordinates (z, y, x) in whatever frame the caller uses (display order in
    the GUI, the scan's own array order in saved state)."""

    kind: str
    label: int
    vertices: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {self.kind!r}")
        v = np.asarray(self.vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) < 2 or not np.isfinite(v).all():
            raise ValueError(f"prompt vertices must be a finite (N>=2, 3) array, got shape {v.shape}")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "label", int(self.label))


def prompt_slice_box(vertices, kind: str, shape_zyx: Sequence[int], view_axis: int,
                     recist_margin: float) -> tuple[int, int, Box]:
    """(axis, slice index, box clipped to the slice) of a prompt drawn on a 3D array.

    ``vertices``: (N, 3) voxel coordinates of the array of shape ``shape_zyx``. The slice axis
    is an axis along which all vertices share one coordinate, ``view_axis`` when it is one of
    them. A "recist" line becomes :func:`recist_to_box` with ``recist_margin`` pixels; a "box"
    its bounding rectangle. The box is in the slice's pixels (x = the later remaining axis,
    y = the earlier). Raises ValueError when the prompt lies outside the array.
    """
    verts = np.asarray(vertices, dtype=float)
    flat = [a for a in range(3) if np.ptp(verts[:, a]) < 1e-3]
    axis = view_axis if view_axis in flat else (flat[0] if flat else view_axis)
    index = int(round(float(np.mean(verts[:, axis]))))
    r, c = [a for a in range(3) if a != axis]
    h, w = int(shape_zyx[r]), int(shape_zyx[c])
    ys, xs = verts[:, r], verts[:, c]
    if kind == "recist":
        box = recist_to_box((xs[0], ys[0]), (xs[-1], ys[-1]), margin=float(recist_margin))
    else:
        box = Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    if box.x1 < 0 or box.y1 < 0 or box.x0 > w - 1 or box.y0 > h - 1:
        raise ValueError("The box lies outside the image; draw it on the scan.")
    if not 0 <= index < int(shape_zyx[axis]):
        raise ValueError(f"The prompt is on slice {index}, outside the scan.")
    return axis, index, box.clip(h, w)


def box_corners(axis: int, index: int, box: Box) -> np.ndarray:
    """The 4 corners (4, 3) of ``box`` on slice ``index`` along ``axis``, as (z, y, x) voxel
    coordinates, in rectangle order (x0,y0), (x1,y0), (x1,y1), (x0,y1)."""
    r, c = [a for a in range(3) if a != axis]
    corners = np.zeros((4, 3))
    corners[:, axis] = index
    corners[:, r] = (box.y0, box.y0, box.y1, box.y1)
    corners[:, c] = (box.x0, box.x1, box.x1, box.x0)
    return corners


def key_boxes(placed: Iterable[tuple[int, int, Box, int]], axis: int, label: int) -> dict[int, tuple]:
    """{slice index: (x0, y0, x1, y1)} of the ``placed`` prompts ((axis, index, box, label)
    tuples) of ``label`` on ``axis``; several prompts on one slice give their union box. The
    key slices of a 3D propagation."""
    out: dict[int, tuple] = {}
    for a, idx, box, lab in placed:
        if a != axis or lab != label:
            continue
        xyxy = box.xyxy()
        if idx in out:
            k = out[idx]
            xyxy = (min(k[0], xyxy[0]), min(k[1], xyxy[1]), max(k[2], xyxy[2]), max(k[3], xyxy[3]))
        out[idx] = tuple(float(v) for v in xyxy)
    return out


def prompts_to_state(prompts: Sequence[Prompt], to_source: Callable) -> dict:
    """Saved state of ``prompts``: ``{"shapes": [{"kind", "label", "vertices_zyx": float64
    (N, 3) array}]}`` with the vertices mapped by ``to_source`` ((N, 3) -> (N, 3); e.g. display
    -> the scan's (z, y, x) voxel indices) so they survive reopening the scan."""
    return {"shapes": [{"kind": p.kind, "label": int(p.label),
                         "vertices_zyx": np.asarray(to_source(p.vertices), dtype=np.float64).reshape(-1, 3)}
                        for p in prompts]}


def prompts_from_state(state: dict | None, from_source: Callable) -> list[Prompt]:
    """The prompts saved by :func:`prompts_to_state`, vertices mapped back by ``from_source``.
    Raises ValueError for a malformed entry."""
    out = []
    for i, d in enumerate((state or {}).get("shapes") or []):
        try:
            verts = np.asarray(d["vertices_zyx"], dtype=np.float64).reshape(-1, 3)
            out.append(Prompt(str(d["kind"]), int(d["label"]), np.asarray(from_source(verts), dtype=np.float64)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"saved prompt {i} is malformed: {exc}") from exc
    return out
