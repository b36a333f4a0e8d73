"""LiteMedSAM's image encoder: a TinyViT-5M variant at 256x256 input (pure torch, no timm).

Architecture (facts of the official ``tiny_vit_sam.py``, MedSAM branch LiteMedSAM; own code):

- patch embedding: two 1x1 stride-1 conv+BN layers 3 -> 32 -> 64 with GELU between them (no
  downsampling: the first stage works at 256x256);
- stage 0 (64 ch, 256x256): 2 MBConv blocks (1x1 expand x4, 3x3 depthwise, 1x1 project, each
  conv+BN, GELU; residual before the last GELU), then patch merging to 128 ch at 128x128;
- stages 1-3 (128 / 160 / 320 ch; 2 / 6 / 2 blocks; 4 / 5 / 10 heads; windows 7 / 14 / 7):
  TinyViT blocks = windowed attention (LayerNorm inside, zero-padded windows, a learned bias per
  head indexed by the |dy|, |dx| offset of each token pair) + residual, a 3x3 depthwise conv+BN,
  then an MLP (LayerNorm, x4, GELU) + residual. Patch merging (1x1 conv+BN, GELU, 3x3 depthwise
  conv+BN stride 2, GELU, 1x1 conv+BN) follows stages 0-2; its stride is 1 into 320 channels;
- neck: 1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv, LayerNorm2d -> (B, 256, 64, 64).

Module and parameter names follow the official checkpoint (``patch_embed.seq.0.c.weight``,
``layers.1.blocks.0.attn.attention_biases``, ``neck.1.weight``, ...), so ``lite_medsam.pth``
loads with strict=True. No work at import time beyond class definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .medsam2.layers import LayerNorm2d  # LayerNorm over channels of (B, C, H, W), eps 1e-6 (same keys)

IMG_SIZE = 256
EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)
MLP_RATIO = 4
MBCONV_EXPAND = 4
LOCAL_CONV = 3
OUT_CHANS = 256


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (keys ``c.*`` and ``bn.*``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.c(x))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the single conv equal to conv+BN in eval mode (float32)."""
        bn = self.bn
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = self.c.weight * s[:, None, None, None]
        b = bn.bias - bn.running_mean * s
        return w, b


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand: int) -> None:
        super().__init__()
        hidden = dim * expand
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x):
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        y = self.conv3(y)
        return F.gelu(y + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) tokens -> (B, H'*W', out) tokens."""

    def __init__(self, resolution: int, dim: int, out: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out)
        self.conv2 = ConvBN(out, out, 3, stride=stride, groups=out)
        self.conv3 = ConvBN(out, out)

    def forward(self, x):
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.view(b, self.resolution, self.resolution, c).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


def offset_index(window: int) -> torch.Tensor:
    """(N, N) int64 with N = window**2: the bias-table column of each (query, key) token pair of a
    window, ``|dy| * window + |dx|`` (the official table lists the offsets in that order)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Multi-head attention over (B, N, C) window tokens with a per-head offset bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = dim // heads
        self.scale = self.key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        self.register_buffer("bias_index", offset_index(window), persistent=False)

    def bias(self) -> torch.Tensor:
        """(heads, N, N) additive attention bias."""
        return self.attention_biases[:, self.bias_index]

    def forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split(self.key_dim, dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.bias()
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def window_partition(x, window: int):
    """(B, H, W, C) -> ((B * nH * nW, window**2, C), padded H, padded W), zero-padding H and W up
    to multiples of ``window`` (bottom/right)."""
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), hp, wp


def window_merge(x, b: int, hp: int, wp: int, h: int, w: int, window: int):
    """Inverse of :func:`window_partition`: (B * nH * nW, window**2, C) -> (B, h, w, C)."""
    c = x.shape[-1]
    x = x.view(b, hp // window, wp // window, window, window, c).transpose(2, 3).reshape(b, hp, wp, c)
    return x[:, :h, :w]


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, window: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, heads, window)
        self.mlp = Mlp(dim, dim * MLP_RATIO)
        self.local_conv = ConvBN(dim, dim, LOCAL_CONV, groups=dim)

    def forward(self, x):  # (B, L, C)
        h = w = self.resolution
        b, n, c = x.shape
        if h == self.window:
            a = self.attn(x)
        else:
            win, hp, wp = window_partition(x.view(b, h, w, c), self.window)
            a = window_merge(self.attn(win), b, hp, wp, h, w, self.window).reshape(b, n, c)
        x = x + a
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class _Stage(nn.Module):
    """``blocks`` in order, then ``downsample`` (patch merging) when there is one."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class ConvLayer(_Stage):
    def __init__(self, dim: int, depth: int, downsample: nn.Module | None) -> None:
        super().__init__([MBConv(dim, MBCONV_EXPAND) for _ in range(depth)], downsample)


class BasicLayer(_Stage):
    def __init__(self, dim: int, resolution: int, depth: int, heads: int, window: int,
                 downsample: nn.Module | None) -> None:
        super().__init__([TinyViTBlock(dim, resolution, heads, window) for _ in range(depth)], downsample)


class TinyViT(nn.Module):
    """LiteMedSAM's TinyViT: (B, 3, 256, 256) float32 in [0, 1] -> (B, 256, 64, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(3, EMBED_DIMS[0])
        # stage input resolutions: 256, 128, 64, 64 (the merge into 320 channels keeps 64x64)
        res = [IMG_SIZE, IMG_SIZE // 2, IMG_SIZE // 4, IMG_SIZE // 4]
        self.layers = nn.ModuleList()
        for i, dim in enumerate(EMBED_DIMS):
            down = None
            if i < len(EMBED_DIMS) - 1:
                out = EMBED_DIMS[i + 1]
                down = PatchMerging(res[i], dim, out, stride=res[i] // res[i + 1])
            if i == 0:
                self.layers.append(ConvLayer(dim, DEPTHS[i], down))
            else:
                self.layers.append(BasicLayer(dim, res[i], DEPTHS[i], NUM_HEADS[i], WINDOW_SIZES[i], down))
        self.neck = nn.Sequential(
            nn.Conv2d(EMBED_DIMS[-1], OUT_CHANS, 1, bias=False),
            LayerNorm2d(OUT_CHANS),
            nn.Conv2d(OUT_CHANS, OUT_CHANS, 3, padding=1, bias=False),
            LayerNorm2d(OUT_CHANS),
        )

    def forward(self, x):
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, n, c = x.shape
        side = IMG_SIZE // 4
        return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))
