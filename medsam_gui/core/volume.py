"""A scan volume: voxel array (z, y, x) plus its physical geometry.

Geometry follows SimpleITK / ITK conventions, always in (x, y, z) order:

- ``spacing``: voxel size in mm along the array's x (column), y (row), z (slice) axes;
- ``origin``: physical position (mm, LPS) of the centre of voxel index (0, 0, 0);
- ``direction``: 9 floats, the 3x3 direction cosine matrix in row-major order; column j is
  the physical direction of index axis j (j = x, y, z).

The array itself is in numpy order (z, y, x). This z,y,x vs x,y,z split is the classic
pitfall: anything indexing the array uses z,y,x; anything geometric uses x,y,z.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: str | None = None
    modality: str = "unknown"  # "CT", "MR" or "unknown" (a guess; the user can change it)
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("spacing and origin need 3 values, direction 9")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Image size in ITK order (x, y, z)."""
        z, y, x = self.shape
        return (x, y, z)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def same_grid(self, other: "Volume | None" = None, *, shape_zyx=None, spacing=None, origin=None,
                  direction=None, tol: float = 1e-4) -> bool:
        """True when ``other`` (or the given geometry) lies on exactly this grid."""
        if other is not None:
            shape_zyx, spacing, origin, direction = other.shape, other.spacing, other.origin, other.direction
        if tuple(shape_zyx) != self.shape:
            return False
        return (
            np.allclose(spacing, self.spacing, atol=tol, rtol=0)
            and np.allclose(origin, self.origin, atol=tol * 10, rtol=0)
            and np.allclose(direction, self.direction, atol=tol, rtol=0)
        )

    def index_to_physical(self, zyx) -> np.ndarray:
        """Physical (x, y, z) mm of a voxel index given as (z, y, x)."""
        ijk = np.asarray(zyx, dtype=float)[::-1]
        return np.asarray(self.origin) + self.direction_matrix @ (ijk * np.asarray(self.spacing))

    def fingerprint(self) -> str:
        """A content hash of voxels and geometry: equal only for the same scan on the same grid.

        Used to key caches (embeddings) and to check that a moved scan is the same one.
        """
        cached = self.meta.get("_fingerprint")
        if cached:
            return cached
        h = hashlib.sha256()
        arr = np.ascontiguousarray(self.array)
        h.update(str(arr.dtype).encode())
        h.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
        h.update(np.asarray(self.spacing + self.origin + self.direction, dtype=np.float64).round(6).tobytes())
        h.update(memoryview(arr).cast("B"))
        digest = h.hexdigest()[:32]
        self.meta["_fingerprint"] = digest
        return digest
