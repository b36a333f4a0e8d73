"""The box-prompt engine protocol: what a 2D promptable model offers the volume predictor.

An engine turns (H, W) uint8 slices (already windowed over the whole volume by
``core.intensity.volume_to_uint8``) into image embeddings once, then decodes any number of
boxes against an embedding. MedSAM ViT-B (``models.medsam.MedSAMEngine``) implements it; every
engine that does serves the viewer, the napari plugin, the CLI, the API and batches through
``models.volume_predictor.VolumePredictor``.

Boxes are (x0, y0, x1, y1) in slice pixels (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import MedsamGuiError


class EmbeddingCancelled(MedsamGuiError):
    """An embedding was not computed: its wait was cancelled or the scheduler stopped."""


class EncoderInterrupted(EmbeddingCancelled):
    """An encoder pass was abandoned at a stop point because its ``stop()`` said so."""


@runtime_checkable
class BoxPromptEngine(Protocol):
    """A 2D box-prompt segmentation model with a cacheable per-slice image embedding.

    Attributes: ``name`` (short id, e.g. "medsam"), ``input_size`` (side of the square encoder
    input), ``embedding_shape`` (C, h, w) and ``embedding_dtype`` (as computed, e.g.
    "float32"), ``checkpoint_id`` (sha256 of the weights), ``precision``, ``device``,
    ``on_notice`` (callable(str) or None: told when the engine changes device or batch size
    after running out of memory).
    """

    name: str
    input_size: int
    embedding_shape: tuple[int, int, int]
    embedding_dtype: str
    checkpoint_id: str
    precision: str
    on_notice: Callable[[str], None] | None

    def cache_key(self, volume_fingerprint: str, axis: int, index: int, bounds: Sequence[float]) -> str:
        """Cache key of one slice's embedding: changes with the scan, slice, window, engine,
        weights and precision."""

    def embed(self, slices: Sequence[np.ndarray], stop: Callable[[], bool] | None = None) -> Any:
        """(H, W) uint8 slices -> embeddings (N, *embedding_shape) float32 on the CPU.

        ``stop()`` is polled at the encoder's stop points (e.g. between transformer blocks);
        when it returns True the pass is abandoned with :class:`EncoderInterrupted`."""

    def decode_logits(self, embedding: Any, box_xyxy, hw: tuple[int, int]) -> Any:
        """Low-res logits (B, 1, h', w') float32 CPU for box(es) on an (H, W) slice."""

    def decode(self, embedding: Any, box_xyxy, hw: tuple[int, int]) -> np.ndarray:
        """bool mask (H, W) for one box (x0, y0, x1, y1); (B, H, W) for B boxes."""

    def prepare_decoder(self, embedding: Any) -> bool:
        """Do the box-independent decoder work ahead of the first box; True when work was done."""
