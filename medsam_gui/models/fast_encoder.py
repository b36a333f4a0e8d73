"""Fast MedSAM image-encoder paths (CPU int8, CUDA bf16/fp16 batched), exact to the reference.

The reference path (``MedSAMEngine`` with precision "fp32") runs segment-anything's own
``ImageEncoderViT`` one slice at a time; it stays the bit-exact baseline. This module adds,
without touching the reference modules' weights:

- :class:`FastImageEncoder`: the same ViT-B computation rebuilt around the reference modules
  (it shares their LayerNorms, patch embedding, position embedding, relative-position tables
  and neck; nothing is copied except the quantised Linear layers), with

  * attention through ``F.scaled_dot_product_attention`` with the decomposed relative-position
    bias passed as an additive float mask (the reference builds the (heads, N, N) score matrix,
    adds the bias and runs softmax explicitly: for the 4 global blocks that is 4096 x 4096 per
    head, ~0.8 GB per block). Queries are processed in chunks so the bias never exceeds
    ``chunk`` x N per head. The 64 -> 70 window padding of the reference is kept.
  * optionally (``quantize=True``, CPU only) dynamic int8 quantisation of the 48 nn.Linear
    layers (qkv, proj, mlp) with fbgemm (per-channel weights, per-tensor dynamic activations).
- :class:`BatchedEmbedder`: slices -> embeddings in batches on any device. On CUDA: pinned
  host buffers, non_blocking host->device copies on a side stream overlapping the previous
  batch's compute, preprocessing on the GPU (``medsam_transforms.preprocess_batch``), encoder
  under bf16/fp16 autocast, float16 embeddings copied back asynchronously. On the CPU the same
  code runs without streams (used by the tests).

Shapes: slices (H, W) uint8; encoder input (B, 3, 1024, 1024) float32 in [0, 1];
embeddings (B, 256, 64, 64). No Qt, no work at import time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .medsam_transforms import preprocess_batch, preprocess_slice

# --------------------------------------------------------------------------- fast encoder


def _get_rel_pos(size: int, rel_pos):
    """(size, size, C) relative-position table, as segment-anything's get_rel_pos for equal
    q/k sizes whose table already has 2*size-1 rows (true for ViT-B: 27 and 127 rows)."""
    import torch

    if rel_pos.shape[0] != 2 * size - 1:  # pragma: no cover - not for ViT-B at 1024
        import torch.nn.functional as F

        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                                size=2 * size - 1, mode="linear").reshape(-1, 2 * size - 1).permute(1, 0)
    coords = torch.arange(size, device=rel_pos.device)
    idx = coords[:, None] - coords[None, :] + (size - 1)
    return rel_pos[idx]


def _quantize_linear(linear):
    """A dynamic int8 (fbgemm, per-channel weights) copy of an nn.Linear (CPU)."""
    import copy

    import torch
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        previous = torch.backends.quantized.engine
        if "fbgemm" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "fbgemm"  # weights are packed for fbgemm here
        try:
            holder = nn.Sequential(copy.deepcopy(linear).float().cpu())
            q = quantize_dynamic(holder, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        finally:
            torch.backends.quantized.engine = previous
    return q[0]


class FastImageEncoder:
    """Forward-compatible replacement of a segment-anything ``ImageEncoderViT``.

    Built from a loaded reference encoder ``ref`` (shares its tensors). ``quantize``: int8
    dynamic Linear layers (CPU only). ``chunk``: query rows per attention call (bounds the
    additive bias to chunk x N per head). Call: ``enc(x (B, 3, 1024, 1024) float) -> (B, 256,
    64, 64)``; run it under ``torch.inference_mode()`` (and autocast for bf16/fp16).
    """

    def __init__(self, ref, *, quantize: bool = False, chunk: int = 1024) -> None:
        from torch import nn

        self.ref = ref
        self.quantize = bool(quantize)
        self.chunk = int(chunk)
        self.blocks = []
        for blk in ref.blocks:
            attn = blk.attn
            if self.quantize:
                lin = {n: _quantize_linear(m) for n, m in
                       (("qkv", attn.qkv), ("proj", attn.proj), ("lin1", blk.mlp.lin1), ("lin2", blk.mlp.lin2))}
            else:
                lin = {"qkv": attn.qkv, "proj": attn.proj, "lin1": blk.mlp.lin1, "lin2": blk.mlp.lin2}
            self.blocks.append(dict(blk=blk, heads=attn.num_heads, window=blk.window_size,
                                    use_rel_pos=attn.use_rel_pos, act=blk.mlp.act, **lin))
        self._rel_cache: dict = {}
        from .sam_loader import sam_modeling

        enc_mod = sam_modeling().image_encoder
        self._partition = enc_mod.window_partition
        self._unpartition = enc_mod.window_unpartition
        self._nn = nn

    # -- pieces
    def _rel_tables(self, i: int, blk, size: int, dtype, device):
        key = (i, size, dtype, str(device))
        t = self._rel_cache.get(key)
        if t is None:
            rh = _get_rel_pos(size, blk.attn.rel_pos_h).to(device=device, dtype=dtype)
            rw = _get_rel_pos(size, blk.attn.rel_pos_w).to(device=device, dtype=dtype)
            t = (rh, rw)
            self._rel_cache[key] = t
        return t

    def _attention(self, i: int, b: dict, x):
        import torch
        import torch.nn.functional as F

        B, H, W, C = x.shape
        nh = b["heads"]
        hd = C // nh
        qkv = b["qkv"](x).reshape(B, H * W, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        # autocast: q may be bf16 while the tables are fp32 -> compute the bias in q's dtype
        if b["use_rel_pos"]:
            rh, rw = self._rel_tables(i, b["blk"], H, q.dtype, q.device)
        n = H * W
        if b["use_rel_pos"]:
            # rel_h[b, h, y, x, ky] = q[y, x] . Rh[y, ky] (and rel_w with the column), flattened
            rq = q.reshape(B, nh, H, W, hd)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh).reshape(B, nh, n, H)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw).reshape(B, nh, n, W)
        step = min(n, self.chunk)
        outs = []
        for s in range(0, n, step):
            e = min(n, s + step)
            mask = None
            if b["use_rel_pos"]:
                mask = (rel_h[:, :, s:e, :, None] + rel_w[:, :, s:e, None, :]).reshape(B, nh, e - s, n)
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=mask))
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        o = o.permute(0, 2, 1, 3).reshape(B, H, W, C)
        return b["proj"](o)

    def _block(self, i: int, b: dict, x):
        blk = b["blk"]
        shortcut = x
        x = blk.norm1(x)
        if b["window"] > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = self._partition(x, b["window"])
        x = self._attention(i, b, x)
        if b["window"] > 0:
            x = self._unpartition(x, b["window"], pad_hw, (H, W))
        x = shortcut + x
        y = b["lin2"](b["act"](b["lin1"](blk.norm2(x))))
        return x + y

    def __call__(self, x):
        import torch

        ref = self.ref
        x = ref.patch_embed(x)
        if ref.pos_embed is not None:
            x = x + ref.pos_embed
        for i, b in enumerate(self.blocks):
            x = self._block(i, b, x)
        x = x.permute(0, 3, 1, 2)
        if x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            # the neck's LayerNorm2d computes its statistics in the input dtype: keep it in fp32
            with torch.autocast(device_type=x.device.type, enabled=False):
                return ref.neck(x.float())
        return ref.neck(x)


# --------------------------------------------------------------------------- batched embedder


class BatchedEmbedder:
    """Embeds many slices in batches with a (fast or reference) encoder on one device.

    ``encoder``: callable (B, 3, 1024, 1024) -> (B, 256, 64, 64) (a FastImageEncoder or the
    reference module); ``device``: torch.device; ``precision``: effective precision ("fp32",
    "bf16", "fp16", "int8"); ``batch_size``: slices per encoder call; ``method``: preprocessing
    ("spline" | "bicubic"); ``reference_preprocess``: use medsam.preprocess_slice (skimage, on the
    CPU) instead of :func:`preprocess_batch`.

    ``embed(slices)`` -> float32 CPU tensor (N, 256, 64, 64); ``iter_embed(slices)`` yields
    ``(start, float16 CPU tensor (b, 256, 64, 64))`` per batch as soon as it is on the host.
    On CUDA: pinned host buffers, host->device copies on a side stream overlapping the previous
    batch's compute, GPU preprocessing, float16 results copied back with non_blocking copies.
    """

    def __init__(self, encoder, device, precision: str = "fp32", *, batch_size: int = 8,
                 method: str = "spline", reference_preprocess: bool = False) -> None:
        self.encoder = encoder
        self.device = device
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.method = method
        self.reference_preprocess = bool(reference_preprocess)

    def _autocast(self):
        from .device import autocast

        return autocast(self.device, self.precision)

    def _inputs_cpu(self, group: Sequence[np.ndarray]):
        import torch

        shapes = {np.asarray(s).shape for s in group}
        if len(shapes) != 1:
            raise ValueError(f"slices of one batch must share a shape, got {sorted(shapes)}")
        return torch.from_numpy(np.ascontiguousarray(np.stack([np.asarray(s, dtype=np.uint8) for s in group])))

    def _encode(self, x_u8_dev, group):
        import torch

        with torch.inference_mode():
            if self.reference_preprocess:
                x = torch.cat([preprocess_slice(s) for s in group]).to(self.device)
            else:
                x = preprocess_batch(x_u8_dev, self.method)
            with self._autocast():
                emb = self.encoder(x)
            return emb.to(torch.float16)

    def iter_embed(self, slices: Iterable[np.ndarray]) -> Iterator[tuple[int, object]]:
        import torch

        slices = list(slices)
        groups = [slices[i:i + self.batch_size] for i in range(0, len(slices), self.batch_size)]
        cuda = self.device.type == "cuda"
        if not cuda:
            start = 0
            for g in groups:
                emb = self._encode(self._inputs_cpu(g), g)
                yield start, emb.cpu()
                start += len(g)
            return
        copy_stream = torch.cuda.Stream(device=self.device)
        compute = torch.cuda.current_stream(self.device)

        def upload(g):
            host = self._inputs_cpu(g).pin_memory()
            with torch.cuda.stream(copy_stream):
                dev = host.to(self.device, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(copy_stream)
            return host, dev, ev

        pending = None  # (start, host_out, event) of the batch being copied back
        nxt = upload(groups[0]) if groups else None
        start = 0
        for gi, g in enumerate(groups):
            host_in, dev_in, ev_in = nxt
            compute.wait_event(ev_in)
            dev_in.record_stream(compute)
            # start the next upload while this batch computes
            nxt = upload(groups[gi + 1]) if gi + 1 < len(groups) else None
            emb = self._encode(dev_in, g)
            host_out = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
            host_out.copy_(emb, non_blocking=True)
            ev_out = torch.cuda.Event()
            ev_out.record(compute)
            if pending is not None:
                pending[2].synchronize()
                yield pending[0], pending[1]
            pending = (start, host_out, ev_out)
            start += len(g)
            del host_in
        if pending is not None:
            pending[2].synchronize()
            yield pending[0], pending[1]

    def embed(self, slices: Iterable[np.ndarray]):
        import torch

        parts = [e for _, e in self.iter_embed(slices)]
        if not parts:
            return torch.empty(0, 256, 64, 64)
        return torch.cat(parts).float()
