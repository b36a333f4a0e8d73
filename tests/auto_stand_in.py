"""A stand-in AutoSegmenter for the auto-segmentation API, CLI and GUI tests (the real Hermes and
Universal networks cost tens of seconds per window on this CPU).

It thresholds the scan's intensities in slabs of ``window`` slices along z that overlap like
sliding windows (``overlap``), so it reports windows and honours ``stop()`` like the real
models. Its catalogue (:func:`structures`) has four structures of different sizes, one inside
another (``dense_bone`` inside ``bone``), to test "the smaller wins".

``spec(name)`` is an AutoModelSpec for ``auto_models.registered``: catalogue and loader are the
stand-in's, weights names the real model manager's ("hermes_r", "universal_model" + text
embedding), so file resolution runs as in the app.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from medsam_gui.models.auto_model import AutoSegmentationCancelled, Structure
from medsam_gui.models.auto_models import AutoModelSpec

# key -> (title, index, modalities, lo, hi): voxels with lo <= value < hi
RULES = {
    "body": ("Body", 10, ("CT", "MR"), -500.0, np.inf),
    "soft_tissue": ("Soft tissue", 11, ("CT",), -100.0, 100.0),
    "bone": ("Bone", 12, ("CT",), 200.0, np.inf),
    "dense_bone": ("Dense bone", 13, ("CT",), 400.0, np.inf),
}


def structures(model: str) -> tuple[Structure, ...]:
    return tuple(Structure(model, key, title, index, mods, f"stand-in: {lo:g} <= value < {hi:g}")
                 for key, (title, index, mods, lo, hi) in RULES.items())


class StandInSegmenter:
    """AutoSegmenter by thresholds (see the module docstring). ``calls`` records each segment()
    call; ``gate`` (a threading.Event), when given, must be set before each window runs."""

    default_overlap = 0.5

    def __init__(self, name: str = "hermes", *, window: int = 8, checkpoint=None, text_embedding=None,
                 gate: threading.Event | None = None) -> None:
        self.name = name
        self.structures = structures(name)
        self.window = window
        self.checkpoint = checkpoint
        self.text_embedding = text_embedding
        self.gate = gate
        self.calls: list[dict] = []

    def window_starts(self, nz: int, overlap: float) -> list[int]:
        w = min(self.window, nz)
        stride = max(1, int(round(w * (1.0 - overlap))))
        starts = list(range(0, nz - w + 1, stride))
        if starts[-1] != nz - w:
            starts.append(nz - w)
        return starts

    def segment(self, volume, chosen, *, modality=None, overlap=None, progress=None, stop=None):
        overlap = self.default_overlap if overlap is None else float(overlap)
        self.calls.append({"keys": [s.key for s in chosen], "modality": modality, "overlap": overlap})
        arr = np.asarray(volume.array, dtype=np.float32)
        starts = self.window_starts(arr.shape[0], overlap)
        w = min(self.window, arr.shape[0])
        out = {s.key: np.zeros(arr.shape, np.uint8) for s in chosen}
        for i, z in enumerate(starts):
            if self.gate is not None:
                self.gate.wait(30)
            if stop is not None and stop():
                raise AutoSegmentationCancelled(f"{self.name} stopped after {i} of {len(starts)} windows.")
            slab = arr[z:z + w]
            for s in chosen:
                _, _, _, lo, hi = RULES[s.key]
                out[s.key][z:z + w] |= ((slab >= lo) & (slab < hi)).astype(np.uint8)
            if progress is not None:
                progress(i + 1, len(starts))
        return out


def spec(name: str, *, window: int = 8, made: list | None = None) -> AutoModelSpec:
    """The stand-in under ``name`` ("hermes" or "universal"); each segmenter it loads is
    appended to ``made``."""
    def load(checkpoint: Path, text_embedding, device):
        seg = StandInSegmenter(name, window=window, checkpoint=checkpoint, text_embedding=text_embedding)
        if made is not None:
            made.append(seg)
        return seg

    text = "universal_text_embedding" if name == "universal" else None
    weights = "universal_model" if name == "universal" else "hermes_r"
    return AutoModelSpec(name, f"stand-in {name}", weights, text, 0.5, lambda: structures(name), load)
