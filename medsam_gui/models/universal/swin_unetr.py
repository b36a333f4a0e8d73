"""SwinUNETR backbone of the CLIP-Driven Universal Model (feature size 48, 3D), torch only.

Module and parameter names follow the official model (MONAI 0.9's SwinUNETR as copied into
ljwztc/CLIP-Driven-Universal-Model), so its state dict loads with strict=True. Behaviours the
released weights were trained with are kept on purpose:

- patch merging concatenates the 8 sub-grids in the old order, in which two entries repeat
  (x5 == x2, x6 == x3) and two sub-grids never appear (MONAI >= 1.5 changed this);
- windows are 7^3; a stage whose grid is <= 7 uses the grid as window, no shift, and the first
  n x n entries of the 7^3 relative-position index (not an index built for that window);
- tokens padded up to a multiple of the window are zeros after norm1 and take part in
  unshifted attention.

Tensors are (B, C, D, H, W) with D, H, W the three spatial axes of the input (the Universal
Model feeds them in RAS x, y, z order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WINDOW = 7
_MASK_VALUE = -100.0
_WINDOWS_PER_CHUNK = 64  # attention memory: chunk x heads x 343 x 343 floats


def _relative_position_index(w: int) -> torch.Tensor:
    """(w^3, w^3) int64 index into the (2w-1)^3 bias table, as Swin builds it."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w),) * 3, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) ** 2 + rel[..., 1] * (2 * w - 1) + rel[..., 2]


def _partition(x: torch.Tensor, w: tuple[int, int, int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * nW, w0*w1*w2, C), windows in (d, h, w) raster order."""
    b, d, h, wd, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], wd // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def _reverse(windows: torch.Tensor, w: tuple[int, int, int], b: int, d: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`_partition`: -> (B, D, H, W, C)."""
    x = windows.view(b, d // w[0], h // w[1], wd // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, wd, -1)


def _window_and_shift(size: tuple[int, int, int], shift: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per axis: the grid size (and no shift) where it is <= WINDOW, else (WINDOW, shift)."""
    win = tuple(s if s <= WINDOW else WINDOW for s in size)
    sh = tuple(0 if s <= WINDOW else shift for s in size)
    return win, sh


def _shift_mask(padded: tuple[int, int, int], win, shift, device) -> torch.Tensor:
    """(nW, n, n) additive mask: -100 between tokens from different regions of a shifted window."""
    region = torch.zeros(padded, device=device)
    count = 0
    cuts = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(win, shift)]
    for a in cuts[0]:
        for b in cuts[1]:
            for c in cuts[2]:
                region[a, b, c] = count
                count += 1
    ids = _partition(region[None, ..., None], win).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * WINDOW - 1) ** 3, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(WINDOW))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B*nW, n, C), mask (nW, n, n) or None -> (B*nW, n, C)."""
        bw, n, c = x.shape
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        out = torch.empty_like(x)
        nw = 1 if mask is None else mask.shape[0]  # windows are batch-major: row r is window r % nw
        for s in range(0, bw, _WINDOWS_PER_CHUNK):
            e = min(bw, s + _WINDOWS_PER_CHUNK)
            qkv = self.qkv(x[s:e]).reshape(e - s, n, 3, self.num_heads, c // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            if mask is not None:
                attn = attn + mask[torch.arange(s, e, device=x.device) % nw][:, None]
            attn = attn.softmax(dim=-1)
            out[s:e] = (attn @ v).transpose(1, 2).reshape(e - s, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, D, H, W, C) channel-last."""
        b, d, h, w, c = x.shape
        win, shift = _window_and_shift((d, h, w), self.shift)
        y = self.norm1(x)
        pads = [(wi - s % wi) % wi for wi, s in zip(win, (d, h, w))]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        dp, hp, wp = y.shape[1:4]
        shifted = any(s > 0 for s in shift)
        if shifted:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        y = self.attn(_partition(y, win), mask if shifted else None)
        y = _reverse(y, win, b, dp, hp, wp)
        if shifted:
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        x = x + y[:, :d, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x downsampling of channel-last tokens, with the official (old) sub-grid order."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:  # the official padding call, axes as it wrote them
            x = F.pad(x, (0, 0, 0, d % 2, 0, w % 2, 0, h % 2))
        parts = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
        x = torch.cat([x[:, a::2, b::2, c::2] for a, b, c in parts], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(dim, num_heads, 0), SwinBlock(dim, num_heads, WINDOW // 2)])
        self.downsample = PatchMerging(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, 2C, D/2, H/2, W/2)."""
        d, h, w = x.shape[2:]
        win, shift = _window_and_shift((d, h, w), WINDOW // 2)
        padded = tuple(-(-s // wi) * wi for s, wi in zip((d, h, w), win))
        mask = _shift_mask(padded, win, shift, x.device) if any(shift) else None
        x = x.permute(0, 2, 3, 4, 1)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.downsample(x).permute(0, 4, 1, 2, 3)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SwinTransformer(nn.Module):
    def __init__(self, in_channels: int, dim: int, heads=(3, 6, 12, 24)) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, dim)
        for i, nh in enumerate(heads):
            self.add_module(f"layers{i + 1}", nn.ModuleList([SwinStage(dim * 2**i, nh)]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """-> the 5 hidden states, each layer-normalised over channels (no affine)."""
        x = self.patch_embed(x)
        outs = [_channel_norm(x)]
        for stage in (self.layers1, self.layers2, self.layers3, self.layers4):
            x = stage[0](x)
            outs.append(_channel_norm(x))
        return outs


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 4, 1), [x.shape[1]]).permute(0, 4, 1, 2, 3)


class ConvOnly(nn.Module):
    """A bias-free 3D convolution stored as ``.conv`` (the official key layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, transposed: bool = False) -> None:
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(cin, cout, kernel, stride=kernel, bias=False)
        else:
            self.conv = nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResBlock(nn.Module):
    """Two 3^3 convs with instance norm (no affine) and leaky ReLU 0.01, 1^3 projected skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvOnly(cin, cout, 3)
        self.conv2 = ConvOnly(cout, cout, 3)
        self.conv3 = ConvOnly(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(F.instance_norm(self.conv1(x)), 0.01)
        out = F.instance_norm(self.conv2(out))
        skip = F.instance_norm(self.conv3(x)) if self.conv3 is not None else x
        return F.leaky_relu(out + skip, 0.01)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.layer = ResBlock(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv = ConvOnly(cin, cout, 2, transposed=True)
        self.conv_block = ResBlock(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class SwinUNETR(nn.Module):
    """Backbone: x (B, 1, 96k, 96k, 96k) -> (dec4 (B, 768, s/32...), out (B, 48, s, s, s))."""

    def __init__(self, in_channels: int = 1, feature_size: int = 48) -> None:
        super().__init__()
        f = feature_size
        self.swinViT = SwinTransformer(in_channels, f)
        self.encoder1 = EncoderBlock(in_channels, f)
        self.encoder2 = EncoderBlock(f, f)
        self.encoder3 = EncoderBlock(2 * f, 2 * f)
        self.encoder4 = EncoderBlock(4 * f, 4 * f)
        self.encoder10 = EncoderBlock(16 * f, 16 * f)
        self.decoder5 = DecoderBlock(16 * f, 8 * f)
        self.decoder4 = DecoderBlock(8 * f, 4 * f)
        self.decoder3 = DecoderBlock(4 * f, 2 * f)
        self.decoder2 = DecoderBlock(2 * f, f)
        self.decoder1 = DecoderBlock(f, f)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.swinViT(x)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return dec4, self.decoder1(dec0, enc0)
