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

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError
from .checkpoints import file_sha256, load_state_dict_file
from .device import autocast, pick_device, resolve_precision
from .engine import EncoderInterrupted
from .medsam_transforms import INPUT_SIZE, box_to_1024, postprocess_low_res_logits, preprocess_slice
from .oom import OomFallback, free_device_memory

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

class MedSAMEngine:
    """MedSAM ViT-B on one device.

    ``checkpoint``: path to the weights (validated strictly), or an already-validated state
    dict (then ``checkpoint_id`` is derived from its tensors). ``device``: "auto" | "cpu" |
    "cuda" | "mps". ``precision``: "fp32" (reference-exact) | "auto" | "bf16" (see
    :mod:`medsam_gui.models.device`). Thread-safe: encoder calls are serialised by one lock
    and decoder calls by another, so a box can be decoded (~0.1 s) while a background thread
    runs the encoder (tens of seconds on a CPU) on another slice.

    Out of GPU memory (see :mod:`medsam_gui.models.oom`): the encoder retries with smaller
    batches, then the whole model moves to the CPU (``device`` becomes cpu, ``precision`` is
    resolved again for the CPU from ``requested_precision``); the decoder moves to the CPU at
    once. Each change is told to ``on_notice(message: str)`` (an attribute, None by default;
    called on the thread that runs the model).
    """

    name = "medsam"
    input_size = INPUT_SIZE
    embedding_shape = (256, 64, 64)
    embedding_dtype = "float32"
    on_notice = None

    def __init__(self, checkpoint, device: str = "auto", precision: str = "fp32") -> None:
        import torch

        from .sam_loader import build_sam_vit_b

        self.device = pick_device(device)
        self.requested_precision = precision
        self.precision = resolve_precision(precision, self.device)
        self._batch_cap: int | None = None  # largest encoder batch that fitted after an OOM
        if isinstance(checkpoint, Mapping):
            sd = dict(checkpoint)
            self.checkpoint_path: Path | None = None
            self.checkpoint_id = _state_dict_id(sd)
        else:
            self.checkpoint_path = Path(checkpoint)
            sd = load_medsam_state_dict(self.checkpoint_path)
            self.checkpoint_id = file_sha256(self.checkpoint_path)
        # Build on the meta device (no random init), then adopt the checkpoint's tensors.
        with torch.device("meta"):
            model = build_sam_vit_b()
        try:
            model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        except RuntimeError as exc:  # a dict passed in directly that was not validated
            raise CheckpointError(f"the weights do not fit {MODEL_NAME}: {str(exc)[:400]}") from None
        del sd
        # Non-persistent buffers (not in any checkpoint; unused by MedSAM's preprocessing).
        model.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        model.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
        leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:  # pragma: no cover - would mean segment-anything changed
            raise CheckpointError(f"internal error: {MODEL_NAME} tensors not loaded: {leftover[:5]}")
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._fast_enc = None
        self._stop: Callable[[], bool] | None = None  # the running pass's stop() (passes hold _enc_lock)
        for blk in self.model.image_encoder.blocks:  # stop points of both encoder paths
            blk.norm1.register_forward_pre_hook(self._stop_point)
        self._enc_lock = threading.Lock()
        self._dec_lock = threading.Lock()
        self._torch = torch

    # -- encoder
    @property
    def fast(self) -> bool:
        """True when the encoder runs the fast path (every precision except "fp32")."""
        return self.precision != "fp32"

    def _fast_encoder(self):
        """The FastImageEncoder for this precision (built on first use; int8 quantises the
        encoder's Linear layers once, ~1-7 s on a CPU). Call with ``_enc_lock`` held."""
        if getattr(self, "_fast_enc", None) is None:
            from .fast_encoder import FastImageEncoder

            self._fast_enc = FastImageEncoder(self.model.image_encoder, quantize=self.precision == "int8")
        return self._fast_enc

    def _batched_embedder(self, batch_size: int | None = None):
        from .fast_encoder import BatchedEmbedder

        if batch_size is None:
            batch_size = 16 if self.device.type == "cuda" else 1
        return BatchedEmbedder(self._fast_encoder(), self.device, self.precision, batch_size=batch_size)

    def embed_slice(self, slice_uint8_hw: np.ndarray, stop: Callable[[], bool] | None = None):
        """(H, W) uint8 slice -> image embedding (1, 256, 64, 64) float32 on CPU.

        "fp32": the reference path (skimage preprocessing, segment-anything's encoder), bit-exact.
        Other precisions: the fast path (see :meth:`embed`)."""
        if self.fast:
            return self.embed([slice_uint8_hw], stop=stop)
        x = preprocess_slice(slice_uint8_hw)
        return self.embed_preprocessed(x, stop)

    def cache_key(self, volume_fingerprint: str, axis: int, index: int, bounds) -> str:
        """Cache key of one slice's embedding (scan, slice, window, engine, weights, precision)."""
        from .embedding_cache import embedding_key

        return embedding_key(volume_fingerprint, axis, index, bounds, self.checkpoint_id, self.precision,
                             engine=self.name)

    def embed_preprocessed(self, x, stop: Callable[[], bool] | None = None):
        """Encoder input (1, 3, 1024, 1024) float32 -> embedding (1, 256, 64, 64) float32, CPU.
        Out of GPU memory: the model moves to the CPU and the slice is encoded there."""
        return self._fallback(1).call(lambda: self._encode_once(x, stop))

    def _encode_once(self, x, stop: Callable[[], bool] | None = None):
        torch = self._torch
        with self._encoder_pass(stop), torch.inference_mode(), autocast(self.device, self.precision):
            enc = self._fast_encoder() if self.fast else self.model.image_encoder
            emb = enc(x.to(self.device))
        return emb.float().cpu()

    @contextlib.contextmanager
    def _encoder_pass(self, stop: Callable[[], bool] | None):
        """Hold the encoder lock for one pass (or one locked run of batches) polling ``stop``."""
        with self._enc_lock:
            self._stop = stop
            try:
                yield
            finally:
                self._stop = None

    def _stop_point(self, _module, _args) -> None:
        stop = self._stop
        if stop is not None and stop():
            raise EncoderInterrupted("the image encoder pass was stopped")

    # -- out of memory
    def _notice(self, message: str) -> None:
        cb = self.on_notice
        if cb is not None:
            cb(message)

    def _fallback(self, batch_size: int) -> OomFallback:
        return OomFallback(lambda: self.device, batch_size, move_to_cpu=self.move_to_cpu,
                           on_notice=self._notice, cpu_batch_size=1)

    def move_to_cpu(self) -> bool:
        """Move the model to the CPU (after the GPU ran out of memory); ``precision`` is resolved
        again for the CPU from ``requested_precision``. Waits for running encoder/decoder calls.
        Returns False when already on the CPU."""
        torch = self._torch
        with self._enc_lock, self._dec_lock:
            old = self.device
            if old.type == "cpu":
                return False
            cpu = torch.device("cpu")
            self.model.to(cpu)
            self.device = cpu
            self.precision = resolve_precision(getattr(self, "requested_precision", self.precision), cpu)
            fe = getattr(self, "_fast_enc", None)
            if fe is not None and getattr(fe, "quantize", False) != (self.precision == "int8"):
                self._fast_enc = None  # int8 on the CPU needs a quantised copy
        free_device_memory(old)
        return True

    def _default_batch_size(self) -> int:
        if not self.fast:
            return 1
        return 16 if self.device.type == "cuda" else 1

    def _embed_range(self, slices: Sequence[np.ndarray], batch_size: int, stop=None) -> list:
        """``[(offset, float16 (b, 256, 64, 64) CPU)]`` for ``slices`` on the current device
        and precision (the unit retried after an out-of-memory error)."""
        if not self.fast:  # reference path, one slice at a time
            return [(i, self._encode_once(preprocess_slice(s), stop).half()) for i, s in enumerate(slices)]
        with self._encoder_pass(stop):
            emb = self._batched_embedder(batch_size)
            return list(emb.iter_embed(slices))

    def iter_embed_batch(self, slices: Sequence[np.ndarray], batch_size: int | None = None,
                         stop: Callable[[], bool] | None = None):
        """Yield ``(start, embeddings (b, 256, 64, 64) float16 CPU)`` for consecutive batches of
        ``slices`` ((H, W) uint8, one shape per batch) as each batch is ready.

        "fp32": one reference :meth:`embed` per slice (bit-exact). Other precisions: the fast
        encoder in batches (default 16 slices on CUDA, 1 on the CPU) with the preprocessing
        done as matrix products on the device, and on CUDA pinned memory, copies on a side
        stream overlapping compute (:class:`~medsam_gui.models.fast_encoder.BatchedEmbedder`).
        The encoder lock is held per batch, so decoders are never blocked. Out of GPU memory:
        the batches are halved down to 1, then the model moves to the CPU (``on_notice`` is told).
        """
        slices = list(slices)
        bs = self._default_batch_size() if batch_size is None or not self.fast else max(1, int(batch_size))
        cap = getattr(self, "_batch_cap", None)
        if cap is not None and self.device.type != "cpu":
            bs = min(bs, cap)
        fb = self._fallback(bs)

        def span(b: int) -> int:  # CUDA: 4 batches per lock hold keep the copy/compute overlap going
            return b * (4 if self.device.type == "cuda" and self.fast else 1)

        for start, _stop, parts in fb.run(len(slices), lambda a, b, size: self._embed_range(slices[a:b], size, stop),
                                          span=span):
            if fb.batch_size < bs and self.device.type != "cpu":
                self._batch_cap = fb.batch_size
            for off, e in parts:
                yield start + off, e

    def embed(self, slices: Sequence[np.ndarray], batch_size: int | None = None,
              stop: Callable[[], bool] | None = None):
        """(H, W) uint8 slices -> embeddings (N, 256, 64, 64) float32 on CPU, equal to calling
        :meth:`embed_slice` on each slice ("fp32": the same code; fast precisions: up to the
        float16 rounding the batched path applies to every embedding)."""
        torch = self._torch
        slices = list(slices)
        if not slices:
            return torch.empty(0, *self.embedding_shape)
        if not self.fast:
            return torch.cat([self.embed_slice(s, stop) for s in slices])
        return torch.cat([e for _, e in self.iter_embed_batch(slices, batch_size, stop)]).float()

    # -- decoder
    def decode_logits(self, embedding, box_xyxy, hw: tuple[int, int]):
        """Low-res logits (B, 1, 256, 256) float32 (CPU) for box(es) (x0, y0, x1, y1) in slice
        pixels on an (H, W) slice. ``box_xyxy`` is 4 numbers or (B, 4). Out of GPU memory: the
        model moves to the CPU (``on_notice`` is told) and the boxes are decoded there."""
        boxes = np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)
        if self.precision != "fp32":  # the fast precisions decode with FastDecoder (same maths)
            fd = self.fast_decoder
            return self._fallback(1).call(lambda: fd.decode_logits(embedding, boxes, hw))
        boxes_1024 = np.stack([box_to_1024(b, hw) for b in boxes])
        return self._fallback(1).call(lambda: self._decode_once(embedding, boxes_1024))

    def prepare_decoder(self, embedding) -> bool:
        """Do the box-independent decoder work for ``embedding`` now, ahead of its first box
        (the fast precisions' :class:`FastDecoder` cache; ~15-20 ms on a 2-core CPU, after which a
        box on that slice decodes at the cached speed). Returns True when work was done; False
        for ``fp32`` (segment-anything's own decoder, nothing to prepare) or when the embedding
        was prepared already. Safe to call from any thread (boxes do not wait for it)."""
        if self.precision == "fp32":
            return False
        fd = self.fast_decoder
        return bool(self._fallback(1).call(lambda: fd.prepare(embedding)))

    @property
    def fast_decoder(self):
        """The :class:`~medsam_gui.models.fast_decoder.FastDecoder` of this engine (created once).

        Used by :meth:`decode` for every precision but ``fp32`` (which stays segment-anything's
        own decoder call, bit for bit): logits equal to ~1e-6, ~2.7x faster on the CPU, with a
        per-embedding cache of the box-independent work."""
        fd = self.__dict__.get("_fast_decoder_obj")
        if fd is None:
            from .fast_decoder import FastDecoder

            fd = self.__dict__.setdefault("_fast_decoder_obj", FastDecoder(self))
        return fd

    def _decode_once(self, embedding, boxes_1024: np.ndarray):
        torch = self._torch
        with self._dec_lock, torch.inference_mode(), autocast(self.device, self.precision):
            emb = torch.as_tensor(embedding).to(self.device, dtype=torch.float32)
            if emb.ndim == 3:
                emb = emb[None]
            box_t = torch.as_tensor(boxes_1024, dtype=torch.float, device=self.device)[:, None, :]
            pe = self.model.prompt_encoder
            sparse, dense = pe(points=None, boxes=box_t, masks=None)
            logits, _ = self.model.mask_decoder(
                image_embeddings=emb,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        return logits.float().cpu()

    def decode(self, embedding, box_xyxy, hw: tuple[int, int]) -> np.ndarray:
        """bool mask (H, W) for one box (x0, y0, x1, y1) in slice pixels; (B, H, W) for B boxes."""
        return postprocess_low_res_logits(self.decode_logits(embedding, box_xyxy, hw), hw)

    def segment(self, slice_uint8_hw: np.ndarray, box_xyxy) -> np.ndarray:
        """Embed one (H, W) uint8 slice and decode one box -> bool mask (H, W)."""
        hw = tuple(np.asarray(slice_uint8_hw).shape[:2])
        return self.decode(self.embed_slice(slice_uint8_hw), box_xyxy, hw)


def _state_dict_id(sd: Mapping[str, Any]) -> str:
    """A sha256 over a state dict's names, shapes and a sample of each tensor's bytes."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        flat = v.detach().reshape(-1)[:4096].float().cpu().numpy()
        h.update(flat.tobytes())
    return "sd-" + h.hexdigest()
