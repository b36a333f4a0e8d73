"""Positional encodings used by MedSAM2 / SAM2.1.

* :class:`SinePositionEncoding` - 2D sine/cosine map (B, C, H, W) for the FPN levels and the
  memory encoder (normalised coordinates 1..H / H * 2pi, temperature 10000; channels are
  [y-part, x-part], each alternating sin/cos of one frequency).
* :class:`RandomFourierEncoding` - SAM's Gaussian random-frequency encoding (buffer
  ``positional_encoding_gaussian_matrix`` (2, C/2)), for prompts and the dense decoder PE.
* :func:`axial_rope_angles`, :func:`rotate` - 2D axial rotary embedding (RoPE) of the memory
  attention: token t of a w x h grid gets angles x*f_j (first half of the pairs) and y*f_j.
* :func:`sine_1d` - 1D sine/cos encoding of (scaled) frame distances for object pointers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEncoding(nn.Module):
    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pe = self._cache.get((h, w))
        if pe is None or pe.device != x.device:
            eps = 1e-6
            ys = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
            xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
            ys = ys / (ys[-1] + eps) * self.scale
            xs = xs / (xs[-1] + eps) * self.scale
            dim_t = torch.arange(self.half, dtype=torch.float32, device=x.device)
            dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.half)

            def enc(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half) [sin f0, cos f0, ...]
                a = v[:, None] / dim_t
                return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=2).flatten(1)

            py = enc(ys)[:, None, :].expand(h, w, self.half)
            px = enc(xs)[None, :, :].expand(h, w, self.half)
            pe = torch.cat((py, px), dim=2).permute(2, 0, 1).contiguous()
            self._cache[(h, w)] = pe
        return pe[None].expand(x.shape[0], -1, -1, -1).to(x.dtype)


class RandomFourierEncoding(nn.Module):
    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords01: torch.Tensor) -> torch.Tensor:
        c = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        c = 2 * math.pi * c
        return torch.cat([c.sin(), c.cos()], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """(C, h, w) encoding of the pixel centres of an h x w grid."""
        dev = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones(h, w, device=dev, dtype=torch.float32)
        y = (ones.cumsum(0) - 0.5) / h
        x = (ones.cumsum(1) - 0.5) / w
        return self._encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def points(self, xy: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) absolute (x, y) -> (B, N, C)."""
        c = xy.clone().float()
        c[..., 0] = c[..., 0] / image_hw[1]
        c[..., 1] = c[..., 1] / image_hw[0]
        return self._encode(c)


def axial_rope_angles(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations (end_x*end_y, dim/2) for 2D axial RoPE over a row-major grid."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    tx = t % end_x
    ty = torch.div(t, end_x, rounding_mode="floor")
    ax = torch.outer(tx, freqs)
    ay = torch.outer(ty, freqs)
    return torch.cat([torch.polar(torch.ones_like(ax), ax), torch.polar(torch.ones_like(ay), ay)], dim=-1)


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Apply complex rotations ``rot`` (N, d/2) to the channel pairs of x (B, h, N, d)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * rot).flatten(3)
    return out.type_as(x)


def sine_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N,) positions -> (N, dim): [sin(p/t_i) ..., cos(p/t_i) ...]."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    a = pos.unsqueeze(-1) / dim_t
    return torch.cat([a.sin(), a.cos()], dim=-1)
