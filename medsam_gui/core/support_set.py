"""UniverSeg support sets: the labeled example slices the in-context model learns from (numpy only).

A :class:`SupportSlice` is one model-ready example: ``image`` float32 (128, 128) in [0, 1] (the
slice windowed with the display bounds (lo, hi), scaled to [0, 1] and resized bilinearly with
anti-aliasing, as ``torch.nn.functional.interpolate(..., "bilinear", antialias=True)``) and
``mask`` bool (128, 128) (resized without blurring: along an axis that shrinks an output pixel is
foreground when more than half of its area is covered, along one that grows nearest neighbour).
Slices are resized to 128 x 128 directly (no padding): all slices of one scan share a shape, so
support and targets are distorted alike.

A :class:`SupportSet` is the ordered list of examples of one label. It is the one shape used by
the UniverSeg panel, example-set files (:mod:`medsam_gui.core.example_sets`), sessions (as
:meth:`SupportSet.to_arrays` in ``Session.support_sets``), the in-context runner
(:mod:`medsam_gui.models.incontext`) and ``medsam-gui universeg``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import MedsamGuiError
from .orientation import plane

SIZE = (128, 128)
# where an example comes from: the labels (follows them), added by hand, a frozen copy, a file
ORIGINS = ("labels", "added", "pinned", "example set")


class SupportSetError(MedsamGuiError):
    """A support set cannot be built as asked (empty, bad shapes, label not drawn ...)."""


# ----------------------------------------------------------------------------- preprocessing


def window_unit(images: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """Clip to bounds (lo, hi) and scale to [0, 1] as float32; bounds None: clip to [0, 1] only.
    NaN counts as ``lo``."""
    data = np.asarray(images, dtype=np.float32)
    if bounds is None:
        return np.clip(np.nan_to_num(data, nan=0.0), 0.0, 1.0)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise SupportSetError(f"window bounds must be increasing, got ({lo}, {hi})")
    out = (np.nan_to_num(data, nan=lo) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


@lru_cache(maxsize=32)
def _bilinear_aa_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of torch's anti-aliased bilinear resize (align_corners=False):
    a triangle filter widened by the scale when shrinking, renormalised at the borders."""
    scale = n_in / n_out
    support, inv = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        row = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * inv))
        w[i, lo:hi] = row / row.sum()
    w = w.astype(np.float32)
    w.setflags(write=False)  # cached
    return w


@lru_cache(maxsize=32)
def _mask_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: area average when shrinking (torch "area"), nearest-exact when growing."""
    w = np.zeros((n_out, n_in), np.float32)
    if n_out < n_in:
        for i in range(n_out):
            a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            w[i, a:b] = 1.0 / (b - a)
    else:
        src = np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)
        w[np.arange(n_out), src] = 1.0
    w.setflags(write=False)  # cached
    return w


def resize_images(images: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """(..., h, w) float -> (..., *size) float32, bilinear (align_corners=False, anti-aliased)."""
    x = np.asarray(images, dtype=np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    return _bilinear_aa_matrix(h, size[0]) @ x @ _bilinear_aa_matrix(w, size[1]).T


def resize_masks(masks: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """(..., h, w) binary (nonzero = foreground) -> (..., *size) uint8 0/1 without blurring:
    per axis, area average > 0.5 where the axis shrinks, nearest neighbour where it grows."""
    x = (np.asarray(masks) > 0).astype(np.float32)
    h, w = x.shape[-2:]
    if size[0] != h:
        x = _mask_matrix(h, size[0]) @ x
    if size[1] != w:
        x = x @ _mask_matrix(w, size[1]).T
    return (x > 0.5).astype(np.uint8)


def labeled_slices(labels: np.ndarray, label_value: int, axis: int = 0) -> list[int]:
    """Indices along ``axis`` of the slices of ``labels`` (z, y, x) where ``label_value`` is drawn."""
    other = tuple(a for a in range(np.ndim(labels)) if a != axis)
    return np.flatnonzero(np.any(np.asarray(labels) == label_value, axis=other)).tolist()


# ----------------------------------------------------------------------------- the types


@dataclass(eq=False)
class SupportSlice:
    """One example: ``image`` float32 (128, 128) in [0, 1], ``mask`` bool (128, 128).

    ``index``: slice index along ``axis`` of the (z, y, x) array it was taken from (display order
    in the GUI); ``label``: the label value the mask was drawn with; ``origin``: one of
    :data:`ORIGINS`; ``source``: scan name; ``bounds``: the window (lo, hi) the image was taken with.
    """

    image: np.ndarray
    mask: np.ndarray
    index: int
    axis: int = 0
    label: int = 1
    origin: str = "labels"
    source: str = ""
    modality: str = "unknown"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.mask = np.asarray(self.mask) > 0
        if self.image.shape != SIZE or self.mask.shape != SIZE:
            raise SupportSetError(f"a support slice must be {SIZE[0]} x {SIZE[1]}, got image "
                                  f"{self.image.shape} and mask {self.mask.shape}")
        if self.origin not in ORIGINS:
            raise SupportSetError(f"unknown support slice origin {self.origin!r}")
        self.index, self.axis, self.label = int(self.index), int(self.axis), int(self.label)
        self.bounds = (float(self.bounds[0]), float(self.bounds[1]))

    @classmethod
    def from_slice(cls, image: np.ndarray, mask: np.ndarray, bounds: tuple[float, float] | None, *,
                   index: int, **fields) -> "SupportSlice":
        """From a raw 2D slice (rows, cols) windowed with ``bounds`` (None: already in [0, 1])
        and its mask (rows, cols, nonzero = foreground); ``fields``: the other attributes."""
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 2 or image.shape != mask.shape:
            raise SupportSetError(f"support slice {image.shape} and mask {mask.shape} must both be (rows, cols)")
        return cls(resize_images(window_unit(image, bounds)), resize_masks(mask), index,
                   bounds=(0.0, 1.0) if bounds is None else bounds, **fields)

    def with_origin(self, origin: str) -> "SupportSlice":
        """The same example (arrays shared) with another origin."""
        return replace(self, origin=origin)


@dataclass(eq=False)
class SupportSet:
    """The ordered examples of one label (``label_value``, named ``label_name``)."""

    slices: list[SupportSlice] = field(default_factory=list)
    label_name: str = ""
    label_value: int = 1

    def __post_init__(self) -> None:
        self.slices = list(self.slices)
        self.label_value = int(self.label_value)

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[SupportSlice]:
        return iter(self.slices)

    def __getitem__(self, position: int) -> SupportSlice:
        return self.slices[position]

    # -- stacked views ------------------------------------------------------------------
    @property
    def images(self) -> np.ndarray:
        """float32 (S, 128, 128) in [0, 1]."""
        return np.stack([s.image for s in self.slices]) if self.slices else np.zeros((0, *SIZE), np.float32)

    @property
    def masks(self) -> np.ndarray:
        """uint8 (S, 128, 128) 0/1."""
        return (np.stack([s.mask for s in self.slices]) if self.slices else np.zeros((0, *SIZE), bool)).astype(np.uint8)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.slices)

    @property
    def axis(self) -> int:
        """The axis of the first example (0 when empty)."""
        return self.slices[0].axis if self.slices else 0

    @property
    def bounds(self) -> tuple[float, float]:
        """The window of the first example ((0, 1) when empty)."""
        return self.slices[0].bounds if self.slices else (0.0, 1.0)

    @property
    def modality(self) -> str:
        """The examples' common modality, else "unknown"."""
        mods = {s.modality for s in self.slices}
        return mods.pop() if len(mods) == 1 else "unknown"

    @property
    def source(self) -> str:
        """The scan names, each once, comma-separated."""
        return ", ".join(dict.fromkeys(s.source for s in self.slices if s.source))

    def subset(self, positions: Sequence[int]) -> "SupportSet":
        """The examples at ``positions`` (list order), same label."""
        return SupportSet([self.slices[p] for p in positions], self.label_name, self.label_value)

    def require_examples(self) -> None:
        """SupportSetError when the set is empty."""
        if not self.slices:
            raise SupportSetError("The support set is empty: draw the label on a few slices (or load an "
                                  "example set) first.")

    # -- plain arrays (sessions) --------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric arrays: ``images`` float32 (S,128,128), ``labels`` uint8 (S,128,128) 0/1,
        ``indices`` / ``axes`` / ``label_values`` int64 (S,), ``bounds`` float64 (S, 2)."""
        return {
            "images": self.images,
            "labels": self.masks,
            "indices": np.asarray(self.indices, dtype=np.int64),
            "axes": np.asarray([s.axis for s in self.slices], dtype=np.int64),
            "label_values": np.asarray([s.label for s in self.slices], dtype=np.int64),
            "bounds": np.asarray([s.bounds for s in self.slices], dtype=np.float64).reshape(-1, 2),
        }

    def to_meta(self) -> dict[str, Any]:
        """The JSON-ready rest: label name/value and each example's source, origin, modality."""
        return {"label_name": self.label_name, "label_value": self.label_value,
                "sources": [s.source for s in self.slices], "origins": [s.origin for s in self.slices],
                "modalities": [s.modality for s in self.slices]}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None, *,
                    origin: str = "pinned") -> "SupportSet":
        """Inverse of :meth:`to_arrays` (+ :meth:`to_meta`). Only ``images`` and ``labels`` are
        required; missing per-example fields default to position, axis 0, the set's label,
        window (0, 1), ``origin``, no source, unknown modality."""
        meta = dict(meta or {})
        images = np.asarray(arrays["images"], dtype=np.float32)
        masks = np.asarray(arrays["labels"])
        if images.ndim != 3 or masks.shape != images.shape:
            raise SupportSetError(f"support images {images.shape} and labels {masks.shape} must both be (S, 128, 128)")
        n = len(images)
        value = int(meta.get("label_value", 1))

        def per_item(key: str, default) -> list:
            vals = arrays.get(key) if key in arrays else meta.get(key)
            vals = [default] * n if vals is None else list(np.asarray(vals).reshape(n, -1)
                                                           if key == "bounds" else vals)
            if len(vals) != n:
                raise SupportSetError(f"support set: {len(vals)} {key} for {n} examples")
            return vals

        idx, axes = per_item("indices", None), per_item("axes", 0)
        labels, bounds = per_item("label_values", value), per_item("bounds", (0.0, 1.0))
        srcs, origins, mods = per_item("sources", ""), per_item("origins", origin), per_item("modalities", "unknown")
        items = [SupportSlice(images[k], masks[k], k if idx[k] is None else int(idx[k]), int(axes[k]), int(labels[k]),
                              str(origins[k]), str(srcs[k]), str(mods[k]), tuple(bounds[k]))
                 for k in range(n)]
        return cls(items, str(meta.get("label_name", "")), value)

    # -- from a scan ----------------------------------------------------------------------
    @classmethod
    def from_partial_labels(cls, volume: np.ndarray, labels: np.ndarray, label: int, axis: int = 0, *,
                            bounds: tuple[float, float] | None = None, slices: Sequence[int] | None = None,
                            origin: str = "labels", source: str = "", modality: str = "unknown",
                            label_name: str = "") -> "SupportSet":
        """The examples of ``label`` in a partial label map.

        ``volume``: (z, y, x) raw intensities windowed with ``bounds`` (display (lo, hi)), or
        already in [0, 1] (float) with ``bounds=None``; a uint8 volume uses bounds (0, 255).
        ``labels``: (z, y, x) ints, same shape. ``slices``: indices along ``axis`` to take
        (default: every slice where ``label`` is drawn; a listed slice without it is a negative
        example). Raises SupportSetError when the label is drawn nowhere.
        """
        volume, labels = np.asarray(volume), np.asarray(labels)
        if volume.ndim != 3 or labels.shape != volume.shape:
            raise SupportSetError(f"scan {volume.shape} and label map {labels.shape} must be the same 3D shape")
        if bounds is None and volume.dtype == np.uint8:
            bounds = (0.0, 255.0)
        if slices is None:
            slices = labeled_slices(labels, label, axis)
            if not slices:
                raise SupportSetError(f"label {label} is not drawn on any slice: label it on a few slices "
                                      "first (or use an example set).")
        items = [SupportSlice.from_slice(plane(volume, i, axis), plane(labels, i, axis) == label, bounds,
                                         index=i, axis=axis, label=label, origin=origin, source=source,
                                         modality=modality) for i in slices]
        return cls(items, label_name, label)

    @classmethod
    def from_slices(cls, images: np.ndarray, masks: np.ndarray, bounds: tuple[float, float] | None, *,
                    indices: Sequence[int] = (), axis: int = 0, label: int = 1, origin: str = "labels",
                    source: str = "", modality: str = "unknown", label_name: str = "") -> "SupportSet":
        """From raw 2D slices (S, rows, cols) windowed with ``bounds`` (None: already in [0, 1])
        and their masks (S, rows, cols, nonzero = foreground); ``indices`` default 0..S-1."""
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim == 2:
            images, masks = images[None], masks[None]
        if images.ndim != 3 or images.shape != masks.shape:
            raise SupportSetError(f"support slices {images.shape} and masks {masks.shape} must both be (S, rows, cols)")
        idx = list(indices) or list(range(len(images)))
        items = [SupportSlice.from_slice(images[k], masks[k], bounds, index=idx[k], axis=axis, label=label,
                                         origin=origin, source=source, modality=modality)
                 for k in range(len(images))]
        return cls(items, label_name, label)


# ----------------------------------------------------------------------------- thumbnails


def thumbnail(image: np.ndarray, mask: np.ndarray, color=(1.0, 0.4, 0.1), size: int = 48) -> np.ndarray:
    """RGB uint8 (size, size, 3): the grey ``image`` (float [0, 1], (rows, cols)) with ``mask``
    as a translucent overlay and a solid outline in ``color`` (r, g, b floats 0..1). Pixels are
    picked, not averaged (output pixel k samples input k * rows // size)."""
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask) > 0
    h, w = img.shape
    ys = np.arange(size) * h // size
    xs = np.arange(size) * w // size
    img, m = img[np.ix_(ys, xs)], m[np.ix_(ys, xs)]
    rgb = np.repeat(np.clip(img, 0, 1)[..., None] * 255.0, 3, axis=2)
    col = np.asarray(color[:3], dtype=np.float32) * 255.0
    rgb[m] = 0.55 * rgb[m] + 0.45 * col
    pad = np.pad(m, 1, constant_values=False)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    rgb[m & ~interior] = col
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
