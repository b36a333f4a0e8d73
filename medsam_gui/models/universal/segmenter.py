"""UniversalSegmenter: the CLIP-Driven Universal Model's official inference on one CT scan.

preprocess (RAS, 1.5 mm, -175..250 HU -> 0..1, foreground crop) -> sliding window (96^3,
Gaussian, only the organs asked for and those their post-processing reads) -> sigmoid > 0.5
-> official organ post-processing -> back to the scan's exact grid (nearest).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ...core.volume import Volume
from ...errors import MedsamGuiError
from ..auto_model import Structure
from .catalogue import STRUCTURES
from .network import UniversalModel, universal_model
from .postprocess import needed_classes, postprocess, to_scan_grid
from .preprocess import preprocess
from .sliding_window import sliding_window

FLOAT32_SUMS_LIMIT = 1 << 30  # bytes of float32 window sums above which they are kept in float16


class UniversalSegmenter:
    """An :class:`~medsam_gui.models.auto_model.AutoSegmenter` over a loaded Universal Model.

    ``model`` needs ``class_logits(x (1,1,96,96,96), classes) -> (1, K, 96, 96, 96)`` logits
    (a :class:`~medsam_gui.models.universal.network.UniversalModel`).
    """

    name = "universal"
    structures: tuple[Structure, ...] = STRUCTURES
    default_overlap = 0.5

    def __init__(self, model: UniversalModel, device: str | torch.device | None = None) -> None:
        self.model = model
        self.device = torch.device(device or "cpu")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, text_embedding: str | os.PathLike | None,
                        device: str | torch.device | None = None) -> "UniversalSegmenter":
        """Load the released checkpoint and text embedding (CheckpointError if wrong)."""
        return cls(universal_model(path, text_embedding, device=device), device)

    def segment(self, volume: Volume, structures: Sequence[Structure], *, modality: str | None = None,
                overlap: float | None = None,
                progress: Callable[[int, int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """structure key -> uint8 {0, 1} mask (z, y, x) on ``volume``'s exact grid.

        Raises AutoSegmentationCancelled when ``stop()`` turns true (checked between windows),
        MedsamGuiError for a non-CT modality, another model's structures or a bad overlap.
        """
        wanted = self._indices(structures)
        self._check_modality(modality or volume.modality)
        overlap = self.default_overlap if overlap is None else float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise MedsamGuiError(f"Window overlap must be at least 0 and below 1 (got {overlap}).")
        classes = needed_classes(wanted)
        prepared = preprocess(volume)
        sums_bytes = 4 * len(classes) * int(np.prod([max(n, 96) for n in prepared.image.shape]))
        accumulate = torch.float16 if sums_bytes > FLOAT32_SUMS_LIMIT else torch.float32

        def predict(x: torch.Tensor) -> torch.Tensor:
            return self.model.class_logits(x.to(self.device), classes).float().cpu()

        logits = sliding_window(prepared.image, predict, len(classes), overlap=overlap,
                                accumulate=accumulate, progress=progress, stop=stop)
        hard = {c: (torch.sigmoid(logits[i].float()) > 0.5).numpy() for i, c in enumerate(classes)}
        del logits
        post = postprocess(hard, wanted)
        by_index = {s.index: s for s in self.structures}
        return {by_index[c].key: to_scan_grid(post[c], prepared) for c in wanted}

    def _indices(self, structures: Sequence[Structure]) -> list[int]:
        known = set(self.structures)
        foreign = [s.title if isinstance(s, Structure) else repr(s) for s in structures if s not in known]
        if foreign:
            raise MedsamGuiError(
                f"The Universal Model does not segment {', '.join(foreign)}: choose structures from its "
                f"catalogue (medsam_gui.models.auto_models.catalogue('universal')).")
        if not structures:
            raise MedsamGuiError("No structure chosen: pick at least one from the Universal Model's catalogue.")
        return list(dict.fromkeys(s.index for s in structures))

    @staticmethod
    def _check_modality(modality: str) -> None:
        if str(modality).upper() not in ("CT", "UNKNOWN"):
            raise MedsamGuiError(
                f"The Universal Model segments CT only, and this scan is {modality}. Use Hermes for "
                f"MR/PET scans, or set the modality to CT if the scan is a CT.")
