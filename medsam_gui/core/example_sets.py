"""Example sets: a UniverSeg support set (:class:`~medsam_gui.core.support_set.SupportSet`) saved
to reuse on other scans.

An example set is one ``.npz`` file (written atomically, read with ``allow_pickle=False``):

| key | dtype / shape | meaning |
|---|---|---|
| format_version | int64 scalar | :data:`FORMAT_VERSION` (files from a newer version are refused) |
| kind | str scalar | ``"medsam-gui example set"`` |
| images | float16 (S, 128, 128) | support slices windowed as displayed, scaled to [0, 1], resized |
| masks | uint8 (S, 128, 128) | binary 0/1 masks of the label on those slices, resized |
| label_name, modality, source_scan | str scalars | what was segmented, "CT"/"MR"/"unknown", scan name |
| label_value | int64 scalar | label value in the source label map |
| window_bounds | float64 (2,) | (lo, hi) intensity bounds used for windowing |
| slice_indices | int64 (S,) | index of each support slice along ``axis`` in the source scan |
| axis | int64 scalar | slicing axis of the (z, y, x) source array (0 = axial slices) |
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import MedsamGuiError
from .support_set import SIZE, SupportSet, SupportSlice

FORMAT_VERSION = 1
KIND = "medsam-gui example set"
_REQUIRED = ("format_version", "kind", "images", "masks", "label_name", "label_value", "modality",
             "window_bounds", "source_scan", "slice_indices", "axis")


class ExampleSetError(MedsamGuiError):
    """An example set file is missing, corrupt, from a newer version or not an example set."""


def _validate(images: np.ndarray, masks: np.ndarray, indices: tuple[int, ...], bounds: tuple[float, float],
              axis: int, source: str) -> None:
    if images.ndim != 3 or tuple(images.shape[1:]) != SIZE:
        raise ExampleSetError(f"{source}: images must have shape (S, 128, 128), found {images.shape}.")
    if masks.shape != images.shape:
        raise ExampleSetError(f"{source}: masks {masks.shape} do not match images {images.shape}.")
    if images.shape[0] == 0:
        raise ExampleSetError(f"{source}: the example set has no slices.")
    if not np.issubdtype(images.dtype, np.floating):
        raise ExampleSetError(f"{source}: images must be floating point, found {images.dtype}.")
    if not np.all(np.isfinite(images)) or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ExampleSetError(f"{source}: image values must lie in [0, 1]; the file is corrupt.")
    if not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool) or \
            not np.isin(np.unique(masks), (0, 1)).all():
        raise ExampleSetError(f"{source}: masks must be binary 0/1.")
    if len(indices) != images.shape[0]:
        raise ExampleSetError(f"{source}: {len(indices)} slice indices for {images.shape[0]} slices.")
    if not bounds[1] > bounds[0]:
        raise ExampleSetError(f"{source}: window bounds {bounds} are not increasing.")
    if axis not in (0, 1, 2):
        raise ExampleSetError(f"{source}: axis must be 0, 1 or 2, found {axis}.")


def save_example_set(path: str | os.PathLike, support: SupportSet, *, overwrite: bool = True) -> Path:
    """Write ``support`` to ``path`` (.npz, compressed) atomically: a temp file then a rename.

    Images are stored as float16, masks as uint8; the window, modality and axis are the set's
    (:attr:`SupportSet.bounds` ...), the source the scan names joined. Returns the path. Raises
    :class:`ExampleSetError` if the set is empty, the folder is not writable or ``path`` exists
    and not overwrite.
    """
    path = Path(path)
    if not len(support):
        raise ExampleSetError("There is no example to save: the support set is empty.")
    if path.exists() and not overwrite:
        raise ExampleSetError(f"{path} already exists; choose another name or allow overwriting.")
    if not path.parent.is_dir():
        raise ExampleSetError(f"Cannot save the example set: folder {path.parent} does not exist.")
    arrays = {
        "format_version": np.int64(FORMAT_VERSION),
        "kind": np.str_(KIND),
        "images": np.clip(support.images, 0, 1).astype(np.float16),
        "masks": support.masks,
        "label_name": np.str_(support.label_name),
        "label_value": np.int64(support.label_value),
        "modality": np.str_(support.modality),
        "window_bounds": np.asarray(support.bounds, dtype=np.float64),
        "source_scan": np.str_(support.source),
        "slice_indices": np.asarray(support.indices, dtype=np.int64),
        "axis": np.int64(support.axis),
    }
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ExampleSetError(f"Cannot save the example set to {path}: {exc.strerror or exc}.") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def load_example_set(path: str | os.PathLike) -> SupportSet:
    """Read and validate an example set written by :func:`save_example_set`.

    Every example gets origin "example set", the file's source scan, modality, window, axis and
    label value; its image (float16 on disk) comes back as float32 in [0, 1]. Raises
    :class:`ExampleSetError` for a missing, truncated, foreign, pickled or newer-version file.
    """
    path = Path(path)
    if not path.is_file():
        raise ExampleSetError(f"Example set not found: {path}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ExampleSetError(f"{path} is not an example set (.npz) file.")
            missing = [k for k in _REQUIRED if k not in data.files]
            if "kind" in data.files and str(data["kind"]) != KIND or missing and len(missing) > 3:
                raise ExampleSetError(f"{path} is not a medsam-gui example set.")
            if missing:
                raise ExampleSetError(f"{path} is not a complete example set: missing {', '.join(missing)}.")
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise ExampleSetError(f"{path} was written by a newer medsam-gui (example set format "
                                      f"{version}, this version reads up to {FORMAT_VERSION}); update medsam-gui.")
            if version < 1:
                raise ExampleSetError(f"{path}: invalid example set format version {version}.")
            fields = {k: data[k] for k in _REQUIRED}
    except ExampleSetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        raise ExampleSetError(f"Cannot read example set {path}: the file is corrupt, truncated or not an "
                              f"example set ({type(exc).__name__}: {exc}).") from None
    bounds = np.asarray(fields["window_bounds"], dtype=float).ravel()
    if bounds.shape != (2,):
        raise ExampleSetError(f"{path}: window_bounds must hold 2 values.")
    masks = fields["masks"]
    if masks.dtype != np.uint8:
        raise ExampleSetError(f"{path}: masks must be uint8, found {masks.dtype}.")
    try:
        images, indices = fields["images"].astype(np.float32), np.asarray(fields["slice_indices"]).ravel()
        window, axis, value = (float(bounds[0]), float(bounds[1])), int(fields["axis"]), int(fields["label_value"])
        _validate(images, masks, tuple(indices), window, axis, str(path))
        meta = dict(source=str(fields["source_scan"]) or path.name, modality=str(fields["modality"]), bounds=window)
        items = [SupportSlice(images[k], masks[k], int(indices[k]), axis, value, "example set", **meta)
                 for k in range(len(images))]
    except (TypeError, ValueError) as exc:
        raise ExampleSetError(f"{path}: invalid example set ({exc}).") from None
    return SupportSet(items, str(fields["label_name"]), value)
