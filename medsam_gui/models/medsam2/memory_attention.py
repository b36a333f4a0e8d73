"""Memory attention of SAM2.1 (``memory_attention.*``): 4 layers, d_model 256, 1 head,
RoPE (theta 1e4) on a 32x32 grid, memory keys/values of dim 64, FFN 2048 (ReLU).

Each layer: x += SelfAttn_RoPE(LN1(x)); x += CrossAttn_RoPE(q=LN2(x), k=memory+memory_pos,
v=memory) where RoPE covers the spatial memory tokens but not the trailing
``num_obj_ptr_tokens`` object-pointer tokens; x += FFN(LN3(x)). Input is
curr + 0.1 * curr_pos; output is the final LayerNorm.

Shapes (sequence first, as the official module takes them): curr / curr_pos (1024, B, 256),
memory / memory_pos (M, B, 64). Output (1024, B, 256).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .transformer import RoPEAttention


class MemoryAttentionLayer(nn.Module):
    def __init__(self, dim: int = 256, ffn: int = 2048, kv_dim: int = 64) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim, 1)
        self.cross_attn_image = RoPEAttention(dim, 1, kv_dim=kv_dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, memory, memory_pos, num_k_exclude_rope: int = 0):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h)
        h = self.norm2(x)
        x = x + self.cross_attn_image(h, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope)
        h = self.norm3(x)
        return x + self.linear2(F.relu(self.linear1(h)))


class MemoryAttention(nn.Module):
    def __init__(self, dim: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens: int = 0):
        x = (curr + 0.1 * curr_pos).transpose(0, 1)
        memory = memory.transpose(0, 1)
        memory_pos = memory_pos.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_obj_ptr_tokens)
        return self.norm(x).transpose(0, 1)
