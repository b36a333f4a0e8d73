"""LiteMedSAM inference engine (TinyViT encoder + segment-anything prompt encoder / mask decoder).

Implements :class:`medsam_gui.models.engine.BoxPromptEngine` like
:class:`~medsam_gui.models.medsam.MedSAMEngine`, reproducing the official LiteMedSAM 2D
inference (MedSAM repository, branch LiteMedSAM): see
:mod:`medsam_gui.models.litemedsam_transforms` for the pre/post-processing and
:mod:`medsam_gui.models.tiny_vit` for the encoder.

Pipeline for one (H, W) uint8 slice (windowed over the whole volume by ``core.intensity``):
resize (INTER_AREA) so the longest side is 256, min-max to [0, 1], zero-pad to 256x256 ->
(1, 3, 256, 256) -> TinyViT -> embedding (1, 256, 64, 64); box (x0, y0, x1, y1) in slice
pixels -> ``int(v * 256 / max(H, W))`` -> prompt encoder + mask decoder
(``multimask_output=False``) -> logits (B, 1, 256, 256) -> crop to the resized size, bilinear
to (H, W), sigmoid > 0.5.

Precisions: "fp32" is the official computation (the reference modules, one slice at a time,
bit-exact with the golden embeddings); every other precision runs the encoder's fast path
(:class:`~medsam_gui.models.tiny_vit_fast.FastTinyViT`: folded batch norms, channels-last,
batched slices):

- "fast": float32, within ~1e-5 of "fp32";
- "bf16": on a GPU under bf16 autocast; on the CPU with bfloat16 weights and activations through
  oneDNN's bf16 kernels (~1.8x faster where the CPU has bf16 units; embeddings within ~1.5 %,
  masks at Dice >= 0.99 against "fp32");
- "auto": "bf16" on CUDA and on CPUs with bf16 units
  (:func:`~medsam_gui.models.device.cpu_has_native_bf16`), else "fast" on the CPU;
- "int8" has no LiteMedSAM kernels and means "fast" on the CPU.

The mask decoder is segment-anything's for "fp32" and MedSAM's
:class:`~medsam_gui.models.fast_decoder.FastDecoder` (same logits within ~3e-6, box-independent
work cached per embedding) for the other precisions, in float32 on the CPU. No Qt, no work at
import time.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .box_engine_base import BoxEngineBase
from .checkpoints import load_state_dict_file, meta_state_dict_shapes
from .cpu_worker import cpu_worker
from .device import autocast, cpu_has_native_bf16, resolve_precision
from .litemedsam_transforms import INPUT_SIZE, box_to_256, postprocess_logits, preprocess_batch_256, preprocess_slice_256

MODEL_NAME = "LiteMedSAM"
FILENAME = "lite_medsam.pth"
_SAM_DIMS = {768: "SAM ViT-B (MedSAM or Segment Anything)", 1024: "SAM ViT-L", 1280: "SAM ViT-H"}


def build_litemedsam():
    """A freshly initialised LiteMedSAM (``nn.Module`` with ``image_encoder`` (TinyViT),
    ``prompt_encoder`` and ``mask_decoder``), eval mode, on the current default device.

    Prompt encoder: embed 256, image embedding 64x64, input 256x256, mask_in_chans 16; mask
    decoder: TwoWayTransformer (depth 2, dim 256, mlp 2048, 8 heads), 3 multimask outputs, IoU
    head depth 3 / hidden 256 (segment-anything's classes)."""
    from torch import nn

    from .sam_loader import sam_modeling
    from .tiny_vit import TinyViT

    m = sam_modeling()

    class LiteMedSAM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_encoder = TinyViT()
            self.prompt_encoder = m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                                  input_image_size=(INPUT_SIZE, INPUT_SIZE), mask_in_chans=16)
            self.mask_decoder = m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)

    return LiteMedSAM().eval()


def litemedsam_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``lite_medsam.pth`` state dict (435 keys; built on the meta
    device)."""
    return meta_state_dict_shapes(build_litemedsam)


def _diagnose(sd: Mapping[str, Any]) -> str | None:
    """A sentence naming the model ``sd`` seems to belong to, when it is not LiteMedSAM."""
    pe = sd.get("image_encoder.patch_embed.proj.weight")
    if pe is not None and getattr(pe, "ndim", 0) == 4:
        dim = int(pe.shape[0])
        name = _SAM_DIMS.get(dim, f"a SAM ViT (embed dim {dim})")
        return (f"this file holds {name} weights, not LiteMedSAM's (TinyViT encoder); "
                f"use it with the MedSAM engine (--engine medsam)")
    if any(k.startswith("image_encoder.trunk.") for k in sd) or any(k.startswith("memory_attention.") for k in sd):
        return "this file holds SAM 2 / MedSAM2 weights (Hiera encoder), not LiteMedSAM's"
    seq0 = sd.get("image_encoder.patch_embed.seq.0.c.weight")
    if seq0 is not None and getattr(seq0, "ndim", 0) == 4 and tuple(seq0.shape[2:]) == (3, 3):
        return ("this file holds MobileSAM-style TinyViT weights (3x3 stride-2 patch embedding, 1024 input), "
                "not LiteMedSAM's (1x1 patch embedding, 256 input)")
    if any(k.startswith(("enc_blocks.", "dec_blocks.")) for k in sd):
        return "this file holds UniverSeg weights, not LiteMedSAM's"
    if not any(k.startswith(("image_encoder.", "mask_decoder.", "prompt_encoder.")) for k in sd):
        return "these weights have none of LiteMedSAM's image_encoder/prompt_encoder/mask_decoder keys"
    if not any(k.startswith("image_encoder.") for k in sd):
        return "the image encoder weights are missing (only part of LiteMedSAM is in the file)"
    return None


def load_litemedsam_state_dict(path: str | os.PathLike) -> dict:
    """Load and strictly validate a LiteMedSAM weights file (``lite_medsam.pth``: a plain state
    dict; training wrappers / ``module.`` prefixes are accepted). Raises CheckpointError naming
    what is wrong (another model's weights, a truncated file, a pickle carrying code ...)."""
    return load_state_dict_file(path, expected_keys=litemedsam_state_dict_shapes(), model_name=MODEL_NAME,
                                diagnose=_diagnose)


class LiteMedSAMEngine(BoxEngineBase):
    """LiteMedSAM on one device; the :class:`~medsam_gui.models.engine.BoxPromptEngine` protocol
    (shared plumbing: :class:`~medsam_gui.models.box_engine_base.BoxEngineBase`).

    ``checkpoint``: path to ``lite_medsam.pth`` (validated strictly) or an already-validated
    state dict. ``device``: "auto" | "cpu" | "cuda" | "mps". ``precision``: "fp32" (official
    computation) or any other (fast encoder path; see the module docstring). Thread-safe:
    encoder calls hold one lock, decoder calls another. Out of GPU memory: encoder batches are
    halved, then the model moves to the CPU; ``on_notice(message)`` is told each change.
    ``stop()`` is polled before each of the 12 encoder blocks (2 MBConv, 10 TinyViT), on both
    paths. ``iter_embed_batch`` yields float32.
    """

    name = "litemedsam"
    model_name = MODEL_NAME
    input_size = INPUT_SIZE

    def _load_state_dict(self, path: Path) -> dict:
        return load_litemedsam_state_dict(path)

    def _build_model(self):
        return build_litemedsam()

    def _finish_model(self, model) -> None:
        # non-persistent buffers (not in the checkpoint): rebuild them on the CPU
        from .tiny_vit import offset_index

        for mod in model.modules():
            if hasattr(mod, "bias_index"):
                mod.bias_index = offset_index(int(round(mod.attention_biases.shape[1] ** 0.5)))

    def _stop_modules(self, model):
        return [blk for layer in model.image_encoder.layers for blk in layer.blocks]

    @staticmethod
    def _resolve(precision: str, device) -> str:
        eff = resolve_precision(precision, device)
        if eff == "int8":
            return "fast"  # no int8 kernels for LiteMedSAM
        if str(precision).strip().lower() == "auto" and device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return eff

    def precision_context(self):
        """Autocast on GPUs; none on the CPU, where the fast encoder holds its own dtype and the
        decoder runs in float32 (faster there than under autocast)."""
        if self.device.type == "cpu":
            return nullcontext()
        return autocast(self.device, self.precision)

    def decoder_dtype(self):
        """bfloat16 with the "bf16" precision on a CPU with bf16 units (the decoder's large
        products ~3x faster there), else float32."""
        torch = self._torch
        if self.device.type == "cpu" and self.precision == "bf16" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32

    def _cpu_batch(self) -> int:
        return 2 if self._resolve(self.requested_precision, self._torch.device("cpu")) != "fp32" else 1

    def _make_fast_encoder(self):
        """The FastTinyViT of this engine (its own folded copies of the weights; stop points
        polled before each block)."""
        from .tiny_vit_fast import FastTinyViT

        torch = self._torch
        cpu_bf16 = self.device.type == "cpu" and self.precision == "bf16"
        return FastTinyViT(self.model.image_encoder, stop_point=self._poll_stop, pause_point=cpu_worker().serve_urgent,
                           dtype=torch.bfloat16 if cpu_bf16 else torch.float32)

    def _embed_fast(self, slices: Sequence[np.ndarray], batch_size: int, stop) -> list:
        """``[(offset, float32 (b, 256, 64, 64) CPU)]``: ``batch_size`` slices per forward (default
        1 on the CPU, where larger batches measured slower, 16 on CUDA)."""
        return [(a, self._encode_once(preprocess_batch_256(slices[a:a + batch_size]), stop))
                for a in range(0, len(slices), batch_size)]

    def _preprocess(self, slice_uint8_hw: np.ndarray):
        return preprocess_slice_256(slice_uint8_hw)

    def _model_boxes(self, box, hw: tuple[int, int]) -> np.ndarray:
        return box_to_256(box, hw)

    def _postprocess(self, logits, hw: tuple[int, int]) -> np.ndarray:
        return postprocess_logits(logits, hw)
