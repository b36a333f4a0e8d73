"""FastDecoder: an exact re-derivation of MedSAM's mask decoder for one box, for interactive use.

No Qt, no work at import time.
"""

from __future__ import annotations

import threading

import numpy as np

from .medsam_transforms import box_to_1024, postprocess_low_res_logits

class FastDecoder:
    """Box -> mask with a MedSAMEngine's prompt encoder and mask decoder, for interactive use.

    Same result as ``engine.decode`` (segment-anything's ``MaskDecoder`` with one box prompt,
    no mask input, ``multimask_output=False``, reference post-processing) up to float32
    summation order (logits within ~1e-6 relative; masks differ only where the reference's
    interpolated probability is within rounding of 0.5), computed by :func:`_decode_boxes`, a
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
      (113 x 256) product through the two layer norms (see :func:`_decode_boxes`), LayerNorm2d
      is a ``layer_norm`` over channels, and the (256, 256) pixel order is a permute + pixel
      shuffle at the end;
    * on the CPU the large intermediates are written into per-thread buffers (``out=``): with
      the app's huge-page memory tuning a fresh 4 MiB tensor costs ~1-7 ms of page faults.

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
        self._consts = None  # (weights signature, _upscale_consts)
        self._params = None  # the decoder tensors the caches derive from
        self._tls = threading.local()  # .ws: this thread's _Workspace
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
            return self._pe[1], self._pe[2]

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

    def _weights(self):
        """(signature, :func:`_upscale_consts`): the signature names the decoder tensors the cache
        is derived from (identity, version, device), so replaced or modified weights never meet
        stale derived ones."""
        torch = self._torch
        md = self.model.mask_decoder
        ps = self._params
        if ps is None:  # the Parameter objects stay; moving the model replaces their data
            l0 = md.transformer.layers[0]
            ps = self._params = _upscale_params(md) + [
                l0.cross_attn_token_to_image.k_proj.weight, l0.cross_attn_token_to_image.k_proj.bias,
                l0.cross_attn_token_to_image.v_proj.weight, l0.cross_attn_token_to_image.v_proj.bias,
                l0.cross_attn_image_to_token.q_proj.weight, l0.cross_attn_image_to_token.q_proj.bias,
                self.model.prompt_encoder.no_mask_embed.weight]
        sig = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in ps)
        with self._lock:
            if self._consts is not None and self._consts[0] == sig:
                return self._consts
        with torch.inference_mode():
            consts = _upscale_consts(md)
        with self._lock:
            self._consts = (sig, consts)
        return sig, consts

    def _workspace(self, dev):
        """This thread's buffers, or None where allocation is cheap or out= does not mix with
        autocast (CUDA, autocast)."""
        torch = self._torch
        if dev.type != "cpu" or torch.is_autocast_enabled(dev.type):
            return None
        ws = getattr(self._tls, "ws", None)
        if ws is None:
            ws = self._tls.ws = _Workspace()
        return ws

    def _entry(self, emb, dev, weights=None, full: bool = False):
        """The cache entry for ``emb`` (a (1, 256, 64, 64) tensor, any dtype/device) on ``dev``
        (under the caller's autocast state). Returns (entry, hit).

        The first use of an embedding makes a light entry (its image tokens only: the first box
        on a slice is decoded without layer 0's cached projections, ~4 ms more than a cached box
        instead of ~15 ms for building them); the second use, or ``full``, completes it."""
        torch = self._torch
        sig, consts = weights if weights is not None else self._weights()
        mode = (torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None, sig)
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
        ws = self._workspace(dev)
        if found is None:
            entry = _EmbeddingEntry.build(self.model, emb, dev, mode, torch)
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
            return not self._entry(emb, self.device, full=True)[1]

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

        _, pos = self._pe_pair()
        with torch.inference_mode(), self.engine.precision_context():
            box_t = torch.as_tensor(boxes_1024, dtype=torch.float, device=dev)[:, None, :]
            sparse, _ = self.model.prompt_encoder(points=None, boxes=box_t, masks=None)
            mark("prompt")
            weights = self._weights()
            entry, _hit = self._entry(emb, dev, weights)
            mark("cache")
            logits = _decode_boxes(self.model.mask_decoder, entry, pos, sparse, mark, consts=weights[1],
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


UPSCALE_CHUNK = 1024  # image tokens per upscaling step (intermediates stay in the CPU caches)


class _Workspace:
    """Reused CPU buffers for the large per-box intermediates (one per decoding thread).

    With the app's memory tuning (medsam_gui.runtime.tune_memory: tensors >= 2 MiB on
    transparent huge pages) every fresh 4 MiB tensor costs ~1-7 ms of page faults on the 2-core
    CPU, more than the product that fills it; writing into kept buffers (``out=``) avoids that.
    ``get(name, shape, like)`` returns the buffer ``name`` (re)allocated to ``shape`` with the
    dtype/device of ``like``. Buffers never leave the decoder (results are fresh tensors)."""

    def __init__(self) -> None:
        self.bufs: dict = {}

    def get(self, name: str, shape, like):
        import torch

        shape = torch.Size(shape)
        t = self.bufs.get(name)
        if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
            t = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.bufs[name] = t
        return t


class _EmbeddingEntry:
    """Box-independent decoder work for one embedding on one device (immutable once built).

    ``key``: a contiguous copy of the embedding as given (matched bitwise); ``keys0``: (1, N, C)
    image tokens ``embedding + no_mask_embed``. A full entry (:meth:`completed`) also has
    ``k0``/``v0``: (1, heads, N, c) layer 0 token->image key/value projections; ``q0t``:
    (1, heads, c, N) layer 0 image->token query projection, transposed; ``k0z``: (1, N, 4*C/4)
    centred ``keys0`` @ the folded upscaling matrix of :func:`_upscale_consts` (None when that
    path does not apply)."""

    __slots__ = ("device", "full", "k0", "k0z", "key", "keys0", "mode", "q0t", "v0")

    def matches(self, emb, dev, mode, torch) -> bool:
        k = self.key
        if (self.device != dev or self.mode != mode or k.dtype != emb.dtype or k.shape != emb.shape
                or k.device != emb.device):
            return False
        return torch.equal(_bits(k, torch), _bits(emb.contiguous(), torch))

    @classmethod
    def build(cls, model, emb, dev, mode, torch):
        """The light entry for ``emb`` (1, C, h, w) on ``dev``."""
        self = cls()
        self.key = emb.contiguous().clone()
        self.device = dev
        self.mode = mode
        no_mask = model.prompt_encoder.no_mask_embed.weight  # (1, C)
        tokens = emb.to(dev).flatten(2).transpose(1, 2)  # (1, N, C) view, the embedding's dtype
        keys0 = torch.empty(tokens.shape, dtype=torch.float32, device=dev)
        torch.add(tokens, no_mask, out=keys0)  # float32 like the reference's emb.float() + dense
        if keys0.dtype != no_mask.dtype:  # pragma: no cover - weights in another dtype
            keys0 = keys0.to(no_mask.dtype)
        self.keys0 = keys0
        self.k0 = self.v0 = self.q0t = self.k0z = None
        self.full = False
        return self

    def completed(self, model, pos, consts, torch, ws=None):
        """A full entry with this one's key and tokens; ``ws``: a :class:`_Workspace` for the
        temporaries (None allocates)."""
        import torch.nn.functional as F

        new = type(self)()
        new.key, new.device, new.mode, new.keys0, new.full = self.key, self.device, self.mode, self.keys0, True
        keys0 = self.keys0
        layer = model.mask_decoder.transformer.layers[0]
        kp = torch.add(keys0, pos, out=ws.get("nc0", keys0.shape, keys0)) if ws is not None else keys0 + pos
        t2i = layer.cross_attn_token_to_image
        i2t = layer.cross_attn_image_to_token
        new.k0 = _heads(F.linear(kp, t2i.k_proj.weight, t2i.k_proj.bias), t2i.num_heads)
        new.v0 = _heads(F.linear(keys0, t2i.v_proj.weight, t2i.v_proj.bias), t2i.num_heads)
        # q_proj(kp)^T (C', N) directly: W_q @ kp^T + b_q
        q0t = torch.addmm(i2t.q_proj.bias[:, None], i2t.q_proj.weight, kp[0].t())
        new.q0t = q0t.view(1, i2t.num_heads, -1, q0t.shape[1])
        new.k0z = None
        if consts["fold"] is not None and not torch.is_autocast_enabled(self.device.type):
            mean = keys0.mean(-1, keepdim=True)
            keys0c = torch.sub(keys0, mean, out=ws.get("nc1", keys0.shape, keys0)) if ws is not None \
                else keys0 - mean
            new.k0z = torch.matmul(keys0c, consts["fold"]["z"])
        return new


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


def _heads(x, nh: int):
    """(B, T, C) -> (B, nh, T, C // nh) (a view)."""
    b, t, c = x.shape
    return x.view(b, t, nh, c // nh).transpose(1, 2)


def _merge_heads(x):
    """(B, nh, T, c) -> (B, T, nh * c)."""
    b, nh, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * c)


def _tokens_to_image(att, q, img_pe, img):
    """segment-anything ``Attention(q, k=img_pe, v=img)`` for few query tokens without
    projecting the image tokens: q (B, T, C); img_pe, img (B or 1, N, C) -> (B, T, C).
    Scores ``x . (W_k^T q) + b_k . q``; values ``W_v (sum_n a_n x_n) + b_v``."""
    import math

    import torch
    import torch.nn.functional as F

    nh = att.num_heads
    qh = _heads(F.linear(q, att.q_proj.weight, att.q_proj.bias), nh)
    b, _, t, c = qh.shape
    qh = qh * (1.0 / math.sqrt(c))  # a power of two for SAM (c = 16): exact
    img_pe, img = img_pe.expand(b, -1, -1), img.expand(b, -1, -1)  # (1, N, C): shared by the boxes
    g = torch.matmul(qh, att.k_proj.weight.view(nh, c, -1)).reshape(b, nh * t, -1)  # (B, nh*T, C)
    bias = torch.matmul(qh, att.k_proj.bias.view(nh, c, 1)).reshape(b, 1, nh * t)
    if nh * t > 16:  # many score rows: the tall (N, nh*T) product is faster on the CPU
        s = torch.baddbmm(bias, img_pe, g.transpose(1, 2)).transpose(1, 2).contiguous()
    else:  # a few rows (the final attention of mask token 0): the wide one
        s = torch.baddbmm(bias.transpose(1, 2), g, img_pe.transpose(1, 2))
    a = torch.softmax(s, dim=-1)  # (B, nh*T, N)
    ax = torch.matmul(a, img)  # (B, nh*T, C)
    wv = att.v_proj.weight.view(nh, c, -1)  # (nh, c, C)
    o = torch.matmul(ax.view(b, nh, t, -1), wv.transpose(1, 2)) + att.v_proj.bias.view(nh, 1, c)
    return F.linear(_merge_heads(o), att.out_proj.weight, att.out_proj.bias)


def _image_to_tokens_add(att, residual, scores_from, tok_pe, tok, *, projected: bool, inplace: bool, out=None):
    """``residual + Attention(q=image, k=tok_pe, v=tok)`` (segment-anything's image->token
    attention) for N image tokens attending to few tokens. Returns (out (B, N, C), a (B, N,
    nh*T), m (B, nh*T, C)) with ``out = residual + a @ m``.

    ``projected``: ``scores_from`` is the cached ``q_proj(image + pe)`` as (1, nh, c, N);
    else it is the (B or 1, N, C) image + pe tokens and the query projection is folded into the keys
    (``x . (W_q^T k) + b_q . k``). Softmax runs over the tokens with the N axis last; the value
    and output projections and the output bias are folded into one (N, nh*T) @ (nh*T, C)
    product added to ``residual`` (in place when ``inplace``, else into ``out`` when given)."""
    import math

    import torch
    import torch.nn.functional as F

    nh = att.num_heads
    kh = _heads(F.linear(tok_pe, att.k_proj.weight, att.k_proj.bias), nh)  # (B, nh, T, c)
    vh = _heads(F.linear(tok, att.v_proj.weight, att.v_proj.bias), nh)
    b, _, t, c = kh.shape
    kh = kh * (1.0 / math.sqrt(c))
    if projected:
        s = torch.matmul(kh, scores_from)  # (B, nh, T, N)
    else:
        g = torch.matmul(kh, att.q_proj.weight.view(nh, c, -1)).reshape(b, nh * t, -1)  # (B, nh*T, C)
        bias = torch.matmul(kh, att.q_proj.bias.view(nh, c, 1)).reshape(b, 1, nh * t)
        s = torch.baddbmm(bias, scores_from.expand(b, -1, -1), g.transpose(1, 2)).transpose(1, 2).contiguous()
    n = s.shape[-1]
    a = torch.softmax(s.view(b, nh, t, n), dim=2).view(b, nh * t, n)
    wo = att.out_proj.weight.view(-1, nh, c).permute(1, 2, 0)  # (nh, c, C)
    # each image token's nh*T weights sum to nh (one softmax per head): the bias / nh per row
    m = (torch.matmul(vh, wo) + att.out_proj.bias / nh).reshape(b, nh * t, -1)  # (B, nh*T, C)
    a_t = a.transpose(1, 2).contiguous()  # (B, N, nh*T)
    if inplace:  # in-place ops are not autocast: one dtype for all three
        out = residual.baddbmm_(a_t.to(residual.dtype), m.to(residual.dtype))
    else:
        a_t = a_t.to(m.dtype)
        out = torch.baddbmm(residual, a_t, m, out=out) if out is not None else torch.baddbmm(residual, a_t, m)
    return out, a_t, m


def _upscale_params(md) -> list:
    """The decoder tensors :func:`_upscale_consts` and the cached ``k0z`` are derived from."""
    tr = md.transformer
    up = md.output_upscaling
    ps = [up[0].weight, up[0].bias, up[3].weight, up[3].bias]
    for layer in tr.layers:
        ps += [layer.norm4.weight, layer.norm4.bias]
    return ps


def _upscale_consts(md) -> dict:
    """The upscaling's transposed convolutions as per-token matrices, ``w1`` (C, 4*c1) with
    columns (di, dj, c1) and ``w2`` (c1, 4*c2) with columns (di2, dj2, c2), their biases, and,
    for the 2-layer SAM decoder, the constants that assemble the first one from layer 0's
    pre-norm image tokens and low-rank updates (``fold``: see :func:`_decode_boxes`)."""
    import torch

    tr = md.transformer
    ct1, ct2 = md.output_upscaling[0], md.output_upscaling[3]
    w1 = ct1.weight.permute(0, 2, 3, 1).reshape(ct1.weight.shape[0], -1).contiguous()
    b1 = ct1.bias.repeat(4)
    c = {"w1": w1, "b1": b1, "w2": ct2.weight.permute(0, 2, 3, 1).reshape(ct2.weight.shape[0], -1).contiguous(),
         "b2": ct2.bias.repeat(4), "fold": None}
    if len(tr.layers) == 2:
        n4a, n4b = tr.layers[0].norm4, tr.layers[1].norm4
        yb = n4b.weight[:, None] * w1  # diag(gamma_b) W1
        pyb = yb - yb.mean(0, keepdim=True)  # (I - 11^T/C) diag(gamma_b) W1
        c["fold"] = {"pyb": pyb, "z": n4a.weight[:, None] * pyb, "c_beta": torch.matmul(n4a.bias, pyb),
                     "const": torch.matmul(n4b.bias, w1) + b1}
    return c


def _upscale_logits(md, keys, hyper, consts: dict, grid, chunk: int | None = None, y=None, ws=None):
    """``hyper @ output_upscaling(keys)`` for mask token 0: keys (B, N, C) channels-last image
    tokens of an (h, w) = ``grid`` grid, hyper (B, C // 8) -> logits (B, 1, 4h, 4w). ``y``: the first
    transposed convolution's (B, N, 4*c1) output when already computed; ``ws``: a
    :class:`_Workspace` for the per-chunk products (None allocates).

    Both ConvTranspose2d(k=2, s=2) are per-token products (their 2x2 output blocks do not
    overlap): tokens (i, j) @ (C, (di, dj, c1)), LayerNorm2d over c1, GELU, @ (c1, (di2, dj2,
    c2)), GELU, dot hyper. Done ``chunk`` tokens at a time so the intermediates stay in cache;
    the (i, di, di2, j, dj, dj2) pixel order is a permute and a pixel shuffle at the end."""
    import torch
    import torch.nn.functional as F

    up = md.output_upscaling
    ct1, ln, act1, ct2, act2 = up[0], up[1], up[2], up[3], up[4]
    b, n = (keys if y is None else y).shape[:2]
    h, w = int(grid[0]), int(grid[1])
    chunk = int(chunk or UPSCALE_CHUNK)
    c1 = ct1.weight.shape[1]
    c2 = ct2.weight.shape[1]
    w1, b1, w2, b2 = consts["w1"], consts["b1"], consts["w2"], consts["b2"]
    g1 = getattr(act1, "approximate", "none")
    g2 = getattr(act2, "approximate", "none")
    gelu = isinstance(act1, torch.nn.GELU) and isinstance(act2, torch.nn.GELU)
    out = None
    for bi in range(b):
        hv = hyper[bi]
        for r0 in range(0, n, chunk):
            t1 = y[bi, r0:r0 + chunk] if y is not None else torch.addmm(b1, keys[bi, r0:r0 + chunk], w1)
            t1 = F.layer_norm(t1.reshape(-1, c1), (c1,), ln.weight, ln.bias, ln.eps)
            t1 = torch.ops.aten.gelu_(t1, approximate=g1) if gelu else act1(t1)
            z = torch.addmm(b2, t1, w2, out=ws.get("z", (t1.shape[0], w2.shape[1]), t1)) if ws is not None \
                else torch.addmm(b2, t1, w2)
            z = torch.ops.aten.gelu_(z, approximate=g2) if gelu else act2(z)
            part = torch.mv(z.view(-1, c2), hv.to(z.dtype))  # (rows * 16,)
            if out is None:
                out = torch.empty(b, n * 16, dtype=part.dtype, device=part.device)
            out[bi, r0 * 16:r0 * 16 + part.shape[0]] = part
    # (i, j, di, dj, di2, dj2) -> channels (di, di2, dj, dj2) of an (h, w) grid -> pixel shuffle
    out = out.view(b, h * w, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, 16, h, w)
    return F.pixel_shuffle(out, 4)


LN_ROWS = 1024  # rows per layer-norm call when writing into a workspace buffer (outputs < 2 MiB)


def _layer_norm_stats(norm, x, out=None):
    """``norm(x)`` and its per-row 1/std (B, N, 1) (``torch.native_layer_norm``), written into
    ``out`` when given: ``LN_ROWS`` rows at a time, each result (< 2 MiB, so plain heap memory
    even with the app's huge-page tuning) copied into ``out``; ``native_layer_norm.out`` would
    allocate a full-size result and copy it."""
    import torch

    shape, w, b, eps = list(norm.normalized_shape), norm.weight, norm.bias, norm.eps
    if out is None:
        res, _mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
        return res, rstd
    c = x.shape[-1]
    flat, dst = x.reshape(-1, c), out.view(-1, c)
    rstds = []
    for r0 in range(0, flat.shape[0], LN_ROWS):
        res, _mean, rstd = torch.native_layer_norm(flat[r0:r0 + LN_ROWS], shape, w, b, eps)
        dst[r0:r0 + LN_ROWS].copy_(res)
        rstds.append(rstd)
    return out, torch.cat(rstds).view(x.shape[:-1] + (1,))


def _decode_boxes(md, entry, pos, sparse, mark=lambda name: None, fold: bool = True, consts: dict | None = None,
                  ws: _Workspace | None = None):
    """segment-anything ``MaskDecoder.forward(..., multimask_output=False)[0]`` for box prompts
    (``sparse`` (B, 2, 256) from the prompt encoder, dense = no_mask_embed) on the cached
    embedding ``entry``; ``pos`` (1, N, 256) dense PE tokens; ``consts``: :func:`_upscale_consts`
    of ``md`` (computed when None); ``ws``: buffers for the (B, N, C) intermediates (CPU float32
    without autocast; None allocates). Returns logits (B, 1, 256, 256), a new tensor.

    ``fold`` (float32, 2-layer SAM decoder): the upscaling's first (N, C) @ (C, 4*c1) product is
    not run on the final image tokens ``keys2`` but assembled from the cache and two rank-(nh*T)
    products. With ``LN(x) = D (x P) G + beta`` (D = per-row 1/std, P = centring over channels,
    G = diag(gamma)), ``pre0 = keys0 + a0 @ m0``, ``keys1 = LN_a(pre0)``, ``pre1 = keys1 + a1 @
    m1`` and ``keys2 = LN_b(pre1)``:
    ``keys2 @ W1 = D_b (D_a (keys0 P @ Z + a0 @ (m0 P @ Z)) + a1 @ (m1 @ PY + 1 beta_a PY)) +
    beta_b W1`` with ``PY = P G_b W1`` and ``Z = G_a PY``; ``keys0 P @ Z`` is cached per embedding
    and ``a @ 1`` = heads (softmax rows), so the constant row rides in the second product.
    """
    import math

    import torch
    import torch.nn.functional as F

    tr = md.transformer
    consts = consts if consts is not None else _upscale_consts(md)
    b = sparse.shape[0]
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse.dtype), sparse], dim=1)
    fold = bool(fold and entry.k0z is not None and consts["fold"] is not None
                and not torch.is_autocast_enabled(sparse.device.type))
    n_img, c_img = entry.keys0.shape[1:]

    def buf(i):  # two (B, N, C) buffers used in turn; None: allocate
        return ws.get(f"nc{i}", (b, n_img, c_img), entry.keys0) if ws is not None else None

    # layer 0 (no PE in its self-attention); image-side projections come from the cache
    l0 = tr.layers[0]
    q = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
    att = l0.cross_attn_token_to_image
    if entry.full:
        qh = _heads(F.linear(q + tokens, att.q_proj.weight, att.q_proj.bias), att.num_heads)
        s = torch.matmul(qh, entry.k0.transpose(-1, -2)) / math.sqrt(qh.shape[-1])
        o = torch.matmul(torch.softmax(s, dim=-1), entry.v0)
        o = F.linear(_merge_heads(o), att.out_proj.weight, att.out_proj.bias)
        kp = entry.q0t  # the image->token scores come from the cached query projection
    else:  # light entry (first box on this embedding): as in the next layers
        kp = torch.add(entry.keys0, pos, out=ws.get("kp0", entry.keys0.shape, entry.keys0)) if ws is not None \
            else entry.keys0 + pos
        o = _tokens_to_image(att, q + tokens, kp, entry.keys0)
    q = l0.norm2(q + o)
    q = l0.norm3(q + l0.mlp(q))
    att = l0.cross_attn_image_to_token
    pre, a0, m0 = _image_to_tokens_add(att, entry.keys0, kp, q + tokens, q, projected=entry.full, inplace=False,
                                       out=buf(0))
    keys, rstd_a = _layer_norm_stats(l0.norm4, pre, out=buf(1))
    free = 0  # the buffer not holding ``keys``
    mark("layer0")

    # layers 1.. (with PE)
    for layer in tr.layers[1:]:
        qp = q + tokens
        q = layer.norm1(q + layer.self_attn(q=qp, k=qp, v=q))
        kp = torch.add(keys, pos, out=buf(free)) if ws is not None else keys + pos
        q = layer.norm2(q + _tokens_to_image(layer.cross_attn_token_to_image, q + tokens, kp, keys))
        q = layer.norm3(q + layer.mlp(q))
        att = layer.cross_attn_image_to_token
        pre, a1, m1 = _image_to_tokens_add(att, keys, kp, q + tokens, q, projected=False, inplace=True)
        keys, rstd_b = _layer_norm_stats(layer.norm4, pre, out=buf(free))  # kp is no longer needed
        free = 1 - free
    mark("layer1")

    # final token->image attention for mask token 0 only, then its hypernetwork MLP
    q1 = q[:, 1:2]
    kp = torch.add(keys, pos, out=buf(free)) if ws is not None else keys + pos
    o = _tokens_to_image(tr.final_attn_token_to_image, q1 + tokens[:, 1:2], kp, keys)
    hyper = md.output_hypernetworks_mlps[0](tr.norm_final_attn(q1 + o)[:, 0])  # (B, 32)
    mark("final")

    y = None
    if fold:
        cf = consts["fold"]
        nh = tr.layers[1].cross_attn_image_to_token.num_heads
        q0z = torch.matmul(m0 - m0.mean(-1, keepdim=True), cf["z"])  # (B, nh*T, 4*c1)
        q1z = torch.matmul(m1, cf["pyb"]) + cf["c_beta"] / nh
        # y = D_b D_a k0z + [D_b D_a a0 | D_b a1 | 1] @ [q0z; q1z; const]: one pass, one product
        scale = rstd_a * rstd_b  # (B, N, 1)
        k0, k1 = a0.shape[-1], a1.shape[-1]
        a_cat = ws.get("a_cat", (b, n_img, k0 + k1 + 1), a0) if ws is not None else a0.new_empty(b, n_img, k0 + k1 + 1)
        torch.mul(a0, scale, out=a_cat[..., :k0])
        torch.mul(a1, rstd_b, out=a_cat[..., k0:k0 + k1])
        a_cat[..., -1] = 1.0  # (B, N, 2*nh*T + 1)
        q_cat = torch.cat([q0z, q1z, cf["const"].expand(b, 1, -1)], dim=1)
        y = buf(free) if entry.k0z.shape[-1] == c_img else None  # kp is no longer needed
        y = torch.mul(entry.k0z, scale, out=y) if y is not None else entry.k0z * scale
        y.baddbmm_(a_cat, q_cat)  # (B, N, 4*c1)
    logits = _upscale_logits(md, keys, hyper, consts, entry.key.shape[-2:], y=y, ws=ws)
    mark("upscale")
    return logits
