"""Reorienting scan arrays for display, without copying or resampling.

Physical space is DICOM/ITK LPS: +x toward the patient's Left, +y toward Posterior, +z toward
Superior. A scan's direction matrix (9 floats, row-major, SimpleITK convention) has as column j
the physical direction of index axis j (j = x, y, z); in the numpy array (z, y, x) that index
axis is array axis ``2 - j``.

Display axes (numpy order of the display array):

- display axis 0 = slices, increasing toward Superior (slice 0 is the most inferior, so the
  slider runs inferior -> superior);
- display axis 1 = rows, increasing toward Posterior (row 0 = anterior: anterior at the top);
- display axis 2 = columns, increasing toward patient Left (column 0 = patient right, so
  the patient's right is on the screen's left: radiological convention).

This is exactly the array of ``SimpleITK.DICOMOrient(image, "LPS")``. The transform is a
permutation of axes plus flips, so ``to_display`` / ``from_display`` return numpy views.

A scan is *oblique* when its direction matrix is singular, not orthonormal, or some index axis
is not within ~25 degrees of a patient axis (dominant cosine < 0.9), or two index axes point
along the same patient axis. Oblique scans are shown as stored (identity transform) with
``oblique=True`` so the GUI can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DOMINANT_COSINE_MIN = 0.9
ORTHO_TOL = 1e-3

# letter of the patient direction toward which physical axis p (0=x, 1=y, 2=z) increases / decreases
_POS_LETTER = ("L", "P", "S")
_NEG_LETTER = ("R", "A", "I")


def _direction_matrix(direction9: Sequence[float]) -> np.ndarray:
    m = np.asarray(direction9, dtype=float)
    if m.size != 9:
        raise ValueError(f"direction needs 9 values (row-major 3x3), got {m.size}")
    return m.reshape(3, 3)


def is_oblique(direction9: Sequence[float]) -> bool:
    """True when the direction matrix is singular, not orthonormal, or not close to axis aligned."""
    return _axis_assignment(_direction_matrix(direction9)) is None


def _axis_assignment(m: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """For each index axis j (x, y, z): (dominant physical axis, sign), or None if oblique."""
    if not np.all(np.isfinite(m)):
        return None
    if abs(np.linalg.det(m)) < 1e-6:
        return None
    if not np.allclose(m.T @ m, np.eye(3), atol=ORTHO_TOL):
        return None
    phys = tuple(int(np.argmax(np.abs(m[:, j]))) for j in range(3))
    if len(set(phys)) != 3:
        return None
    if any(abs(m[phys[j], j]) < DOMINANT_COSINE_MIN for j in range(3)):
        return None
    signs = tuple(1 if m[phys[j], j] > 0 else -1 for j in range(3))
    return phys, signs


def orientation_code(direction9: Sequence[float]) -> str:
    """ITK/DICOM orientation code: for index axes x, y, z the patient direction each increases toward.

    Identity -> "LPS"; a typical NIfTI (diag(-1, -1, 1)) -> "RAS". Uses each column's dominant
    component, also for oblique matrices (then it is the nearest code); "???" if degenerate.
    Agrees with ``SimpleITK.DICOMOrientImageFilter_GetOrientationFromDirectionCosines``.
    """
    m = _direction_matrix(direction9)
    if not np.all(np.isfinite(m)):
        return "???"
    letters = []
    for j in range(3):
        col = m[:, j]
        p = int(np.argmax(np.abs(col)))
        if col[p] == 0:
            letters.append("?")
        else:
            letters.append(_POS_LETTER[p] if col[p] > 0 else _NEG_LETTER[p])
    return "".join(letters)


@dataclass(frozen=True)
class DisplayOrientation:
    """Array (z, y, x) <-> display array, as an axis permutation followed by flips.

    ``perm[d]``: the array axis (0 = z, 1 = y, 2 = x index axis) shown along display axis d, so
    ``display = np.transpose(array, perm)`` then flipped along every display axis d with
    ``flips[d]``. ``inverse_perm[a]``: the display axis that shows array axis a.
    ``shape_zyx`` (optional) is the array's shape; point conversions need it for flips.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    oblique: bool = False
    code: str = "LPS"
    shape_zyx: tuple[int, int, int] | None = None
    axis_letters: tuple[tuple[str, str], ...] = (("I", "S"), ("A", "P"), ("R", "L"))

    @classmethod
    def from_direction(cls, direction9: Sequence[float],
                       shape_zyx: Sequence[int] | None = None) -> "DisplayOrientation":
        """The display transform of a scan with this direction matrix (and array shape)."""
        m = _direction_matrix(direction9)
        shape = None if shape_zyx is None else tuple(int(s) for s in shape_zyx)
        if shape is not None and len(shape) != 3:
            raise ValueError(f"shape_zyx must have 3 values, got {shape_zyx!r}")
        code = orientation_code(direction9)
        assignment = _axis_assignment(m)
        if assignment is None:
            # identity: display axes are the array axes; letters from each index axis' nearest direction
            letters = []
            for a in range(3):
                letter = code[2 - a]
                letters.append((_opposite(letter), letter))
            return cls((0, 1, 2), (False, False, False), True, code, shape, tuple(letters))  # type: ignore[arg-type]
        phys, signs = assignment
        perm = [0, 0, 0]
        flips = [False, False, False]
        for j in range(3):  # index axis j -> array axis 2 - j; physical axis p -> display axis 2 - p
            d = 2 - phys[j]
            perm[d] = 2 - j
            flips[d] = signs[j] < 0
        return cls(tuple(perm), tuple(flips), False, code, shape)  # type: ignore[arg-type]

    @property
    def inverse_perm(self) -> tuple[int, int, int]:
        inv = [0, 0, 0]
        for d, a in enumerate(self.perm):
            inv[a] = d
        return tuple(inv)  # type: ignore[return-value]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    # --- arrays ---------------------------------------------------------------------------
    def _flip_slices(self, ndim: int) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flips) + (slice(None),) * (ndim - 3)

    def to_display(self, arr_zyx: np.ndarray) -> np.ndarray:
        """View of a (z, y, x[, ...]) array in display order; trailing axes (e.g. RGB) are kept."""
        a = np.asarray(arr_zyx)
        if a.ndim < 3:
            raise ValueError(f"to_display needs a 3D (z, y, x) array, got shape {a.shape}")
        axes = tuple(self.perm) + tuple(range(3, a.ndim))
        return np.transpose(a, axes)[self._flip_slices(a.ndim)]

    def from_display(self, arr: np.ndarray) -> np.ndarray:
        """View of a display-ordered array back in the scan's (z, y, x[, ...]) order."""
        a = np.asarray(arr)
        if a.ndim < 3:
            raise ValueError(f"from_display needs a 3D array, got shape {a.shape}")
        unflipped = a[self._flip_slices(a.ndim)]
        axes = tuple(self.inverse_perm) + tuple(range(3, a.ndim))
        return np.transpose(unflipped, axes)

    # --- geometry -------------------------------------------------------------------------
    def display_spacing(self, spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
        """Voxel size (mm) along display axes 0, 1, 2, from the scan's (x, y, z) spacing."""
        sp_zyx = tuple(float(s) for s in spacing_xyz)[::-1]
        return tuple(sp_zyx[a] for a in self.perm)  # type: ignore[return-value]

    def display_shape(self, shape_zyx: Sequence[int] | None = None) -> tuple[int, int, int]:
        shape = self._shape(shape_zyx)
        return tuple(shape[a] for a in self.perm)  # type: ignore[return-value]

    def _shape(self, shape_zyx: Sequence[int] | None) -> tuple[int, ...]:
        shape = shape_zyx if shape_zyx is not None else self.shape_zyx
        if shape is None:
            if any(self.flips):
                raise ValueError("this conversion needs the array shape: pass shape_zyx "
                                 "(or build with DisplayOrientation.from_direction(direction, shape_zyx))")
            return (0, 0, 0)
        return tuple(int(s) for s in shape)

    def index_to_display(self, zyx, shape_zyx: Sequence[int] | None = None) -> np.ndarray:
        """Array index point(s) (z, y, x), shape (3,) or (N, 3), floats allowed -> display coordinates."""
        p = np.asarray(zyx, dtype=float)
        shape = self._shape(shape_zyx)
        out = p[..., list(self.perm)].copy()
        for d, f in enumerate(self.flips):
            if f:
                out[..., d] = (shape[self.perm[d]] - 1) - out[..., d]
        return out

    def display_to_index(self, zyx, shape_zyx: Sequence[int] | None = None) -> np.ndarray:
        """Display coordinate point(s), shape (3,) or (N, 3) -> array index (z, y, x); inverse of index_to_display."""
        p = np.asarray(zyx, dtype=float).copy()
        shape = self._shape(shape_zyx)
        for d, f in enumerate(self.flips):
            if f:
                p[..., d] = (shape[self.perm[d]] - 1) - p[..., d]
        return p[..., list(self.inverse_perm)]

    def display_axis_labels(self) -> tuple[str, str, str]:
        """Patient direction at the low end (index 0) of display axes 0, 1, 2.

        ("I", "A", "R") for every non-oblique scan (first slice inferior, top row anterior,
        left column patient right). For oblique scans: the nearest direction of each array axis.
        """
        return tuple(pair[0] for pair in self.axis_letters)  # type: ignore[return-value]

    def display_axis_label_pairs(self) -> tuple[tuple[str, str], ...]:
        """(low end, high end) patient direction letters of display axes 0, 1, 2."""
        return self.axis_letters


def plane(array: np.ndarray, index: int, axis: int) -> np.ndarray:
    """``np.take(array, index, axis)`` of a 3D array as a view (read it, do not write to it).

    np.take first makes the whole array contiguous when it is not, i.e. copies every display-order
    view of a flipped or transposed scan (150 MiB and tens of ms for 512 x 512 x 300, per call);
    basic indexing costs nothing. Non-numpy arrays (dask, zarr) give their plane as numpy."""
    axis = int(axis) % np.ndim(array)
    return np.asarray(array[(slice(None),) * axis + (int(index),)])


def _opposite(letter: str) -> str:
    pairs = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
    return pairs.get(letter, "?")


def source_voxel(orientation: DisplayOrientation, display_point: Sequence[float],
                 shape_zyx: Sequence[int] | None = None) -> tuple[int, int, int] | None:
    """The scan's own voxel index (i, j, k) = (x, y, z index) nearest a display coordinate
    point (display axes 0, 1, 2; floats), or None when that voxel is outside the scan.

    ``shape_zyx`` defaults to the orientation's own shape (needed: the bounds check uses it).
    """
    shape = shape_zyx if shape_zyx is not None else orientation.shape_zyx
    if shape is None:
        raise ValueError("source_voxel needs the array shape: pass shape_zyx")
    zyx = np.rint(orientation.display_to_index(np.asarray(display_point, dtype=float), shape)).astype(int)
    if np.any(zyx < 0) or np.any(zyx >= np.asarray(shape)):
        return None
    return int(zyx[2]), int(zyx[1]), int(zyx[0])


def nearest_display_index(display_point: Sequence[float], display_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The display voxel (integer display axes 0, 1, 2) nearest a display coordinate point, or
    None outside ``display_shape``. Voxel centres are at integer coordinates."""
    idx = np.rint(np.asarray(display_point, dtype=float)).astype(int)
    if idx.shape != (3,) or np.any(idx < 0) or np.any(idx >= np.asarray(display_shape)):
        return None
    return int(idx[0]), int(idx[1]), int(idx[2])
