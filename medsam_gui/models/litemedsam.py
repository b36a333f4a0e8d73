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
batched slices; float32 on the CPU, within ~1e-5 of "fp32"), under bf16/fp16 autocast where
:func:`~medsam_gui.models.device.resolve_precision` says so on a GPU. "int8" has no LiteMedSAM
kernels and means "fast" on the CPU. The mask decoder is segment-anything's for "fp32" and
MedSAM's :class:`~medsam_gui.models.fast_decoder.FastDecoder` (same logits within ~3e-6,
box-independent work cached per embedding) for the other precisions. No Qt, no work at import
time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError
from .checkpoints import file_sha256, load_state_dict_file
from .device import autocast, pick_device, resolve_precision
from .litemedsam_transforms import INPUT_SIZE, box_to_256, postprocess_logits, preprocess_batch_256, preprocess_slice_256
from .oom import OomFallback, free_device_memory

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


_shapes_cache: dict[str, tuple[int, ...]] | None = None


def litemedsam_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``lite_medsam.pth`` state dict (435 keys; built on the meta
    device)."""
    global _shapes_cache
    if _shapes_cache is None:
        import torch

        with torch.device("meta"):
            model = build_litemedsam()
        _shapes_cache = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return dict(_shapes_cache)


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


class LiteMedSAMEngine:
    """LiteMedSAM on one device; the :class:`~medsam_gui.models.engine.BoxPromptEngine` protocol.

    ``checkpoint``: path to ``lite_medsam.pth`` (validated strictly) or an already-validated
    state dict. ``device``: "auto" | "cpu" | "cuda" | "mps". ``precision``: "fp32" (official
    computation) or any other (fast encoder path; see the module docstring). Thread-safe:
    encoder calls hold one lock, decoder calls another. Out of GPU memory: encoder batches are
    halved, then the model moves to the CPU; ``on_notice(message)`` is told each change.
    """

    name = "litemedsam"
    input_size = INPUT_SIZE
    embedding_shape = (256, 64, 64)
    embedding_dtype = "float32"
    on_notice = None

    def __init__(self, checkpoint, device: str = "auto", precision: str = "fp32") -> None:
        import torch

        self.device = pick_device(device)
        self.requested_precision = precision
        self.precision = self._resolve(precision, self.device)
        self._batch_cap: int | None = None
        if isinstance(checkpoint, Mapping):
            sd = dict(checkpoint)
            self.checkpoint_path: Path | None = None
            from .medsam import _state_dict_id

            self.checkpoint_id = _state_dict_id(sd)
        else:
            self.checkpoint_path = Path(checkpoint)
            sd = load_litemedsam_state_dict(self.checkpoint_path)
            self.checkpoint_id = file_sha256(self.checkpoint_path)
        with torch.device("meta"):
            model = build_litemedsam()
        try:
            model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
                                  strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"the weights do not fit {MODEL_NAME}: {str(exc)[:400]}") from None
        del sd
        # non-persistent buffers (not in the checkpoint): rebuild them on the CPU
        from .tiny_vit import offset_index

        for mod in model.modules():
            if hasattr(mod, "bias_index"):
                mod.bias_index = offset_index(int(round(mod.attention_biases.shape[1] ** 0.5)))
        leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:  # pragma: no cover - would mean segment-anything changed
            raise CheckpointError(f"internal error: {MODEL_NAME} tensors not loaded: {leftover[:5]}")
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._fast_enc = None
        self._enc_lock = threading.Lock()
        self._dec_lock = threading.Lock()
        self._torch = torch

    @staticmethod
    def _resolve(precision: str, device) -> str:
        eff = resolve_precision(precision, device)
        return "fast" if eff == "int8" else eff  # no int8 kernels for LiteMedSAM

    # -- encoder
    @property
    def fast(self) -> bool:
        """True when the encoder runs the fast path (every precision except "fp32")."""
        return self.precision != "fp32"

    def _fast_encoder(self):
        """The FastTinyViT of this engine (built on first use; call with ``_enc_lock`` held)."""
        if self._fast_enc is None:
            from .tiny_vit_fast import FastTinyViT

            self._fast_enc = FastTinyViT(self.model.image_encoder)
        return self._fast_enc

    def cache_key(self, volume_fingerprint: str, axis: int, index: int, bounds) -> str:
        """Cache key of one slice's embedding (scan, slice, window, engine, weights, precision)."""
        from .embedding_cache import embedding_key

        return embedding_key(volume_fingerprint, axis, index, bounds, self.checkpoint_id, self.precision,
                             engine=self.name)

    def embed_slice(self, slice_uint8_hw: np.ndarray):
        """(H, W) uint8 slice -> embedding (1, 256, 64, 64) float32 on the CPU."""
        return self.embed([slice_uint8_hw])

    def embed_preprocessed(self, x):
        """Encoder input (B, 3, 256, 256) float32 -> embeddings (B, 256, 64, 64) float32, CPU
        (reference modules for "fp32", else the fast path)."""
        return self._fallback(1).call(lambda: self._encode_once(x))

    def _encode_once(self, x):
        torch = self._torch
        with self._enc_lock, torch.inference_mode(), autocast(self.device, self.precision):
            enc = self._fast_encoder() if self.fast else self.model.image_encoder
            emb = enc(x.to(self.device))
        return emb.float().cpu()

    def _default_batch_size(self) -> int:
        if not self.fast:
            return 1
        return 16 if self.device.type == "cuda" else 1

    def _embed_range(self, slices: Sequence[np.ndarray], batch_size: int) -> list:
        if not self.fast:
            return [(i, self._encode_once(preprocess_slice_256(s))) for i, s in enumerate(slices)]
        out = []
        for a in range(0, len(slices), batch_size):
            x = preprocess_batch_256(slices[a:a + batch_size])
            out.append((a, self._encode_once(x)))
        return out

    def iter_embed_batch(self, slices: Sequence[np.ndarray], batch_size: int | None = None):
        """Yield ``(start, embeddings (b, 256, 64, 64) float32 CPU)`` for consecutive batches of
        ``slices`` ((H, W) uint8, any shapes). "fp32": one slice at a time with the reference
        modules; other precisions: the fast encoder on ``batch_size`` slices per forward (default
        1 on the CPU, where larger batches measured slower, 16 on CUDA). Out of GPU memory:
        smaller batches, then the CPU."""
        slices = list(slices)
        bs = self._default_batch_size() if batch_size is None or not self.fast else max(1, int(batch_size))
        if self._batch_cap is not None and self.device.type != "cpu":
            bs = min(bs, self._batch_cap)
        fb = self._fallback(bs)
        for start, _stop, parts in fb.run(len(slices), lambda a, b, size: self._embed_range(slices[a:b], size)):
            if fb.batch_size < bs and self.device.type != "cpu":
                self._batch_cap = fb.batch_size
            for off, e in parts:
                yield start + off, e

    def embed(self, slices: Sequence[np.ndarray], batch_size: int | None = None):
        """(H, W) uint8 slices -> embeddings (N, 256, 64, 64) float32 on the CPU."""
        torch = self._torch
        slices = list(slices)
        if not slices:
            return torch.empty(0, *self.embedding_shape)
        return torch.cat([e for _, e in self.iter_embed_batch(slices, batch_size)])

    # -- out of memory
    def _notice(self, message: str) -> None:
        cb = self.on_notice
        if cb is not None:
            cb(message)

    def _fallback(self, batch_size: int) -> OomFallback:
        return OomFallback(lambda: self.device, batch_size, move_to_cpu=self.move_to_cpu,
                           on_notice=self._notice, cpu_batch_size=self._cpu_batch())

    def _cpu_batch(self) -> int:
        return 2 if self._resolve(self.requested_precision, self._torch.device("cpu")) != "fp32" else 1

    def move_to_cpu(self) -> bool:
        """Move the model to the CPU (after the GPU ran out of memory); ``precision`` is resolved
        again for the CPU. Waits for running encoder/decoder calls. False when already there."""
        torch = self._torch
        with self._enc_lock, self._dec_lock:
            old = self.device
            if old.type == "cpu":
                return False
            cpu = torch.device("cpu")
            self.model.to(cpu)
            self.device = cpu
            self.precision = self._resolve(self.requested_precision, cpu)
            self._fast_enc = None
        free_device_memory(old)
        return True

    # -- decoder
    @property
    def fast_decoder(self):
        """The :class:`~medsam_gui.models.fast_decoder.FastDecoder` of this engine (created once):
        MedSAM's exact re-derivation of segment-anything's mask decoder for one box, with a
        per-embedding cache of the box-independent work. LiteMedSAM's prompt encoder and mask
        decoder are the same classes with the same sizes (only the prompt encoder's input frame
        is 256), so it serves LiteMedSAM as it is: boxes are handed over already in the 256
        frame with ``hw = (1024, 1024)``, for which its ``box / 1024 * 1024`` is exact."""
        fd = self.__dict__.get("_fast_decoder_obj")
        if fd is None:
            from .fast_decoder import FastDecoder

            fd = self.__dict__.setdefault("_fast_decoder_obj", FastDecoder(self))
        return fd

    def prepare_decoder(self, embedding) -> bool:
        """Do the box-independent decoder work for ``embedding`` ahead of its first box (the fast
        precisions' FastDecoder cache); True when work was done. False for "fp32"
        (segment-anything's decoder runs per box) or when already prepared."""
        if self.precision == "fp32":
            return False
        fd = self.fast_decoder
        return bool(self._fallback(1).call(lambda: fd.prepare(embedding)))

    def decode_logits(self, embedding, box_xyxy, hw: tuple[int, int]):
        """Low-res logits (B, 1, 256, 256) float32 CPU for box(es) (x0, y0, x1, y1) in slice
        pixels on an (H, W) slice (``box_xyxy``: 4 numbers or (B, 4)). "fp32": segment-anything's
        prompt encoder and mask decoder; other precisions: :attr:`fast_decoder` (the same logits
        within ~3e-6 on the golden cases, ~3x faster)."""
        boxes = np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)
        boxes_256 = np.stack([box_to_256(b, hw) for b in boxes])
        if self.precision != "fp32":
            fd = self.fast_decoder
            return self._fallback(1).call(lambda: fd.decode_logits(embedding, boxes_256, (1024, 1024)))
        return self._fallback(1).call(lambda: self._decode_once(embedding, boxes_256)[0])

    def decode_with_iou(self, embedding, box_xyxy, hw: tuple[int, int]):
        """(logits (B, 1, 256, 256), predicted IoU (B, 1)) float32 CPU."""
        boxes = np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)
        boxes_256 = np.stack([box_to_256(b, hw) for b in boxes])
        return self._fallback(1).call(lambda: self._decode_once(embedding, boxes_256))

    def _decode_once(self, embedding, boxes_256: np.ndarray):
        torch = self._torch
        with self._dec_lock, torch.inference_mode(), autocast(self.device, self.precision):
            emb = torch.as_tensor(embedding).to(self.device, dtype=torch.float32)
            if emb.ndim == 3:
                emb = emb[None]
            box_t = torch.as_tensor(boxes_256, dtype=torch.float, device=self.device)[:, None, :]
            pe = self.model.prompt_encoder
            sparse, dense = pe(points=None, boxes=box_t, masks=None)
            logits, iou = self.model.mask_decoder(
                image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=False)
        return logits.float().cpu(), iou.float().cpu()

    def decode(self, embedding, box_xyxy, hw: tuple[int, int]) -> np.ndarray:
        """bool mask (H, W) for one box (x0, y0, x1, y1) in slice pixels; (B, H, W) for B boxes."""
        return postprocess_logits(self.decode_logits(embedding, box_xyxy, hw), hw)

    def segment(self, slice_uint8_hw: np.ndarray, box_xyxy) -> np.ndarray:
        """Embed one (H, W) uint8 slice and decode one box -> bool mask (H, W)."""
        hw = tuple(np.asarray(slice_uint8_hw).shape[:2])
        return self.decode(self.embed_slice(slice_uint8_hw), box_xyxy, hw)
