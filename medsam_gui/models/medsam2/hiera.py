"""Hiera image trunk of SAM2.1 (MedSAM2 uses Hiera-tiny at 512 x 512).

Hiera-tiny: embed 96, 1 head, stages [1, 2, 7, 2], window sizes per stage (8, 4, 14, 7),
global attention in blocks 5, 7, 9, query 2x2 max-pooling in the first block of stages 2-4
(blocks 1, 3, 10; dim and heads double there). Patch embedding conv 7x7 stride 4 pad 3.
Absolute position: ``pos_embed`` (1, 96, 7, 7) bicubically resized to the token grid plus
``pos_embed_window`` (1, 96, 8, 8) tiled.

Input (B, 3, 512, 512) float32 -> four maps (B, C, H, W): 96@128, 192@64, 384@32, 768@16.
Key names follow the official checkpoint (``image_encoder.trunk.*``).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .layers import MLP, sdpa


def _pool2x2(x: torch.Tensor) -> torch.Tensor:
    """Max-pool a (B, H, W, C) map by 2 (floor)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)


def _to_windows(x: torch.Tensor, win: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    ph, pw = (-h) % win, (-w) % win
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win, win, c), (hp, wp)


def _from_windows(x: torch.Tensor, win: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // ((hp // win) * (wp // win))
    x = x.reshape(b, hp // win, wp // win, win, win, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1], :]


class HieraAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, heads: int, pool_q: bool) -> None:
        super().__init__()
        self.heads = heads
        self.pool_q = pool_q
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).unbind(2)
        if self.pool_q:
            q = _pool2x2(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.heads, -1)
        out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, heads: int, window: int, pool_q: bool) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window, self.pool_q = dim, dim_out, window, pool_q
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HieraAttention(dim, dim_out, heads, pool_q)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, dim_out * 4, dim_out, 2, act=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool_q:
                shortcut = _pool2x2(shortcut)
        win = self.window
        if win > 0:
            hw = (x.shape[1], x.shape[2])
            x, padded = _to_windows(x, win)
        x = self.attn(x)
        if self.pool_q:
            win = self.window // 2
            hw = (shortcut.shape[1], shortcut.shape[2])
            padded = (hw[0] + (-hw[0]) % max(win, 1), hw[1] + (-hw[1]) % max(win, 1))
        if self.window > 0:
            x = _from_windows(x, win, padded, hw)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    def __init__(self, embed_dim: int = 96, heads: int = 1, stages=(1, 2, 7, 2),
                 windows=(8, 4, 14, 7), global_blocks=(5, 7, 9), bkg_size=(7, 7)) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *bkg_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, windows[0], windows[0]))
        ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        self.stage_ends = ends
        pool_blocks = {e + 1 for e in ends[:-1]}
        self.blocks = nn.ModuleList()
        dim, stage = embed_dim, 0
        for i in range(sum(stages)):
            win = 0 if i in global_blocks else windows[stage]
            dim_out = dim
            if i - 1 in ends:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(HieraBlock(dim, dim_out, heads, win, i in pool_blocks))
            dim = dim_out
        self.channel_list = [self.blocks[e].dim_out for e in ends[::-1]]

    def _pos(self, h: int, w: int) -> torch.Tensor:
        pe = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pe = pe + win.tile(1, 1, h // win.shape[-2], w // win.shape[-1])
        return pe.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)
        x = x + self._pos(x.shape[1], x.shape[2])
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                outs.append(x.permute(0, 3, 1, 2))
        return outs
