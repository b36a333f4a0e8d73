"""The box-prompt engines a user can choose (MedSAM ViT-B, LiteMedSAM) and the default one.

``BOX_ENGINES``: engine name -> :class:`BoxEngineInfo` (model-manager weights name, title,
what it is best at). On a machine without CUDA, LiteMedSAM is the default when its weights
are installed (about 16x faster encoder on a CPU at 3-5 % lower Dice); otherwise MedSAM ViT-B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BoxEngineInfo:
    weights: str  # model-manager name
    title: str
    strength: str

    @property
    def choice_text(self) -> str:
        """E.g. "MedSAM ViT-B: most accurate"."""
        return f"{self.title}: {self.strength}"


BOX_ENGINES = {
    "medsam": BoxEngineInfo("medsam_vit_b", "MedSAM ViT-B", "most accurate"),
    "litemedsam": BoxEngineInfo("litemedsam", "LiteMedSAM", "fastest"),
}


def default_box_engine(*, cuda: Callable[[], bool], installed: Callable[[str], bool]) -> str:
    """"litemedsam" when ``installed("litemedsam")`` (weights name) and not ``cuda()``, else
    "medsam" (``cuda`` is only called when LiteMedSAM is installed: it may import torch)."""
    if installed(BOX_ENGINES["litemedsam"].weights) and not cuda():
        return "litemedsam"
    return "medsam"
