"""The fused kernels LiteMedSAM's fast TinyViT runs on the CPU, with plain-op fallbacks.

oneDNN (bundled with torch's CPU builds) runs a convolution or a linear layer together with the
GELU or the residual add that follows it, in one pass over memory (the kernels torch.compile
emits on CPUs: ``torch.ops.mkldnn._convolution_pointwise`` and ``_linear_pointwise``), in
float32 or bfloat16. On the 2-core test machine its float32 linear layers are also 1.2-1.8x
faster than the BLAS behind ``F.linear`` for the encoder's shapes. :func:`onednn_fusions_available`
probes them once per dtype against the plain float32 ops; :class:`Kernels` uses them for CPU
tensors of those dtypes when enabled and the plain ops otherwise (other builds, GPUs, autocast),
with the same results up to summation order (float32) or bfloat16 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FUSED_DTYPES = (torch.float32, torch.bfloat16)
_ONEDNN_OK: dict = {}  # dtype -> probe result


def _probe(dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, 8, 1, 1, generator=g), torch.randn(8, generator=g)
    t = torch.randn(12, 8, generator=g)
    lw, lb = torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
    k, plain = Kernels(fused=True), Kernels(fused=False)
    xd, wd, bd, td, lwd, lbd = (v.to(dtype) for v in (x, w, b, t, lw, lb))
    pairs = [
        (k.conv(xd, (wd, bd), gelu=True), plain.conv(x, (w, b), gelu=True)),
        (k.conv_add(xd, xd, (wd, bd)), plain.conv_add(x, x, (w, b))),
        (k.linear(td, (lwd, lbd), gelu=True), plain.linear(t, (lw, lb), gelu=True)),
        (k.linear_add(td, td, (lwd[:8], bd)), plain.linear_add(t, t, (lw[:8], b))),
    ]
    tol = 1e-5 if dtype == torch.float32 else 0.1  # bfloat16 keeps 8 bits: ~0.4 % per rounding
    return all(a.dtype == dtype and torch.allclose(a.float(), p, atol=tol, rtol=tol) for a, p in pairs)


def onednn_fusions_available(dtype=torch.float32) -> bool:
    """True when oneDNN's fused convolution and linear kernels for ``dtype`` (float32 or
    bfloat16) exist in this torch build and agree with the plain float32 ops on small probes;
    checked once per dtype."""
    if dtype not in _ONEDNN_OK:
        try:
            _ONEDNN_OK[dtype] = dtype in FUSED_DTYPES and _probe(dtype)
        except Exception:  # noqa: BLE001 - any failure: the plain ops
            _ONEDNN_OK[dtype] = False
    return _ONEDNN_OK[dtype]


class Kernels:
    """Convolutions and linear layers with an optional GELU or residual add after them.

    ``wb`` is a (weight, bias) pair (bias may be None) of the input's dtype; convolutions pad
    ``k // 2``."""

    def __init__(self, fused: bool) -> None:
        self.fused = fused

    def _cpu_fusable(self, x) -> bool:
        return self.fused and x.device.type == "cpu" and x.dtype in FUSED_DTYPES

    def _fuse_conv(self, x) -> bool:
        return self._cpu_fusable(x) and x.is_contiguous(memory_format=torch.channels_last)

    def conv(self, x, wb, stride: int = 1, groups: int = 1, gelu: bool = False):
        """``[gelu](conv2d(x))``."""
        w, b = wb
        pad = w.shape[-1] // 2
        if self._fuse_conv(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, b, [pad, pad], [stride, stride], [1, 1], groups, "gelu" if gelu else "none", [], "none")
        y = F.conv2d(x, w, b, stride, pad, 1, groups)
        return F.gelu(y) if gelu else y

    def conv_add(self, x, other, wb):
        """``conv2d(x) + other`` (1x1, stride 1)."""
        w, b = wb
        if self._fuse_conv(x) and other.is_contiguous(memory_format=torch.channels_last):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, w, b, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None)
        return F.conv2d(x, w, b) + other

    def linear(self, x, wb, gelu: bool = False):
        """``[gelu](x @ W.T + b)`` for a 2-D ``x``."""
        w, b = wb
        if self._cpu_fusable(x) and x.is_contiguous():
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
        y = F.linear(x, w, b)
        return F.gelu(y) if gelu else y

    def linear_add(self, x, other, wb):
        """``x @ W.T + b + other`` for 2-D ``x`` and ``other``."""
        w, b = wb
        if self._cpu_fusable(x) and x.is_contiguous() and other.is_contiguous():
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
        return F.linear(x, w, b) + other
