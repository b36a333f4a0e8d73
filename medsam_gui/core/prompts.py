"""Prompts for MedSAM: boxes in slice pixel coordinates and RECIST long-axis lines.

Coordinates: a slice is a 2D array indexed (row, column) = (y, x). A :class:`Box` is
(x0, y0, x1, y1) with x = column and y = row, in pixel units of that slice (pixel centres at
integer coordinates, as in the reference MedSAM inference where the box comes from the
label's index extent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


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
