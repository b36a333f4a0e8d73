"""Example sets: a saved UniverSeg support set (images + masks) to reuse on other scans.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MedsamGuiError

FORMAT_VERSION = 1
KIND = "medsam-gui example set"
SIZE = (128, 128)
_REQUIRED = ("format_version", "kind", "images", "masks", "label_name", "label_value", "modality",
             "window_bounds", "source_scan", "slice_indices", "axis")


class ExampleSetError(MedsamGuiError):
    """An example set file is missing, corrupt, from a newer version or not an example set."""


@dataclass(eq=False)
class ExampleSet:
    """A support set: ``images`` float (S,128,128) in [0,1], ``masks`` uint8 (S,128,128) 0/1."""

    images: np.ndarray
    masks: np.ndarray
    label_name: str = ""
    label_value: int = 1
    modality: str = "unknown"
    window_bounds: tuple[float, float] = (0.0, 1.0)
    source_scan: str = ""
    slice_indices: tuple[int, ...] = field(default_factory=tuple)
    axis: int = 0

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.masks = np.asarray(self.masks)
        if not self.slice_indices:
            self.slice_indices = tuple(range(len(self.images)))
        self.slice_indices = tuple(int(i) for i in self.slice_indices)
        self.window_bounds = (float(self.window_bounds[0]), float(self.window_bounds[1]))
        _validate(self, "example set")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _validate(es: ExampleSet, source: str) -> None:
    imgs, masks = es.images, es.masks
    if imgs.ndim != 3 or tuple(imgs.shape[1:]) != SIZE:
        raise ExampleSetError(f"{source}: images must have shape (S, 128, 128), found {imgs.shape}.")
    if masks.shape != imgs.shape:
        raise ExampleSetError(f"{source}: masks {masks.shape} do not match images {imgs.shape}.")
    if imgs.shape[0] == 0:
        raise ExampleSetError(f"{source}: the example set has no slices.")
    if not np.issubdtype(imgs.dtype, np.floating):
        raise ExampleSetError(f"{source}: images must be floating point, found {imgs.dtype}.")
    if not np.all(np.isfinite(imgs)) or imgs.min() < -1e-3 or imgs.max() > 1 + 1e-3:
        raise ExampleSetError(f"{source}: image values must lie in [0, 1]; the file is corrupt.")
    if not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool) or \
            not np.isin(np.unique(masks), (0, 1)).all():
        raise ExampleSetError(f"{source}: masks must be binary 0/1.")
    if len(es.slice_indices) != imgs.shape[0]:
        raise ExampleSetError(f"{source}: {len(es.slice_indices)} slice indices for {imgs.shape[0]} slices.")
    if not es.window_bounds[1] > es.window_bounds[0]:
        raise ExampleSetError(f"{source}: window bounds {es.window_bounds} are not increasing.")
    if es.axis not in (0, 1, 2):
        raise ExampleSetError(f"{source}: axis must be 0, 1 or 2, found {es.axis}.")


def save_example_set(path: str | os.PathLike, es: ExampleSet, *, overwrite: bool = True) -> Path:
    """Write ``es`` to ``path`` (.npz, compressed) atomically: a temp file then a rename.

    Images are stored as float16, masks as uint8. Returns the path. Raises
    :class:`ExampleSetError` if the folder is not writable or ``path`` exists and not overwrite.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExampleSetError(f"{path} already exists; choose another name or allow overwriting.")
    if not path.parent.is_dir():
        raise ExampleSetError(f"Cannot save the example set: folder {path.parent} does not exist.")
    arrays = {
        "format_version": np.int64(FORMAT_VERSION),
        "kind": np.str_(KIND),
        "images": np.clip(es.images, 0, 1).astype(np.float16),
        "masks": (np.asarray(es.masks) > 0).astype(np.uint8),
        "label_name": np.str_(es.label_name),
        "label_value": np.int64(es.label_value),
        "modality": np.str_(es.modality),
        "window_bounds": np.asarray(es.window_bounds, dtype=np.float64),
        "source_scan": np.str_(es.source_scan),
        "slice_indices": np.asarray(es.slice_indices, dtype=np.int64),
        "axis": np.int64(es.axis),
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


def load_example_set(path: str | os.PathLike) -> ExampleSet:
    """Read and validate an example set written by :func:`save_example_set`.

    Images come back as float32 (S,128,128) in [0,1], masks as uint8 0/1. Raises
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
        return ExampleSet(
            images=fields["images"].astype(np.float32),
            masks=masks,
            label_name=str(fields["label_name"]),
            label_value=int(fields["label_value"]),
            modality=str(fields["modality"]),
            window_bounds=(float(bounds[0]), float(bounds[1])),
            source_scan=str(fields["source_scan"]),
            slice_indices=tuple(int(i) for i in np.asarray(fields["slice_indices"]).ravel()),
            axis=int(fields["axis"]),
        )
    except ExampleSetError as exc:
        raise ExampleSetError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ExampleSetError(f"{path}: invalid example set ({exc}).") from None
