"""Attention layers of the SAM2 heads: plain multi-head attention with optional internal
down-projection, the two-way transformer of the mask decoder, and RoPE attention for the
memory attention (key names as in the official checkpoint: ``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import MLP, sdpa
from .position import axial_rope_angles, rotate


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, downsample: int = 1, kv_dim: int | None = None) -> None:
        super().__init__()
        inner = dim // downsample
        kv_dim = kv_dim or dim
        self.heads = heads
        self.internal_dim = inner
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(kv_dim, inner)
        self.v_proj = nn.Linear(kv_dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        return self.out_proj(self._merge(sdpa(q, k, v)))


class RoPEAttention(Attention):
    """Attention with 2D axial rotary position on the queries (a square grid) and on the
    first ``n_k - num_k_exclude_rope`` keys (the grid repeated once per memory frame)."""

    def __init__(self, dim: int, heads: int = 1, kv_dim: int | None = None, theta: float = 10000.0,
                 grid: tuple[int, int] = (32, 32)) -> None:
        super().__init__(dim, heads, 1, kv_dim)
        self.theta = theta
        self._rot = axial_rope_angles(self.internal_dim // heads, grid[0], grid[1], theta)

    def forward(self, q, k, v, num_k_exclude_rope: int = 0):
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        n_q = q.shape[-2]
        if self._rot.shape[0] != n_q:
            side = int(math.sqrt(n_q))
            self._rot = axial_rope_angles(self.internal_dim // self.heads, side, side, self.theta)
        rot = self._rot.to(q.device)
        q = rotate(q, rot)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            reps = n_rope // n_q
            k_rot = rotate(k[:, :, :n_rope], rot.repeat(reps, 1))
            k = torch.cat([k_rot, k[:, :, n_rope:]], dim=2)
        return self.out_proj(self._merge(sdpa(q, k, v)))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
