"""The label map of a session on disk: only the bounding box of its labelled voxels.

``labels.npz`` holds key ``labels``: the C-contiguous crop ``labels[box]`` of the (z, y, x) map,
so saving (and every autosave) costs in proportion to the labelled part, not the whole map. The
``"labels"`` entry of ``session.json`` is ``{"file": "labels.npz", "shape": [z, y, x] (the full
map), "dtype": "uint8" | "uint16" ..., "box": [[z0, z1], [y0, y1], [x0, x1]] (half-open),
"voxels": {"<label>": count}}``. An all-zero map is an empty (0, 0, 0) crop with box
``[[0, 0], [0, 0], [0, 0]]``. Session format 1 (before the box) stored the full map and no box.

Numpy only; no Qt.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import SessionError
from .sparse_labels import nonzero_box

LABELS_FILE = "labels.npz"
BOXED_SINCE = 2  # the first session format whose label entry has a "box"
_COUNT_CHUNK = 1 << 22  # voxels counted at once by label_counts (temporaries of a few MiB)


def label_counts(labels: np.ndarray | None) -> dict[int, int]:
    """{label value: voxel count} for the non-zero values of ``labels`` (any shape)."""
    if labels is None or labels.size == 0:
        return {}
    flat = np.ravel(labels)
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    totals: dict[int, int] = {}
    # chunk by chunk: a whole-map ``flat != 0`` would be a 75 MiB temporary for 512 x 512 x 300
    for start in range(0, flat.size, _COUNT_CHUNK):
        part = flat[start:start + _COUNT_CHUNK]
        nz = part[part != 0]  # label maps are mostly background: count only the labelled voxels
        if nz.size == 0:
            continue
        if nz.min() < 0 or nz.max() > 1 << 20:
            vals, counts = np.unique(nz, return_counts=True)
        else:
            counts = np.bincount(nz.astype(np.intp, copy=False))
            vals = np.nonzero(counts)[0]
            counts = counts[vals]
        for v, n in zip(vals.tolist(), counts.tolist()):
            totals[int(v)] = totals.get(int(v), 0) + int(n)
    return {v: totals[v] for v in sorted(totals)}


def encode_labels(labels: Any, shape_zyx: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(crop, entry)``: the array to store under key ``labels`` and the ``session.json``
    entry. Bool maps are stored as uint8. ValueError for a map that is not integer or not on
    the scan's grid."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"Session.labels must be an integer array, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape_zyx):
        raise ValueError(f"Session.labels has shape {labels.shape}, the scan {tuple(shape_zyx)} (z, y, x)")
    box = nonzero_box(labels)
    if box is None:
        crop = np.zeros((0, 0, 0), labels.dtype)
        bounds = [[0, 0]] * 3
    else:
        crop = np.ascontiguousarray(labels[box])
        bounds = [[s.start, s.stop] for s in box]
    entry = {"file": LABELS_FILE, "shape": list(labels.shape), "dtype": str(labels.dtype), "box": bounds,
             "voxels": {str(k): v for k, v in label_counts(crop).items()}}
    return crop, entry


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode_labels(entry: Mapping[str, Any], arrays: Mapping[str, np.ndarray], shape_zyx: tuple[int, ...],
                  version: int) -> np.ndarray:
    """The full label map from the ``session.json`` entry and the arrays of ``labels.npz``
    (session format ``version``). SessionError for anything missing or inconsistent."""
    shape = tuple(shape_zyx)
    declared = entry.get("shape")
    if not isinstance(declared, list) or not all(_is_int(n) for n in declared) or tuple(declared) != shape:
        raise SessionError(f"The session's label map is declared with shape {declared!r} (z, y, x) but its "
                           f"scan has {shape}; the session is inconsistent.")
    if "labels" not in arrays:
        raise SessionError(f"{LABELS_FILE} holds no label map.")
    crop = arrays["labels"]
    if crop.dtype.kind not in "iu":
        raise SessionError(f"The session's label map has dtype {crop.dtype}; expected integers.")
    if str(crop.dtype) != entry.get("dtype"):
        raise SessionError(f"The session's label map has dtype {crop.dtype} but is declared as "
                           f"{entry.get('dtype')!r}; the session is damaged.")
    if version < BOXED_SINCE:
        box = [[0, n] for n in shape]
        where = "its scan"
    else:
        box = entry.get("box")
        if (not isinstance(box, list) or len(box) != 3
                or not all(isinstance(b, list) and len(b) == 2 and all(_is_int(i) for i in b) for b in box)
                or not all(0 <= a <= b <= n for (a, b), n in zip(box, shape))):
            raise SessionError(f"The session's label box {box!r} is malformed or outside its {shape} "
                               "(z, y, x) label map; the session is damaged.")
        where = f"its box {box}"
    extent = tuple(b - a for a, b in box)
    if crop.shape != extent:
        raise SessionError(f"The session's label map has shape {crop.shape} (z, y, x) but {where} spans "
                           f"{extent}; the session is inconsistent.")
    if extent == shape:
        return crop
    full = np.zeros(shape, crop.dtype)
    full[tuple(slice(a, b) for a, b in box)] = crop
    return full
