"""FastDecoder: an exact re-derivation of MedSAM's mask decoder for one box, for interactive use.

No Qt, no work at import time.
"""

from __future__ import annotations

import threading

import numpy as np

from .fast_decoder_ops import Workspace, decode_boxes, split_heads, upscale_consts, upscale_params
from .medsam_transforms import box_to_1024, postprocess_low_res_logits


class FastDecoder:
    """Box -> mask with a MedSAMEngine's prompt encoder and mask decoder, for interactive use.

    Same result as ``engine.decode`` (segment-anything's ``MaskDecoder`` with one box prompt,
    no mask input, ``multimask_output=False``, reference post-processing) up to float32
    summation order (logits within ~1e-6 relative; masks differ only where the reference's
    interpolated probability is within rounding of 0.5), computed by :func:`decode_boxes`, a
    re-derivation of the decoder's forward pass that reads the engine's own weights:

    * box-independent work is kept per embedding in a small LRU cache (``cache_size``
      embeddings, matched bitwise by content, so an embedding modified in place or a different
      one is never served stale data; entries also name the weights they derive from). The
      first box on an embedding stores only ``keys0 = embedding + no_mask_embed`` as (1, 4096,
      256) tokens; the second completes the entry with layer 0's key/value projections
      (token->image attention) and query projection (image->token attention) of those tokens,
      and centred ``keys0`` @ the folded first upscaling matrix (``prepare`` does it at once);
    * attention of the few prompt tokens to the 4096 image tokens never projects the image
      tokens: ``q . (W x + b) = (W^T q) . x + q . b`` and ``sum_n a_n (W x_n + b) =
      W (sum_n a_n x_n) + b`` (softmax rows sum to 1); image->token attention folds the value
      and output projections into one (4096 x 56) @ (56 x 256) product;
    * the final token->image attention runs for mask token 0 only (the only token used with
      ``multimask_output=False``); the IoU head and the 3 other hypernetwork MLPs are skipped;
    * the two 2x2-stride-2 transposed convolutions are per-token matrix products (no overlap
      between output blocks); the first is assembled from the cache and a (4096 x 113) @
      (113 x 256) product through the two layer norms (see :func:`decode_boxes`), LayerNorm2d
      is a ``layer_norm`` over channels, and the (256, 256) pixel order is a permute + pixel
      shuffle at the end;
    * on the CPU the large intermediates are written into per-thread buffers (``out=``): with
      the app's huge-page memory tuning a fresh 4 MiB tensor costs ~1-7 ms of page faults;
    * the products over the 4096 image tokens run in ``engine.decoder_dtype()``: float32 (the
      exact path), or bfloat16 for LiteMedSAM's "bf16" precision on a CPU with bf16 units
      (cached image tokens in bfloat16, derived in float32; the few-token side, softmax and
      layer-norm statistics stay float32; masks at Dice >= 0.99 against float32).

    ``prepare(embedding)`` does the per-embedding work ahead of the first box (~15 ms on a
    2-core CPU; worth calling where an embedding becomes available, e.g. in the encoder's
    thread). The dense positional encoding is computed once per device. Float16 cached
    embeddings are accepted as they are (converted to float32 like the reference). Thread-safe
    (the cache is behind a lock, buffers are per thread, the decoder modules are only read; no
    engine lock is taken, so a box decodes while the encoder runs in another thread). Follows
    the engine's device (which becomes the CPU when the GPU ran out of memory) and its
    ``precision_context()`` (under autocast without buffers and without the upscaling fold).

    ``record_stages``: when True, ``last_stages`` holds the seconds spent per stage of the last
    call (``prompt``, ``cache``, ``layer0``, ``layer1``, ``final``, ``upscale``, ``to_cpu``;
    on CUDA each stage is synchronised, so leave it off outside benchmarks).
    """

    def __init__(self, engine, cache_size: int = 4) -> None:
        import torch

        self.engine = engine
        self.model = engine.model
        self.cache_size = max(1, int(cache_size))
        self._pe = None  # (device, dense PE (1, 256, 64, 64), PE tokens (1, 4096, 256))
        self._lock = threading.Lock()
        self._cache: list = []  # most recent last: _EmbeddingEntry
        self._consts = None  # (weights signature, {dtype: upscale_consts})
        self._pos_cast: dict = {}  # dtype -> the PE tokens in it
        self._params = None  # the decoder tensors the caches derive from
        self._tls = threading.local()  # .ws: this thread's Workspace
        self.cache_hits = 0
        self.cache_misses = 0
        self.record_stages = False
        self.last_stages: dict = {}
        self._torch = torch

    @property
    def device(self):
        return self.engine.device

    def _pe_pair(self):
        with self._lock:
            dev = self.device
            if self._pe is None or self._pe[0] != dev:
                with self._torch.inference_mode():
                    pe = self.model.prompt_encoder.get_dense_pe()
                    tokens = pe.flatten(2).transpose(1, 2).contiguous()
                self._pe = (dev, pe, tokens)
                self._pos_cast = {}
            return self._pe[1], self._pe[2]

    def _pos(self, dtype):
        """The dense PE tokens (1, 4096, 256) in ``dtype``."""
        _, tokens = self._pe_pair()
        with self._lock:
            cast = self._pos_cast.get(dtype)
            if cast is None or cast.device != tokens.device:
                cast = self._pos_cast[dtype] = tokens.to(dtype)
            return cast

    def image_pe(self):
        """The dense positional encoding (1, 256, 64, 64) float32 on the engine's device."""
        return self._pe_pair()[0]

    # -- per-embedding cache
    def _as_embedding(self, embedding):
        torch = self._torch
        emb = torch.as_tensor(embedding)
        if emb.ndim == 3:
            emb = emb[None]
        if emb.ndim != 4 or emb.shape[0] != 1 or emb.shape[1] != 256:
            raise ValueError(f"expected one embedding (1, 256, h, w) or (256, h, w), got shape {tuple(emb.shape)}")
        return emb.detach()

    def _weights(self, dtype=None):
        """(signature, :func:`upscale_consts` with the upscaling matrices in ``dtype``, default
        float32): the signature names the decoder tensors the cache is derived from (identity,
        version, device), so replaced or modified weights never meet stale derived ones."""
        torch = self._torch
        md = self.model.mask_decoder
        ps = self._params
        if ps is None:  # the Parameter objects stay; moving the model replaces their data
            l0 = md.transformer.layers[0]
            ps = self._params = upscale_params(md) + [
                l0.cross_attn_token_to_image.k_proj.weight, l0.cross_attn_token_to_image.k_proj.bias,
                l0.cross_attn_token_to_image.v_proj.weight, l0.cross_attn_token_to_image.v_proj.bias,
                l0.cross_attn_image_to_token.q_proj.weight, l0.cross_attn_image_to_token.q_proj.bias,
                self.model.prompt_encoder.no_mask_embed.weight]
        dtype = dtype or torch.float32
        sig = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in ps)
        with self._lock:
            if self._consts is not None and self._consts[0] == sig and dtype in self._consts[1]:
                return sig, self._consts[1][dtype]
        with torch.inference_mode():
            consts = upscale_consts(md)
            consts.update({k: consts[k].to(dtype) for k in ("w1", "b1", "w2", "b2")})
        with self._lock:
            if self._consts is None or self._consts[0] != sig:
                self._consts = (sig, {})
            self._consts[1][dtype] = consts
        return sig, consts

    def _workspace(self, dev):
        """This thread's buffers, or None where allocation is cheap or out= does not mix with
        autocast (CUDA, autocast)."""
        torch = self._torch
        if dev.type != "cpu" or torch.is_autocast_enabled(dev.type):
            return None
        ws = getattr(self._tls, "ws", None)
        if ws is None:
            ws = self._tls.ws = Workspace()
        return ws

    def _entry(self, emb, dev, weights=None, full: bool = False, dtype=None):
        """The cache entry for ``emb`` (a (1, 256, 64, 64) tensor, any dtype/device) on ``dev``
        with image tokens in ``dtype`` (default float32; under the caller's autocast state).
        Returns (entry, hit).

        The first use of an embedding makes a light entry (its image tokens only: the first box
        on a slice is decoded without layer 0's cached projections, ~4 ms more than a cached box
        instead of ~15 ms for building them); the second use, or ``full``, completes it."""
        torch = self._torch
        dtype = dtype or torch.float32
        sig, consts = weights if weights is not None else self._weights(dtype)
        mode = (torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None, sig, dtype)
        found = None
        with self._lock:
            for i, e in enumerate(self._cache):
                if e.matches(emb, dev, mode, torch):
                    self._cache.append(self._cache.pop(i))
                    self.cache_hits += 1
                    found = e
                    break
            else:
                self.cache_misses += 1
        if found is not None and found.full:
            return found, True
        _, pos = self._pe_pair()
        ws = self._workspace(dev) if dtype == torch.float32 else None
        if found is None:
            entry = _EmbeddingEntry.build(self.model, emb, dev, mode, torch, dtype)
            if full:
                entry = entry.completed(self.model, pos, consts, torch, ws)
        else:
            entry = found.completed(self.model, pos, consts, torch, ws)
        with self._lock:
            self._cache = [e for e in self._cache if not e.matches(emb, dev, mode, torch)]
            self._cache.append(entry)
            del self._cache[:-self.cache_size]
        return entry, found is not None

    def prepare(self, embedding) -> bool:
        """Do the box-independent work for ``embedding`` now (e.g. when a slice is shown, before
        the first box); True when it was not cached yet."""
        emb = self._as_embedding(embedding)
        with self._torch.inference_mode(), self.engine.precision_context():
            return not self._entry(emb, self.device, full=True, dtype=self.engine.decoder_dtype())[1]

    def clear_cache(self) -> None:
        with self._lock:
            self._cache = []

    def cache_info(self) -> dict:
        """{"hits", "misses", "size", "max"} of the per-embedding cache."""
        with self._lock:
            return {"hits": self.cache_hits, "misses": self.cache_misses, "size": len(self._cache),
                    "max": self.cache_size}

    # -- decoding
    def decode_logits(self, embedding, box_xyxy, hw):
        """Low-res logits (B, 1, 256, 256) float32 CPU for box(es) (x0, y0, x1, y1) in slice
        pixels of an (H, W) slice; ``embedding`` (1, 256, 64, 64) or (256, 64, 64), float32 or
        float16, numpy or torch. ``box_xyxy``: 4 numbers or (B, 4)."""
        import time

        torch = self._torch
        boxes = np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)
        boxes_1024 = np.stack([box_to_1024(b, hw) for b in boxes])
        emb = self._as_embedding(embedding)
        dev = self.device
        rec = self.record_stages
        stages: dict = {}
        clock = [time.perf_counter()]

        def mark(name):
            if rec:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                now = time.perf_counter()
                stages[name] = stages.get(name, 0.0) + now - clock[0]
                clock[0] = now

        with torch.inference_mode(), self.engine.precision_context():
            dtype = self.engine.decoder_dtype()
            pos = self._pos(dtype)
            box_t = torch.as_tensor(boxes_1024, dtype=torch.float, device=dev)[:, None, :]
            sparse, _ = self.model.prompt_encoder(points=None, boxes=box_t, masks=None)
            mark("prompt")
            weights = self._weights(dtype)
            entry, _hit = self._entry(emb, dev, weights, dtype=dtype)
            mark("cache")
            logits = decode_boxes(self.model.mask_decoder, entry, pos, sparse, mark, consts=weights[1],
                                   ws=self._workspace(dev))
            out = logits.float().cpu()
        mark("to_cpu")
        if rec:
            self.last_stages = stages
        return out

    @staticmethod
    def postprocess(logits, hw):
        """(bool mask (H, W), (row0, row1, col0, col1) half-open bounding box; empty -> (0,0,0,0))."""
        mask = postprocess_low_res_logits(logits, hw)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return mask, (0, 0, 0, 0)
        cols = np.flatnonzero(mask.any(axis=0))
        return mask, (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)

    def decode(self, embedding, box_xyxy, hw) -> np.ndarray:
        """bool mask (H, W) for one box (equal to ``engine.decode``)."""
        return self.postprocess(self.decode_logits(embedding, box_xyxy, hw), hw)[0]


class _EmbeddingEntry:
    """Box-independent decoder work for one embedding on one device (immutable once built).

    ``key``: a contiguous copy of the embedding as given (matched bitwise); ``keys0``: (1, N, C)
    image tokens ``embedding + no_mask_embed``. A full entry (:meth:`completed`) also has
    ``k0t``: (1, heads, c, N) layer 0 token->image key projection, transposed; ``v0``: (1, heads,
    N, c) its value projection; ``q0t``:
    (1, heads, c, N) layer 0 image->token query projection, transposed; ``k0z``: (1, N, 4*C/4)
    centred ``keys0`` @ the folded upscaling matrix of :func:`upscale_consts` (None when that
    path does not apply)."""

    __slots__ = ("device", "full", "k0t", "k0z", "key", "keys0", "mode", "q0t", "v0")

    def matches(self, emb, dev, mode, torch) -> bool:
        k = self.key
        if (self.device != dev or self.mode != mode or k.dtype != emb.dtype or k.shape != emb.shape
                or k.device != emb.device):
            return False
        return torch.equal(_bits(k, torch), _bits(emb.contiguous(), torch))

    @classmethod
    def build(cls, model, emb, dev, mode, torch, dtype):
        """The light entry for ``emb`` (1, C, h, w) on ``dev``, image tokens in ``dtype``."""
        self = cls()
        self.key = emb.contiguous().clone()
        self.device = dev
        self.mode = mode
        self.keys0 = _keys0(model, self.key, dev, torch).to(dtype)
        self.k0t = self.v0 = self.q0t = self.k0z = None
        self.full = False
        return self

    def completed(self, model, pos, consts, torch, ws=None):
        """A full entry with this one's key and tokens; ``ws``: a :class:`Workspace` for the
        temporaries (None allocates)."""
        import torch.nn.functional as F

        new = type(self)()
        new.key, new.device, new.mode, new.keys0, new.full = self.key, self.device, self.mode, self.keys0, True
        dtype = self.keys0.dtype
        keys0 = self.keys0 if dtype == torch.float32 else _keys0(model, self.key, self.device, torch)
        layer = model.mask_decoder.transformer.layers[0]
        kp = torch.add(keys0, pos, out=ws.get("nc0", keys0.shape, keys0)) if ws is not None else keys0 + pos
        t2i = layer.cross_attn_token_to_image
        i2t = layer.cross_attn_image_to_token
        # contiguous in the layouts the per-box products read (a strided operand costs a copy per box)
        k0 = split_heads(F.linear(kp, t2i.k_proj.weight, t2i.k_proj.bias), t2i.num_heads)
        new.k0t = k0.transpose(-1, -2).contiguous()
        new.v0 = split_heads(F.linear(keys0, t2i.v_proj.weight, t2i.v_proj.bias), t2i.num_heads).contiguous()
        # q_proj(kp)^T (C', N) directly: W_q @ kp^T + b_q
        q0t = torch.addmm(i2t.q_proj.bias[:, None], i2t.q_proj.weight, kp[0].t())
        new.q0t = q0t.view(1, i2t.num_heads, -1, q0t.shape[1])
        new.k0z = None
        if consts["fold"] is not None and not torch.is_autocast_enabled(self.device.type):
            mean = keys0.mean(-1, keepdim=True)
            keys0c = torch.sub(keys0, mean, out=ws.get("nc1", keys0.shape, keys0)) if ws is not None \
                else keys0 - mean
            new.k0z = torch.matmul(keys0c, consts["fold"]["z"])
        if dtype != torch.float32:  # derived in float32, kept in the decoder's dtype
            for name in ("k0t", "v0", "q0t", "k0z"):
                if getattr(new, name) is not None:
                    setattr(new, name, getattr(new, name).to(dtype))
        return new


def _keys0(model, emb, dev, torch):
    """(1, N, C) float32 image tokens ``embedding + no_mask_embed`` (the reference's
    ``emb.float() + dense``) on ``dev``."""
    no_mask = model.prompt_encoder.no_mask_embed.weight  # (1, C)
    tokens = emb.to(dev).flatten(2).transpose(1, 2)  # (1, N, C) view, the embedding's dtype
    keys0 = torch.empty(tokens.shape, dtype=torch.float32, device=dev)
    torch.add(tokens, no_mask, out=keys0)
    return keys0


def _bits(t, torch):
    """A same-size integer view of contiguous ``t``'s bytes (a bitwise, vectorised comparison)."""
    nbytes = t.numel() * t.element_size()
    flat = t.reshape(-1)
    for dt, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if nbytes % size == 0 and size >= t.element_size():
            try:
                return flat.view(torch.uint8).view(dt) if t.element_size() == 1 else flat.view(dt)
            except RuntimeError:  # pragma: no cover - odd layouts
                break
    return flat
