"""Hermes-R as an :class:`~medsam_gui.models.auto_model.AutoSegmenter`.

One ``segment`` call: prepare the scan as the official pipeline does (:mod:`.preprocess`), run
the sliding window (:mod:`.sliding_window`) with the requested task ids plus one null token (as
the official evaluation does; every task's output depends on the whole token list, so the same
structure can differ slightly with other companions), threshold at 0.5, drop the padding, and
map each mask back onto the scan's own grid: nearest neighbour from the 1.5 mm grid at each
source voxel's physical point, with the redirect to the identity direction undone
(:func:`.preprocess.to_source_grid`).

Modality prompt (``mod_idx``): "CT" 0, "PET" 1, "T1" 2, "T2" 3, "CINE" (cine MR) 4, and plain
"MR" -1 = an MR of unknown sequence (the prior the model learned from AMOS MR, which the
official training also fed as -1). Without an explicit choice the scan's own modality is used
("CT" or "MR"); an "unknown" scan takes the modality its requested structures share (e.g. PET
for the AutoPET lesion). Intensities: CT is clipped to [-991, 500] HU, everything else to its own
2nd..98th percentiles.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from ...core.volume import Volume
from ...errors import MedsamGuiError
from ..auto_model import AutoSegmentationCancelled, Structure
from ..device import pick_device
from .catalogue import STRUCTURES
from .network import NULL_TASK, HermesUNet, hermes_r
from .preprocess import WINDOW, prepare, to_source_grid
from .sliding_window import WindowsStopped, sliding_window

MODALITY_IDS = {"CT": 0, "PET": 1, "T1": 2, "T2": 3, "CINE": 4, "MR": -1}
DEFAULT_OVERLAP = 0.5


def modality_id(modality: str) -> int:
    """The official modality index of "CT", "PET", "MR" (unknown sequence), "T1", "T2" or "CINE"."""
    key = modality.strip().upper()
    if key not in MODALITY_IDS:
        raise MedsamGuiError(f"Hermes-R does not know the modality {modality!r}; choose one of "
                             f"{', '.join(MODALITY_IDS)} (MR = an MR of unknown sequence).")
    return MODALITY_IDS[key]


class HermesSegmenter:
    """Hermes-R on one device. ``network``: a :class:`HermesUNet` with weights loaded;
    ``window``: the sliding-window and padding size (128 as published)."""

    name = "hermes"
    structures: tuple[Structure, ...] = STRUCTURES
    default_overlap = DEFAULT_OVERLAP

    def __init__(self, network: HermesUNet, *, device: str | None = None, window: int = WINDOW) -> None:
        self.device = pick_device(device or "auto")
        self.network = network.to(self.device).eval()
        self.window = window

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | None = None) -> "HermesSegmenter":
        """Hermes-R from the official checkpoint (EMA weights, strict; CheckpointError otherwise)."""
        return cls(hermes_r(path), device=device)

    def _modality(self, volume: Volume, structures: Sequence[Structure], modality: str | None) -> str:
        if modality:
            return modality.strip().upper()
        if volume.modality in ("CT", "MR"):
            return volume.modality
        shared = set.intersection(*(set(s.modalities) for s in structures))
        if len(shared) == 1:
            return shared.pop()
        raise MedsamGuiError("The scan's modality is unknown: choose CT, MR or PET (or T1, T2, CINE) "
                             "for Hermes-R.")

    def _task_ids(self, structures: Sequence[Structure]) -> list[int]:
        if not structures:
            raise MedsamGuiError("No structures were chosen: pick at least one Hermes-R structure.")
        foreign = [s.key for s in structures if s.model != self.name]
        if foreign:
            raise MedsamGuiError(f"These structures belong to another model, not Hermes-R: {', '.join(foreign)}.")
        ids = [s.index for s in structures]
        if len(set(ids)) != len(ids):
            raise MedsamGuiError("A structure was requested twice; list each Hermes-R structure once.")
        return ids

    def segment(self, volume: Volume, structures: Sequence[Structure], *, modality: str | None = None,
                overlap: float | None = None, progress: Callable[[int, int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """structure key -> uint8 {0,1} mask (z, y, x) on ``volume``'s exact grid.

        ``progress(done, total)`` counts network windows; ``stop()`` is polled between windows
        (AutoSegmentationCancelled). ``overlap`` defaults to the published 0.5 (stride 64)."""
        ids = self._task_ids(structures)
        chosen = self._modality(volume, structures, modality)
        mod = torch.tensor([[modality_id(chosen)]], device=self.device)
        tgt = torch.tensor([ids + [NULL_TASK]], device=self.device)
        overlap = self.default_overlap if overlap is None else float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise MedsamGuiError(f"The window overlap must lie in [0, 1) (published: 0.5), got {overlap}.")
        prepared = prepare(volume, chosen, self.window)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self.network(x.to(self.device), tgt, mod)[0]

        try:
            centred = sliding_window(forward, prepared.volume, len(ids) + 1, window=self.window,
                                     overlap=overlap,
                                     progress=progress, stop=stop)
        except WindowsStopped:
            raise AutoSegmentationCancelled("Hermes-R segmentation was stopped; nothing was written.") from None
        inner = tuple(slice(before, n - after) for (before, after), n in zip(prepared.pad, prepared.volume.shape))
        return {s.key: to_source_grid(centred[(c, *inner)] >= 0, prepared, volume)
                for c, s in enumerate(structures)}
