"""What the box-prompt engines share: device and precision, weights, locks, stop points, the
out-of-GPU-memory fallback, batching, and the segment-anything prompt encoder / mask decoder.

:class:`BoxEngineBase` implements :class:`medsam_gui.models.engine.BoxPromptEngine` for a model
with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (segment-anything's classes for
the last two). A subclass (``MedSAMEngine``, ``LiteMedSAMEngine``) gives only what differs:

- ``name``, ``input_size``, ``model_name`` and ``_batch_dtype`` (class attributes);
- ``_load_state_dict(path)`` (strict validation of a weights file), ``_build_model()`` (on the
  meta device) and ``_finish_model(model)`` (non-persistent buffers);
- ``_stop_modules(model)``: the modules before which ``stop()`` is polled (a forward pre-hook
  each; the fast encoder must call them too, or poll :meth:`_poll_stop` itself);
- ``_make_fast_encoder()`` and ``_embed_fast(slices, batch_size, stop)`` (the fast path),
  ``_fast_encoder_survives_cpu(fe)``;
- ``_preprocess(slice)`` (the reference encoder input), ``_model_boxes(boxes, hw)`` (boxes in
  the prompt encoder's frame) and ``_postprocess(logits, hw)`` (logits -> bool mask);
- optionally ``_resolve(precision, device)`` and ``_cpu_batch()``.

Thread-safety: encoder calls hold ``_enc_lock`` and decoder calls ``_dec_lock``, so a box is
decoded while a background thread runs the encoder on another slice. On the CPU every model call
runs on the process's one inference thread (:mod:`~medsam_gui.models.cpu_worker`: one OpenMP
pool); boxes are urgent there and served at the encoder's pause points. No Qt, no work at
import time.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError
from .checkpoints import file_sha256
from .cpu_worker import cpu_worker
from .device import autocast, pick_device, resolve_precision
from .engine import EncoderInterrupted
from .oom import OomFallback, free_device_memory

# FastDecoder turns boxes into its frame with ``box / [W, H, W, H] * 1024``; for boxes already in
# the model frame, this hw makes that an exact identity (division and product by a power of two).
_IDENTITY_HW = (1024, 1024)


def state_dict_id(sd: Mapping[str, Any]) -> str:
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


class BoxEngineBase:
    """A box-prompt engine on one device (see the module docstring for what subclasses give).

    ``checkpoint``: path to the weights (validated strictly), or an already-validated state
    dict (then ``checkpoint_id`` is derived from its tensors). ``device``: "auto" | "cpu" |
    "cuda" | "mps". ``precision``: "fp32" (the reference computation) or another precision (the
    fast encoder path; :func:`~medsam_gui.models.device.resolve_precision`).

    Out of GPU memory (:mod:`medsam_gui.models.oom`): the encoder retries with smaller batches,
    then the whole model moves to the CPU (``device`` becomes cpu, ``precision`` is resolved
    again for the CPU from ``requested_precision``); the decoder moves to the CPU at once. Each
    change is told to ``on_notice(message: str)`` (None by default; called on the thread that
    runs the model).
    """

    name = "box-engine"
    model_name = "a box-prompt model"
    input_size = 1024
    embedding_shape = (256, 64, 64)
    embedding_dtype = "float32"
    on_notice = None
    _batch_dtype = "float32"  # dtype of the embeddings iter_embed_batch yields
    _span_cuda = 1  # fast path on CUDA: batches per encoder-lock hold

    def __init__(self, checkpoint, device: str = "auto", precision: str = "fp32") -> None:
        import torch

        self._torch = torch
        self.device = pick_device(device)
        self.requested_precision = precision
        self.precision = self._resolve(precision, self.device)
        self._batch_cap: int | None = None  # largest encoder batch that fitted after an OOM
        # built on the CPU thread (tensor work here would give the caller's thread an OpenMP pool)
        self._on_cpu_worker(lambda: self._load(checkpoint))
        self._fast_enc = None
        self._stop: Callable[[], bool] | None = None  # the running pass's stop() (passes hold _enc_lock)
        for mod in self._stop_modules(self.model):
            mod.register_forward_pre_hook(self._stop_point)
        self._enc_lock = threading.Lock()
        self._dec_lock = threading.Lock()

    def _load(self, checkpoint) -> None:
        """Validate the weights and set ``model``, ``checkpoint_path`` and ``checkpoint_id``."""
        torch = self._torch
        if isinstance(checkpoint, Mapping):
            sd = dict(checkpoint)
            self.checkpoint_path: Path | None = None
            self.checkpoint_id = state_dict_id(sd)
        else:
            self.checkpoint_path = Path(checkpoint)
            sd = self._load_state_dict(self.checkpoint_path)
            self.checkpoint_id = file_sha256(self.checkpoint_path)
        # Build on the meta device (no random init), then adopt the checkpoint's tensors.
        with torch.device("meta"):
            model = self._build_model()
        try:
            model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
                                  strict=True, assign=True)
        except RuntimeError as exc:  # a dict passed in directly that was not validated
            raise CheckpointError(f"the weights do not fit {self.model_name}: {str(exc)[:400]}") from None
        del sd
        self._finish_model(model)
        leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:  # pragma: no cover - would mean segment-anything changed
            raise CheckpointError(f"internal error: {self.model_name} tensors not loaded: {leftover[:5]}")
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    # -- what subclasses give
    def _load_state_dict(self, path: Path) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_model(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish_model(self, model) -> None:
        """Set what the checkpoint does not hold (non-persistent buffers); nothing by default."""

    def _stop_modules(self, model):  # pragma: no cover - abstract
        raise NotImplementedError

    def _make_fast_encoder(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _fast_encoder_survives_cpu(self, fe) -> bool:
        """True when the fast encoder ``fe`` still serves after the model moved to the CPU."""
        return False

    def _embed_fast(self, slices: Sequence[np.ndarray], batch_size: int, stop) -> list:  # pragma: no cover
        raise NotImplementedError

    def _preprocess(self, slice_uint8_hw: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def _model_boxes(self, boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _postprocess(self, logits, hw: tuple[int, int]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _resolve(precision: str, device) -> str:
        return resolve_precision(precision, device)

    def precision_context(self):
        """The context the model runs under for this precision on this device (autocast for
        bf16 / fp16)."""
        return autocast(self.device, self.precision)

    def decoder_dtype(self):
        """The dtype of the FastDecoder's products over the image tokens (float32 here)."""
        return self._torch.float32

    def _cpu_batch(self) -> int:
        """Encoder batch size after a move to the CPU."""
        return 1

    # -- encoder
    @property
    def fast(self) -> bool:
        """True when the encoder runs the fast path (every precision except "fp32")."""
        return self.precision != "fp32"

    def _fast_encoder(self):
        """The fast encoder for this precision (built on first use). Call with ``_enc_lock`` held."""
        if getattr(self, "_fast_enc", None) is None:
            self._fast_enc = self._make_fast_encoder()
        return self._fast_enc

    def cache_key(self, volume_fingerprint: str, axis: int, index: int, bounds) -> str:
        """Cache key of one slice's embedding (scan, slice, window, engine, weights, precision)."""
        from .embedding_cache import embedding_key

        return embedding_key(volume_fingerprint, axis, index, bounds, self.checkpoint_id, self.precision,
                             engine=self.name)

    def embed_slice(self, slice_uint8_hw: np.ndarray, stop: Callable[[], bool] | None = None):
        """(H, W) uint8 slice -> image embedding (1, *embedding_shape) float32 on the CPU."""
        return self.embed([slice_uint8_hw], stop=stop)

    def _on_cpu_worker(self, fn: Callable[[], Any], urgent: bool = False) -> Any:
        """``fn()`` on the CPU inference thread when the model is on the CPU, else here."""
        if self.device.type == "cpu":
            return cpu_worker().call(fn, urgent=urgent)
        return fn()

    def embed_preprocessed(self, x, stop: Callable[[], bool] | None = None):
        """Encoder input (B, 3, S, S) float32 (S = ``input_size``) -> embeddings
        (B, *embedding_shape) float32, CPU (reference modules for "fp32", else the fast path).
        Out of GPU memory: the model moves to the CPU and the input is encoded there."""
        return self._on_cpu_worker(lambda: self._fallback(1).call(lambda: self._encode_once(x, stop)))

    def _encode_once(self, x, stop: Callable[[], bool] | None = None):
        """One encoder pass (callers are on the CPU thread when the model is on the CPU)."""
        torch = self._torch
        with self._encoder_pass(stop), torch.inference_mode(), self.precision_context():
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

    def _poll_stop(self) -> None:
        """A stop point: serve the boxes waiting for the CPU thread, then raise
        EncoderInterrupted when the running pass's ``stop()`` says so."""
        cpu_worker().serve_urgent()
        stop = self._stop
        if stop is not None and stop():
            raise EncoderInterrupted("the image encoder pass was stopped")

    def _stop_point(self, _module, _args) -> None:  # forward pre-hook
        self._poll_stop()

    def _default_batch_size(self) -> int:
        if not self.fast:
            return 1
        return 16 if self.device.type == "cuda" else 1

    def _embed_range(self, slices: Sequence[np.ndarray], batch_size: int, stop=None) -> list:
        """``[(offset, embeddings (b, *embedding_shape) CPU)]`` for ``slices`` on the current
        device and precision (the unit retried after an out-of-memory error)."""
        return self._on_cpu_worker(lambda: self._embed_range_here(slices, batch_size, stop))

    def _embed_range_here(self, slices: Sequence[np.ndarray], batch_size: int, stop) -> list:
        if not self.fast:  # reference path, one slice at a time
            dt = getattr(self._torch, self._batch_dtype)
            return [(i, self._encode_once(self._preprocess(s), stop).to(dt)) for i, s in enumerate(slices)]
        return self._embed_fast(slices, batch_size, stop)

    def iter_embed_batch(self, slices: Sequence[np.ndarray], batch_size: int | None = None,
                         stop: Callable[[], bool] | None = None):
        """Yield ``(start, embeddings (b, *embedding_shape) CPU)`` (dtype ``_batch_dtype``) for
        consecutive batches of ``slices`` ((H, W) uint8) as each batch is ready.

        "fp32": one reference pass per slice. Other precisions: the fast encoder in batches
        (default 16 slices on CUDA, 1 on the CPU). The encoder lock is held per batch, so
        decoders are never blocked. Out of GPU memory: the batches are halved down to 1, then
        the model moves to the CPU (``on_notice`` is told)."""
        slices = list(slices)
        bs = self._default_batch_size() if batch_size is None or not self.fast else max(1, int(batch_size))
        cap = getattr(self, "_batch_cap", None)
        if cap is not None and self.device.type != "cpu":
            bs = min(bs, cap)
        fb = self._fallback(bs)

        def span(b: int) -> int:  # items per run (and lock hold) on CUDA's fast path
            return b * (self._span_cuda if self.device.type == "cuda" and self.fast else 1)

        for start, _stop, parts in fb.run(len(slices), lambda a, b, size: self._embed_range(slices[a:b], size, stop),
                                          span=span):
            if fb.batch_size < bs and self.device.type != "cpu":
                self._batch_cap = fb.batch_size
            for off, e in parts:
                yield start + off, e

    def embed(self, slices: Sequence[np.ndarray], batch_size: int | None = None,
              stop: Callable[[], bool] | None = None):
        """(H, W) uint8 slices -> embeddings (N, *embedding_shape) float32 on the CPU.

        "fp32": one reference pass per slice (bit-exact). Other precisions: the fast path in
        batches (:meth:`iter_embed_batch`). ``stop()`` is polled between encoder blocks; when it
        returns True the pass is abandoned with EncoderInterrupted."""
        slices = list(slices)
        return self._on_cpu_worker(lambda: self._embed_here(slices, batch_size, stop))

    def _embed_here(self, slices: list, batch_size: int | None, stop):
        torch = self._torch
        if not slices:
            return torch.empty(0, *self.embedding_shape)
        if not self.fast:
            return torch.cat([self.embed_preprocessed(self._preprocess(s), stop) for s in slices])
        return torch.cat([e for _, e in self.iter_embed_batch(slices, batch_size, stop)]).float()

    # -- out of memory
    def _notice(self, message: str) -> None:
        cb = self.on_notice
        if cb is not None:
            cb(message)

    def _fallback(self, batch_size: int) -> OomFallback:
        return OomFallback(lambda: self.device, batch_size, move_to_cpu=self.move_to_cpu,
                           on_notice=self._notice, cpu_batch_size=self._cpu_batch())

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
            self.precision = self._resolve(getattr(self, "requested_precision", self.precision), cpu)
            fe = getattr(self, "_fast_enc", None)
            if fe is not None and not self._fast_encoder_survives_cpu(fe):
                self._fast_enc = None
        free_device_memory(old)
        return True

    # -- decoder
    @property
    def fast_decoder(self):
        """The :class:`~medsam_gui.models.fast_decoder.FastDecoder` of this engine (created once):
        the exact re-derivation of segment-anything's mask decoder for one box (logits equal to
        ~1e-6, ~2.7x faster on the CPU) with a per-embedding cache of the box-independent work.
        Boxes reach it already in the prompt encoder's frame (see ``_IDENTITY_HW``)."""
        fd = self.__dict__.get("_fast_decoder_obj")
        if fd is None:
            from .fast_decoder import FastDecoder

            fd = self.__dict__.setdefault("_fast_decoder_obj", FastDecoder(self))
        return fd

    def prepare_decoder(self, embedding) -> bool:
        """Do the box-independent decoder work for ``embedding`` now, ahead of its first box
        (the fast precisions' FastDecoder cache). Returns True when work was done; False for
        "fp32" (segment-anything's own decoder, nothing to prepare) or when already prepared.
        Safe to call from any thread (boxes do not wait for it)."""
        if self.precision == "fp32":
            return False
        fd = self.fast_decoder
        return bool(self._on_cpu_worker(lambda: self._fallback(1).call(lambda: fd.prepare(embedding)), urgent=True))

    def decode_logits(self, embedding, box_xyxy, hw: tuple[int, int]):
        """Low-res logits (B, 1, 256, 256) float32 (CPU) for box(es) (x0, y0, x1, y1) in slice
        pixels on an (H, W) slice (``box_xyxy``: 4 numbers or (B, 4)). "fp32":
        segment-anything's prompt encoder and mask decoder; other precisions:
        :attr:`fast_decoder`. Out of GPU memory: the model moves to the CPU (``on_notice`` is
        told) and the boxes are decoded there."""
        boxes = self._boxes(box_xyxy, hw)
        if self.precision != "fp32":
            fd = self.fast_decoder
            run = lambda: fd.decode_logits(embedding, boxes, _IDENTITY_HW)  # noqa: E731
        else:
            run = lambda: self._decode_once(embedding, boxes)[0]  # noqa: E731
        return self._on_cpu_worker(lambda: self._fallback(1).call(run), urgent=True)

    def decode_with_iou(self, embedding, box_xyxy, hw: tuple[int, int]):
        """(logits (B, 1, 256, 256), predicted IoU (B, 1)) float32 CPU, segment-anything's decoder."""
        boxes = self._boxes(box_xyxy, hw)
        return self._on_cpu_worker(lambda: self._fallback(1).call(lambda: self._decode_once(embedding, boxes)),
                                   urgent=True)

    def _boxes(self, box_xyxy, hw) -> np.ndarray:
        boxes = np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)
        return np.stack([self._model_boxes(b, hw) for b in boxes])

    def _decode_once(self, embedding, model_boxes: np.ndarray):
        torch = self._torch
        with self._dec_lock, torch.inference_mode(), self.precision_context():
            emb = torch.as_tensor(embedding).to(self.device, dtype=torch.float32)
            if emb.ndim == 3:
                emb = emb[None]
            box_t = torch.as_tensor(model_boxes, dtype=torch.float, device=self.device)[:, None, :]
            pe = self.model.prompt_encoder
            sparse, dense = pe(points=None, boxes=box_t, masks=None)
            logits, iou = self.model.mask_decoder(
                image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=False)
        return logits.float().cpu(), iou.float().cpu()

    def decode(self, embedding, box_xyxy, hw: tuple[int, int]) -> np.ndarray:
        """bool mask (H, W) for one box (x0, y0, x1, y1) in slice pixels; (B, H, W) for B boxes."""
        return self._on_cpu_worker(lambda: self._postprocess(self.decode_logits(embedding, box_xyxy, hw), hw),
                                   urgent=True)

    def segment(self, slice_uint8_hw: np.ndarray, box_xyxy) -> np.ndarray:
        """Embed one (H, W) uint8 slice and decode one box -> bool mask (H, W)."""
        hw = tuple(np.asarray(slice_uint8_hw).shape[:2])
        return self.decode(self.embed_slice(slice_uint8_hw), box_xyxy, hw)
