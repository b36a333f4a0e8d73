"""Fast path of LiteMedSAM's TinyViT encoder: the same float32 computation, fewer and faster kernels.

:class:`FastTinyViT` is built from a loaded reference :class:`~medsam_gui.models.tiny_vit.TinyViT`
(eval mode) and computes the same embedding up to float32 summation order (within 1e-4 of the
reference on the golden inputs; tests/test_litemedsam_golden.py):

- every conv+BatchNorm pair is folded into one convolution with a bias (eval-mode BN is affine),
  each LayerNorm's affine into the projection after it (qkv, fc1), and the attention scale into
  the query rows of qkv;
- on the CPU, convolutions and linear layers run with the GELU or residual add after them in
  one oneDNN kernel (:mod:`~medsam_gui.models.tiny_vit_kernels`; plain ops otherwise); other
  devices run the window attention as one fused ``scaled_dot_product_attention``;
- convolutions run in channels-last memory format, so the token layout (B, H, W, C) of the
  transformer stages *is* an NHWC image: local convs, patch merging and neck need no transposes;
- on the CPU the work is cut into pieces that stay in the processor's caches instead of
  streaming 64 MiB intermediates through memory: the 256x256 MBConv blocks run in bands of
  rows (with one halo row for the 3x3 depthwise conv), the attention in bands of window rows,
  the MLP in chunks of tokens. Other devices take the whole image at once;
- windowed attention normalises and projects the real tokens; the official zero padding of the
  block's input becomes zero rows of the normalised tokens (LayerNorm(0) = beta, folded into
  the qkv bias); qkv's output rows are reordered (q, k, v) x heads so that one copy splits the
  windows and heads;
- the input's three channels are equal (the slice repeated), so the first 1x1 conv takes one
  channel with the three weights summed (input (B, 1, 256, 256); (B, 3, ...) is accepted too);
- any batch of slices runs in one forward;
- ``dtype=torch.bfloat16`` keeps weights and activations in bfloat16 through oneDNN's bf16
  kernels (for CPUs with bf16 units, ~1.8x faster; the embedding moves by ~1 % relative, the
  masks by Dice >= 0.99: tests/test_litemedsam_bf16.py).

Shapes: input (B, 1 or 3, 256, 256) float in [0, 1]; output (B, 256, 64, 64) float32
(contiguous). Thread-safe to call (it only reads its tensors). No work at import time.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .tiny_vit import TinyViT
from .tiny_vit_kernels import Kernels, onednn_fusions_available

CACHE_FLOATS = 1 << 19  # 2 MiB of float32: the size of a band's or chunk's widest intermediate


def _fold(cb) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = cb.folded()
    return w.contiguous(), b.contiguous()


def _fold_norm(norm, linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``linear(norm(x))`` as a linear map of the non-affine normalised x:
    ``W diag(gamma)`` and ``W beta + b``."""
    w = linear.weight * norm.weight[None, :]
    b = linear.bias + linear.weight @ norm.bias
    return w.contiguous(), b.contiguous()


def _qkv(attn) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded qkv projection with output rows reordered from the official (heads, q|k|v, d)
    to (q|k|v, heads, d), the query rows scaled by the attention scale."""
    w, b = _fold_norm(attn.norm, attn.qkv)
    heads, d = attn.heads, attn.key_dim
    order = torch.arange(3 * heads * d).view(heads, 3, d).transpose(0, 1).reshape(-1)
    scale = torch.ones(3, heads * d, dtype=w.dtype, device=w.device)
    scale[0] = attn.scale
    scale = scale.reshape(-1)
    return (w[order] * scale[:, None]).contiguous(), (b[order] * scale).contiguous()


def _ceil_to(n: int, step: int) -> int:
    return -(-n // step) * step


class FastTinyViT:
    """Callable ``(B, C, 256, 256) -> (B, 256, 64, 64)`` with the reference encoder's weights.

    ``stop_point``: called with no argument before each of the encoder's blocks (MBConv and
    TinyViT blocks, as the reference's forward pre-hooks on them are); it may raise to abandon
    the pass. ``pause_point``: called with no argument between the pieces of a block (a few ms
    apart on the CPU; e.g. to serve waiting boxes). ``fused``: oneDNN's fused kernels on the CPU
    (default: when available);
    ``tiled``: cache-sized pieces on the CPU (default True); ``dtype``: of the weights and
    activations (float32, or bfloat16 for CPUs with bf16 units; GPUs use autocast instead)."""

    def __init__(self, ref: TinyViT, *, channels_last: bool = True, fused: bool | None = None,
                 tiled: bool = True, stop_point: Callable[[], None] | None = None,
                 pause_point: Callable[[], None] | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.stop_point = stop_point
        self.pause_point = pause_point
        self.channels_last = channels_last
        self.fused = channels_last and (onednn_fusions_available(dtype) if fused is None else fused)
        self.tiled = tiled
        self.k = Kernels(self.fused)
        with torch.no_grad():
            w0, b0 = _fold(ref.patch_embed.seq[0])
            self.pe0 = (w0, w0.sum(dim=1, keepdim=True), b0)
            self.pe1 = _fold(ref.patch_embed.seq[2])
            self.stages: list[dict] = []
            for i, layer in enumerate(ref.layers):
                st: dict = {"blocks": []}
                for blk in layer.blocks:
                    if i == 0:
                        st["blocks"].append(tuple(_fold(c) for c in (blk.conv1, blk.conv2, blk.conv3)))
                    else:
                        a = blk.attn
                        st["blocks"].append({
                            "win": blk.window, "heads": a.heads, "eps": a.norm.eps, "qkv": _qkv(a),
                            "proj": (a.proj.weight.contiguous(), a.proj.bias.contiguous()),
                            "bias": a.bias().detach().contiguous(),
                            "local": _fold(blk.local_conv),
                            "mlp_eps": blk.mlp.norm.eps, "fc1": _fold_norm(blk.mlp.norm, blk.mlp.fc1),
                            "fc2": (blk.mlp.fc2.weight.contiguous(), blk.mlp.fc2.bias.contiguous()),
                        })
                ds = layer.downsample
                if ds is not None:
                    st["down"] = (tuple(_fold(c) for c in (ds.conv1, ds.conv2, ds.conv3)), ds.conv2.c.stride[0])
                self.stages.append(st)
            n = ref.neck
            self.neck = ((n[0].weight[:, :, 0, 0].contiguous(), None), (n[1].weight, n[1].bias, n[1].eps),
                         n[2].weight.contiguous(), (n[3].weight, n[3].bias, n[3].eps))
        self.device = w0.device
        self.dtype = torch.float32
        if dtype != torch.float32:
            self._map(lambda t: t.to(dtype) if t.is_floating_point() else t)
            self.dtype = dtype

    # ------------------------------------------------------------------ pieces
    def _pieces(self, x) -> bool:
        return self.tiled and x.device.type == "cpu"

    def _pause(self) -> None:
        if self.pause_point is not None:
            self.pause_point()

    def _nhwc(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def _bands(self, x, hidden: int, stride: int = 1):
        """Output row bands ``(o0, o1, a, b, skip)`` of a 1x1 -> 3x3 depthwise (``stride``) chain on
        the (B, C, H, W) image ``x`` whose widest intermediate has ``hidden`` channels: input rows
        [a, b) give output rows [o0, o1) from the depthwise conv's output row ``skip`` on (it pads
        one row, which is the image's zero padding only at the image's edges). One band for the
        whole image off the CPU or without tiling."""
        h, w = x.shape[-2:]
        oh = (h - 1) // stride + 1
        rows = max(1, CACHE_FLOATS // (hidden * w * stride)) if self._pieces(x) else oh
        for o0 in range(0, oh, rows):
            o1 = min(oh, o0 + rows)
            yield o0, o1, max(0, stride * (o0 - 1)), min(h, stride * (o1 - 1) + 2), 1 if o0 else 0

    def _expand_dw(self, x, c1, c2, stride: int = 1):
        """gelu(dw3x3(gelu(conv1(x))))."""
        y = self.k.conv(x, c1, gelu=True)
        return self.k.conv(y, c2, stride=stride, groups=y.shape[1], gelu=True)

    def _mbconv(self, x, p):
        """gelu(x + conv3(gelu(dw3x3(gelu(conv1(x)))))) on a (B, C, H, W) image, in bands of rows
        on the CPU: each band's expanded intermediate (4C channels) stays in the cache."""
        c1, c2, c3 = p
        out = torch.empty_like(x)
        for o0, o1, a, b, skip in self._bands(x, c1[0].shape[0]):
            self._pause()
            y = self._expand_dw(x[:, :, a:b], c1, c2)[:, :, skip:skip + o1 - o0]
            out[:, :, o0:o1] = F.gelu(self.k.conv_add(self._nhwc(y), x[:, :, o0:o1], c3))
        return out

    def _merge(self, x, p):
        """Patch merging: (B, C, H, W) image -> (B, C', H', W') image (channels-last when
        enabled), in bands of output rows on the CPU."""
        (c1, c2, c3), stride = p
        bands = []
        for o0, o1, a, b, skip in self._bands(x, c1[0].shape[0], stride):
            self._pause()
            y = self._expand_dw(x[:, :, a:b], c1, c2, stride)[:, :, skip:skip + o1 - o0]
            bands.append(self.k.conv(self._nhwc(y), c3))
        return self._nhwc(torch.cat(bands, dim=2)) if len(bands) > 1 else bands[0]

    def _attend(self, x, p):
        """x + proj(window attention(LN(x))) for (B, H, W, C) contiguous tokens, in bands of
        window rows on the CPU."""
        b, h, w, c = x.shape
        win, heads = p["win"], p["heads"]
        d, n = c // heads, win * win
        wp = _ceil_to(w, win)
        nwc = wp // win
        pieces = self._pieces(x)
        band = win * max(1, CACHE_FLOATS // (3 * c * win * wp)) if pieces else _ceil_to(h, win)
        out = torch.empty_like(x)
        for r0 in range(0, h, band):
            self._pause()
            r1 = min(h, r0 + band)
            rb = r1 - r0
            rbp = _ceil_to(rb, win)
            xb = x[:, r0:r1]
            y = F.layer_norm(xb, (c,), None, None, eps=p["eps"])
            if rbp != rb or wp != w:
                y = F.pad(y, (0, 0, 0, wp - w, 0, rbp - rb))  # the official zero tokens, normalised
            nwr = rbp // win
            qkv = self.k.linear(y.reshape(-1, c), p["qkv"])
            t = qkv.view(b, nwr, win, nwc, win, 3, heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
            q, kk, v = t.reshape(3, -1, n, d)  # (windows x heads, N, d) each, one copy
            bias = p["bias"] if p["bias"].dtype == q.dtype else p["bias"].to(q.dtype)
            if pieces:  # explicit and in place: cheaper than masked SDPA on the CPU
                attn = torch.bmm(q, kk.transpose(1, 2))
                attn.view(-1, heads, n, n).add_(bias)
                o = torch.bmm(torch.softmax(attn, dim=-1), v)
            else:  # GPUs: one fused kernel (the scale is in q already)
                o = F.scaled_dot_product_attention(*(u.view(-1, heads, n, d) for u in (q, kk, v)), attn_mask=bias,
                                                   scale=1.0).view(-1, n, d)
            o = o.view(b, nwr, nwc, heads, win, win, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, c)
            proj = self.k.linear(o, p["proj"]).view(b, rbp, wp, c)
            torch.add(xb, proj[:, :rb, :w], out=out[:, r0:r1])
        return out

    def _mlp(self, x, p):
        """x + fc2(gelu(fc1(LN(x)))) for (B, H, W, C) contiguous tokens, in chunks of tokens on
        the CPU."""
        c = x.shape[-1]
        flat = x.view(-1, c)
        hidden = p["fc1"][0].shape[0]
        chunk = max(64, CACHE_FLOATS // hidden) if self._pieces(x) else flat.shape[0]
        out = torch.empty_like(flat)
        for s in range(0, flat.shape[0], chunk):
            self._pause()
            xs = flat[s:s + chunk]
            y = F.layer_norm(xs, (c,), None, None, eps=p["mlp_eps"])
            out[s:s + chunk] = self.k.linear_add(self.k.linear(y, p["fc1"], gelu=True), xs, p["fc2"])
        return out.view(x.shape)

    def _block(self, x, p):
        """(B, H, W, C) contiguous tokens -> the same."""
        c = x.shape[-1]
        x = self._attend(x, p)
        img = self._nhwc(x.permute(0, 3, 1, 2))  # a view when channels-last
        x = self.k.conv(img, p["local"], groups=c).permute(0, 2, 3, 1).contiguous()
        return self._mlp(x, p)

    # ------------------------------------------------------------------ forward
    def __call__(self, x):
        w3, w1, b0 = self.pe0
        x = x.to(device=self.device, dtype=self.dtype)
        x = self._nhwc(x)  # (a 1-channel input gives no layout to follow: set it here)
        x = self.k.conv(x, (w1 if x.shape[1] == 1 else w3, b0), gelu=True)
        x = self.k.conv(self._nhwc(x), self.pe1)
        st0 = self.stages[0]
        stop_point = self.stop_point
        for p in st0["blocks"]:
            if stop_point is not None:
                stop_point()
            x = self._mbconv(self._nhwc(x), p)
        x = self._merge(x, st0["down"])
        for st in self.stages[1:]:
            t = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): a no-op when channels-last
            for p in st["blocks"]:
                if stop_point is not None:
                    stop_point()
                t = self._block(t, p)
            x = self._merge(self._nhwc(t.permute(0, 3, 1, 2)), st["down"]) if "down" in st else t
        return self._neck(x)

    def _neck(self, t):
        """(B, 64, 64, 320) tokens -> (B, 256, 64, 64) contiguous."""
        lin, ln1, w3x3, ln2 = self.neck
        b, h, w, c = t.shape
        t = self.k.linear(t.reshape(-1, c), lin).view(b, h, w, -1)
        t = F.layer_norm(t, (t.shape[-1],), ln1[0], ln1[1], eps=ln1[2])
        img = self._nhwc(t.permute(0, 3, 1, 2))
        t = self.k.conv(img, (w3x3, None)).permute(0, 2, 3, 1)
        t = F.layer_norm(t, (t.shape[-1],), ln2[0], ln2[1], eps=ln2[2])
        return t.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)

    def to(self, device) -> "FastTinyViT":
        """Move every tensor to ``device`` (in place); returns self."""
        self._map(lambda t: t.to(device))
        self.device = torch.device(device)
        return self

    def _map(self, fn) -> None:
        """Replace every tensor ``t`` held by ``fn(t)``."""
        def mv(o):
            if isinstance(o, torch.Tensor):
                return fn(o)
            if isinstance(o, tuple):
                return tuple(mv(v) for v in o)
            if isinstance(o, list):
                return [mv(v) for v in o]
            if isinstance(o, dict):
                return {k: mv(v) for k, v in o.items()}
            return o

        self.pe0, self.pe1, self.neck = mv(self.pe0), mv(self.pe1), mv(self.neck)
        self.stages = mv(self.stages)
