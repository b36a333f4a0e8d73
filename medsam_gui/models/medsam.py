"""MedSAM inference engine (segment-anything ViT-B), reproducing MedSAM's reference inference.

Implements :class:`medsam_gui.models.engine.BoxPromptEngine`; the processing steps live in
:mod:`medsam_gui.models.medsam_transforms`.

Pipeline for one slice (H, W) uint8 (already windowed to 0..255 over the whole volume by
:func:`medsam_gui.core.intensity.volume_to_uint8`):

1. :func:`preprocess_slice`: repeat to 3 channels, ``skimage.transform.resize`` to
   1024x1024 (order=3, preserve_range=True, anti_aliasing=True), truncate to uint8, then
   min-max normalise to [0, 1] by the image's own min/max (denominator clipped at 1e-8); no
   SAM pixel mean/std. Result (1, 3, 1024, 1024) float32.
2. image encoder -> embedding (1, 256, 64, 64).
3. :func:`box_to_1024`: box (x0, y0, x1, y1) in slice pixels -> box / [W, H, W, H] * 1024.
4. prompt encoder (box only) + mask decoder with ``multimask_output=False`` and the prompt
   encoder's dense positional encoding -> low-res logits (1, 1, 256, 256).
5. :func:`postprocess_low_res_logits`: sigmoid, bilinear resize (align_corners=False) to
   (H, W), > 0.5 -> bool mask (H, W).

No Qt, no work at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .box_engine_base import BoxEngineBase, state_dict_id
from .checkpoints import load_state_dict_file
from .medsam_transforms import INPUT_SIZE, box_to_1024, postprocess_low_res_logits, preprocess_slice

MODEL_NAME = "MedSAM (SAM ViT-B)"

_KNOWN_EMBED_DIMS = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}


# ---------------------------------------------------------------- checkpoint validation

def _diagnose_sam_weights(sd: Mapping[str, Any]) -> str | None:
    """A sentence naming the model ``sd`` seems to belong to, when it is not SAM ViT-B."""
    pe = sd.get("image_encoder.patch_embed.proj.weight")
    if pe is not None and getattr(pe, "ndim", 0) == 4:
        dim = int(pe.shape[0])
        if dim != 768:
            name = _KNOWN_EMBED_DIMS.get(dim, "a SAM variant")
            depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
            return (f"this looks like SAM {name} (embed dim {dim}, {depth} encoder blocks), "
                    f"MedSAM needs ViT-B (embed dim 768, 12 blocks)")
    if any(k.startswith(("enc_blocks.", "dec_blocks.")) for k in sd):
        return "this looks like UniverSeg weights, not MedSAM/SAM ViT-B"
    if not any(k.startswith(("image_encoder.", "mask_decoder.", "prompt_encoder.")) for k in sd):
        return "these weights have none of SAM's image_encoder/prompt_encoder/mask_decoder keys"
    if not any(k.startswith("image_encoder.") for k in sd):
        return "the image encoder weights are missing (only part of SAM is in the file)"
    return None


def load_medsam_state_dict(path: str | os.PathLike) -> dict:
    """Load and strictly validate a MedSAM / SAM ViT-B weights file; returns the state dict.

    Accepts the official ``medsam_vit_b.pth`` and ``sam_vit_b_01ec64.pth`` (plain state dicts)
    and training checkpoints (``{"model": state_dict, ...}`` with ``module.`` prefixes).
    Raises CheckpointError naming what is wrong otherwise.
    """
    from .sam_loader import vit_b_state_dict_shapes

    return load_state_dict_file(
        path, expected_keys=vit_b_state_dict_shapes(), model_name=MODEL_NAME, diagnose=_diagnose_sam_weights
    )


# ---------------------------------------------------------------- engine

class MedSAMEngine(BoxEngineBase):
    """MedSAM ViT-B on one device (see :class:`~medsam_gui.models.box_engine_base.BoxEngineBase`).

    ``checkpoint``: path to the weights (validated strictly), or an already-validated state
    dict (then ``checkpoint_id`` is derived from its tensors). ``device``: "auto" | "cpu" |
    "cuda" | "mps". ``precision``: "fp32" (reference-exact) | "auto" | "bf16" (see
    :mod:`medsam_gui.models.device`). Thread-safe: encoder calls are serialised by one lock
    and decoder calls by another, so a box can be decoded (~0.1 s) while a background thread
    runs the encoder (tens of seconds on a CPU) on another slice.

    "fp32": skimage preprocessing, segment-anything's encoder and decoder, bit-exact. Other
    precisions: :class:`~medsam_gui.models.fast_encoder.FastImageEncoder` in batches with the
    preprocessing as matrix products on the device (``iter_embed_batch`` yields float16), and
    :class:`~medsam_gui.models.fast_decoder.FastDecoder`. ``stop()`` is polled before each of
    the 12 transformer blocks (both paths call ``norm1`` of each block).
    """

    name = "medsam"
    model_name = MODEL_NAME
    input_size = INPUT_SIZE
    _batch_dtype = "float16"
    _span_cuda = 4  # CUDA: 4 batches per lock hold keep the copy/compute overlap going

    def _load_state_dict(self, path: Path) -> dict:
        return load_medsam_state_dict(path)

    def _build_model(self):
        from .sam_loader import build_sam_vit_b

        return build_sam_vit_b()

    def _finish_model(self, model) -> None:
        # Non-persistent buffers (not in any checkpoint; unused by MedSAM's preprocessing).
        torch = self._torch
        model.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        model.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)

    def _stop_modules(self, model):
        return [blk.norm1 for blk in model.image_encoder.blocks]  # stop points of both encoder paths

    def _make_fast_encoder(self):
        """The FastImageEncoder for this precision (int8 quantises the encoder's Linear layers
        once, ~1-7 s on a CPU)."""
        from .fast_encoder import FastImageEncoder

        return FastImageEncoder(self.model.image_encoder, quantize=self.precision == "int8")

    def _fast_encoder_survives_cpu(self, fe) -> bool:
        # it shares the model's modules (moved with it); int8 on the CPU needs a quantised copy
        return getattr(fe, "quantize", False) == (self.precision == "int8")

    def _batched_embedder(self, batch_size: int | None = None):
        from .fast_encoder import BatchedEmbedder

        if batch_size is None:
            batch_size = 16 if self.device.type == "cuda" else 1
        return BatchedEmbedder(self._fast_encoder(), self.device, self.precision, batch_size=batch_size)

    def _embed_fast(self, slices: Sequence[np.ndarray], batch_size: int, stop) -> list:
        """``[(offset, float16 (b, 256, 64, 64) CPU)]``: BatchedEmbedder (preprocessing on the
        device; on CUDA pinned memory and copies on a side stream), the encoder lock held."""
        with self._encoder_pass(stop):
            return list(self._batched_embedder(batch_size).iter_embed(slices))

    def _preprocess(self, slice_uint8_hw: np.ndarray):
        return preprocess_slice(slice_uint8_hw)

    def _model_boxes(self, box, hw: tuple[int, int]) -> np.ndarray:
        return box_to_1024(box, hw)

    def _postprocess(self, logits, hw: tuple[int, int]) -> np.ndarray:
        return postprocess_low_res_logits(logits, hw)


_state_dict_id = state_dict_id  # the name earlier callers import
