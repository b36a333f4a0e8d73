"""Automatic (prompt-free) segmentation models: the shared catalogue entry and protocol.

Pinned interface (issue 15): Hermes-R (models/hermes) and the CLIP-Driven Universal Model
(models/universal) implement :class:`AutoSegmenter`; the API, CLI and batches use only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..core.volume import Volume
from ..errors import MedsamGuiError


@dataclass(frozen=True)
class Structure:
    model: str            # "hermes" | "universal"
    key: str              # catalogue name, lowercase snake_case, unique per model: "liver", "left_kidney"
    title: str            # readable: "Liver", "Left kidney"
    index: int            # official index: Universal = 0-based organ index; Hermes = task id
    modalities: tuple[str, ...]   # subset of ("CT", "MR", "PET")
    source: str           # where the name comes from, e.g. "BCV (Synapse) label 6"


class AutoSegmentationCancelled(MedsamGuiError):
    """The user stopped an automatic segmentation (raised between windows)."""


class AutoSegmenter(Protocol):
    name: str                       # "hermes" | "universal"
    structures: tuple[Structure, ...]   # the whole catalogue
    default_overlap: float          # as published (Hermes 0.5 = stride 64/128; Universal 0.5)

    def segment(self, volume: Volume, structures: Sequence[Structure], *, modality: str | None = None,
                overlap: float | None = None,
                progress: Callable[[int, int], None] | None = None,   # (windows done, total)
                stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """structure key -> uint8 {0,1} mask (z,y,x) on volume's exact grid. Raises
        AutoSegmentationCancelled when stop() turns true (checked between windows)."""
        ...
