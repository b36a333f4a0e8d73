"""The interface of the automatic segmentation models (issue 15): Hermes and the CLIP-Driven
Universal Model name the structures they segment; the user picks them from one catalogue.

- :class:`Structure`: one entry of a model's catalogue (key, readable title, official index,
  modalities, where the name comes from).
- :class:`AutoSegmenter`: a loaded model. ``segment(volume, structures, ...)`` returns one
  uint8 {0, 1} mask (z, y, x) per structure key, on the volume's exact grid; it reports
  ``progress(windows done, total)`` and checks ``stop()`` between sliding windows, raising
  :class:`AutoSegmentationCancelled` when it turns true.

The catalogues and loaders are reached through :mod:`medsam_gui.models.auto_models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..core.volume import Volume
from ..errors import MedsamGuiError

MODALITIES = ("CT", "MR", "PET")


@dataclass(frozen=True)
class Structure:
    """One structure a model segments.

    ``model``: "hermes" | "universal"; ``key``: catalogue name, lowercase snake_case, unique per
    model ("left_kidney"); ``title``: readable ("Left kidney"); ``index``: the official index
    (Universal Model: 0-based organ index; Hermes: task id); ``modalities``: subset of
    ("CT", "MR", "PET"); ``source``: where the name comes from ("BCV (Synapse) label 6")."""

    model: str
    key: str
    title: str
    index: int
    modalities: tuple[str, ...]
    source: str


class AutoSegmentationCancelled(MedsamGuiError):
    """The user stopped an automatic segmentation (between two sliding windows)."""


class AutoSegmenter(Protocol):
    """A loaded automatic segmentation model (see the module docstring)."""

    name: str  # "hermes" | "universal"
    structures: tuple[Structure, ...]  # the whole catalogue
    default_overlap: float  # window overlap as published (Hermes 0.5 = stride 64/128; Universal 0.5)

    def segment(self, volume: Volume, structures: Sequence[Structure], *, modality: str | None = None,
                overlap: float | None = None,
                progress: Callable[[int, int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """structure key -> uint8 {0,1} mask (z, y, x) on ``volume``'s exact grid. Raises
        AutoSegmentationCancelled when ``stop()`` turns true (checked between windows)."""
        ...
