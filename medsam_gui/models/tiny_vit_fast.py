"""Fast path of LiteMedSAM's TinyViT encoder: the same float32 computation, fewer and faster kernels.

:class:`FastTinyViT` is built from a loaded reference :class:`~medsam_gui.models.tiny_vit.TinyViT`
(eval mode) and computes the same embedding up to float32 summation order (measured within
1e-5 of the reference on the golden inputs; tests/test_litemedsam_golden.py):

- every conv+BatchNorm pair is folded into one convolution with a bias (eval-mode BN is affine),
  and each LayerNorm's affine into the projection after it (qkv, fc1);
- windowed attention normalises and projects only the real tokens: the official zero padding
  turns into a known constant q/k/v row (see :meth:`FastTinyViT._block`); the output
  projection runs after the crop;
- the input's three channels are equal (the slice repeated), so the first 1x1 conv takes one
  channel with the three weights summed (input (B, 1, 256, 256); (B, 3, ...) is accepted too);
- on the CPU, the GELUs after convolutions run inside oneDNN's fused convolution kernels (``torch.ops.mkldnn._convolution_pointwise``, as torch.compile emits
  them; probed once by :func:`fused_conv_available`, plain ops otherwise);
- convolutions run in channels-last memory format, so the token layout (B, H*W, C) of the
  transformer stages *is* an NHWC image: the depthwise "local" convs, patch merging and neck
  need no transposes (the neck's LayerNorm2d is ``F.layer_norm`` over the last dimension);
- the per-head offset bias is gathered once per block ((heads, N, N)); on the CPU the attention
  scores are scaled and biased in place, elsewhere ``F.scaled_dot_product_attention`` takes the
  bias as an additive mask;
- any batch of slices runs in one forward.

Shapes: input (B, 1 or 3, 256, 256) float32 in [0, 1]; output (B, 256, 64, 64) float32
(contiguous). Thread-safe to call (it only reads its tensors). No work at import time.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .tiny_vit import TinyViT


_FUSED_OK: bool | None = None


def fused_conv_available() -> bool:
    """True when oneDNN's fused convolution + GELU (``torch.ops.mkldnn._convolution_pointwise``,
    the kernels torch.compile uses on CPUs) exist in this torch build and agree with
    ``gelu(conv2d(...))`` on a small probe; checked once."""
    global _FUSED_OK
    if _FUSED_OK is None:
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 8, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g)
            y = torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 8, "gelu", [], "none")
            _FUSED_OK = bool(torch.allclose(y, F.gelu(F.conv2d(x, w, b, 1, 1, 1, 8)), atol=1e-5))
        except Exception:  # noqa: BLE001 - any failure: use the plain ops
            _FUSED_OK = False
    return _FUSED_OK


def _fold(cb) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = cb.folded()
    return w.contiguous(), b.contiguous()


def _fold_norm(norm, linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``linear(norm(x))`` as a linear map of the non-affine normalised x:
    ``W diag(gamma)`` and ``W beta + b``."""
    w = linear.weight * norm.weight[None, :]
    b = linear.bias + linear.weight @ norm.bias
    return w.contiguous(), b.contiguous()


class FastTinyViT:
    """Callable ``(B, C, 256, 256) -> (B, 256, 64, 64)`` with the reference encoder's weights.

    ``stop_point``: called with no argument before each of the encoder's blocks (MBConv and
    TinyViT blocks, as the reference's forward pre-hooks on them are); it may raise to abandon
    the pass."""

    def __init__(self, ref: TinyViT, *, channels_last: bool = True, fused: bool | None = None,
                 stop_point: Callable[[], None] | None = None) -> None:
        self.stop_point = stop_point
        self.channels_last = channels_last
        self.fused = channels_last and (fused_conv_available() if fused is None else fused)
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
                        qkv_w, qkv_b = _fold_norm(a.norm, a.qkv)
                        fc1_w, fc1_b = _fold_norm(blk.mlp.norm, blk.mlp.fc1)
                        st["blocks"].append({
                            "res": blk.resolution, "win": blk.window, "heads": a.heads, "scale": a.scale,
                            "eps": a.norm.eps, "qkv": (qkv_w, qkv_b), "proj": (a.proj.weight, a.proj.bias),
                            "bias": a.bias().detach().contiguous(),
                            "local": _fold(blk.local_conv),
                            "mlp_eps": blk.mlp.norm.eps, "fc1": (fc1_w, fc1_b),
                            "fc2": (blk.mlp.fc2.weight, blk.mlp.fc2.bias),
                        })
                ds = layer.downsample
                if ds is not None:
                    st["down"] = (tuple(_fold(c) for c in (ds.conv1, ds.conv2, ds.conv3)), ds.conv2.c.stride,
                                  ds.resolution)
                self.stages.append(st)
            n = ref.neck
            self.neck = (n[0].weight[:, :, 0, 0].contiguous(), (n[1].weight, n[1].bias, n[1].eps),
                         n[2].weight.contiguous(), (n[3].weight, n[3].bias, n[3].eps))
        self.device = w0.device

    # ------------------------------------------------------------------ helpers
    def _nhwc(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @staticmethod
    def _conv(x, wb, stride=1, groups=1):
        w, b = wb
        k = w.shape[-1]
        return F.conv2d(x, w, b, stride, k // 2, 1, groups)

    def _can_fuse(self, x) -> bool:
        return (self.fused and x.device.type == "cpu" and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last))

    def _conv_gelu(self, x, wb, stride=1, groups=1):
        """gelu(conv(x)): one oneDNN kernel on the CPU (exact erf GELU), else two ops."""
        if self._can_fuse(x):
            w, b = wb
            pad = w.shape[-1] // 2
            return torch.ops.mkldnn._convolution_pointwise(x, w, b, [pad, pad], [stride, stride], [1, 1], groups,
                                                           "gelu", [], "none")
        return F.gelu(self._conv(x, wb, stride, groups))

    def _mbconv(self, x, p):
        c1, c2, c3 = p
        y = self._conv_gelu(x, c1)
        y = self._conv_gelu(y, c2, groups=y.shape[1])
        return F.gelu(self._conv(y, c3) + x)

    def _merge(self, x, p):
        """(B, C, H, W) image -> (B, C', H', W') image (channels-last when enabled)."""
        (c1, c2, c3), stride, _ = p
        y = self._conv_gelu(x, c1)
        y = self._conv_gelu(y, c2, stride=stride[0], groups=y.shape[1])
        return self._conv(y, c3)

    @staticmethod
    def _attention(qkv, p):
        """(Bw, N, 3C) window tokens' q, k, v (head-interleaved as the official layout) -> (Bw, N, C)
        attention outputs before the output projection."""
        bw, n, c3 = qkv.shape
        heads = p["heads"]
        d = c3 // (3 * heads)
        qkv = qkv.view(bw, n, heads, 3, d).permute(3, 0, 2, 1, 4)
        bias = p["bias"] if p["bias"].dtype == qkv.dtype else p["bias"].to(qkv.dtype)
        if qkv.device.type == "cpu":  # explicit, in place: no masked-SDPA bookkeeping on the CPU
            q, k, v = qkv.contiguous()  # one copy; the batched products then run on dense heads
            attn = torch.matmul(q, k.transpose(-2, -1)).mul_(p["scale"]).add_(bias)
            o = torch.matmul(torch.softmax(attn, dim=-1), v)
        else:
            q, k, v = qkv
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return o.transpose(1, 2).reshape(bw, n, heads * d)

    def _block(self, x, p):
        """(B, H, W, C) tokens (an NHWC view) -> (B, H, W, C).

        The official block zero-pads the *input* tokens to whole windows, so a padded token
        enters the attention as LayerNorm(0) = beta, i.e. q/k/v = W beta + b: the constant
        ``p["qkv"][1]`` here (LayerNorm's affine is folded into the projection). Normalisation
        and projection therefore run on the real tokens only and the padding is filled with that
        constant; the output projection runs after the crop (it is per token)."""
        b, h, w, c = x.shape
        win = p["win"]
        y = F.layer_norm(x, (c,), None, None, eps=p["eps"])
        qkv = F.linear(y, *p["qkv"])  # (B, H, W, 3C)
        if h == win and w == win:
            o = self._attention(qkv.reshape(b, h * w, -1), p).view(b, h, w, c)
        else:
            ph, pw = (-h) % win, (-w) % win
            hp, wp = h + ph, w + pw
            if ph or pw:
                full = p["qkv"][1].to(qkv.dtype).expand(b, hp, wp, qkv.shape[-1]).contiguous()
                full[:, :h, :w] = qkv
                qkv = full
            t = qkv.view(b, hp // win, win, wp // win, win, -1).transpose(2, 3).reshape(-1, win * win, qkv.shape[-1])
            o = self._attention(t, p).view(b, hp // win, wp // win, win, win, c).transpose(2, 3)
            o = o.reshape(b, hp, wp, c)[:, :h, :w]
        x = x + F.linear(o, *p["proj"])
        img = x.permute(0, 3, 1, 2)  # NCHW view of the NHWC tokens (channels-last strides)
        if not self.channels_last:
            img = img.contiguous()
        x = self._conv(img, p["local"], groups=c).permute(0, 2, 3, 1)
        y = F.layer_norm(x, (c,), None, None, eps=p["mlp_eps"])
        y = F.linear(F.gelu(F.linear(y, *p["fc1"])), *p["fc2"])
        return x + y

    # ------------------------------------------------------------------ forward
    def __call__(self, x):
        w3, w1, b0 = self.pe0
        x = x.to(device=self.device, dtype=torch.float32)
        x = self._conv_gelu(x, (w1 if x.shape[1] == 1 else w3, b0))
        x = self._nhwc(x)  # (a 1-channel input gives no layout to follow: set it here)
        x = self._conv(x, self.pe1)
        st0 = self.stages[0]
        stop_point = self.stop_point
        for p in st0["blocks"]:
            if stop_point is not None:
                stop_point()
            x = self._mbconv(x, p)
        x = self._merge(x, st0["down"])
        for st in self.stages[1:]:
            t = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
            if not self.channels_last:
                t = t.contiguous()
            for p in st["blocks"]:
                if stop_point is not None:
                    stop_point()
                t = self._block(t, p)
            if "down" in st:
                img = t.permute(0, 3, 1, 2)
                x = self._merge(img if self.channels_last else img.contiguous(), st["down"])
            else:
                x = t
        # neck on (B, 64, 64, 320) NHWC tokens
        t = x
        w_in, ln1, w3x3, ln2 = self.neck
        t = F.linear(t, w_in)
        t = F.layer_norm(t, (t.shape[-1],), ln1[0], ln1[1], eps=ln1[2])
        img = t.permute(0, 3, 1, 2)
        if not self.channels_last:
            img = img.contiguous()
        t = F.conv2d(img, w3x3, None, 1, 1).permute(0, 2, 3, 1)
        t = F.layer_norm(t, (t.shape[-1],), ln2[0], ln2[1], eps=ln2[2])
        return t.permute(0, 3, 1, 2).contiguous()

    def to(self, device) -> "FastTinyViT":
        """Move every tensor to ``device`` (in place); returns self."""
        def mv(o):
            if isinstance(o, torch.Tensor):
                return o.to(device)
            if isinstance(o, tuple):
                return tuple(mv(v) for v in o)
            if isinstance(o, list):
                return [mv(v) for v in o]
            if isinstance(o, dict):
                return {k: mv(v) for k, v in o.items()}
            return o

        self.pe0, self.pe1, self.neck = mv(self.pe0), mv(self.pe1), mv(self.neck)
        self.stages = mv(self.stages)
        self.device = torch.device(device)
        return self

