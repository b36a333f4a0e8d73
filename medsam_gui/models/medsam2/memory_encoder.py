"""Memory encoder of SAM2.1 (``memory_encoder.*``).

mask (B, 1, 512, 512) already mapped to scale*prob+bias -> mask downsampler (4x conv 3x3
stride 2 + LayerNorm2d + GELU, channels 1->4->16->64->256, then 1x1 conv) -> added to
pix_feat_proj(pixel features (B, 256, 32, 32)) -> fuser (2 ConvNeXt blocks, dw 7x7,
layer-scale ``gamma``) -> out_proj 1x1 to 64 channels. Returns features (B, 64, 32, 32) and
the sine position map (B, 64, 32, 32).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerNorm2d
from .position import SinePositionEncoding


class MaskDownSampler(nn.Module):
    def __init__(self, embed_dim: int = 256, layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        cin = 1
        for _ in range(layers):
            cout = cin * 4
            self.encoder.append(nn.Conv2d(cin, cout, 3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(cout))
            self.encoder.append(nn.GELU())
            cin = cout
        self.encoder.append(nn.Conv2d(cin, embed_dim, 1))

    def forward(self, x):
        return self.encoder(x)


class CXBlock(nn.Module):
    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, in_dim: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, 1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, 1)
        self.position_encoding = SinePositionEncoding(out_dim)

    def forward(self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor):
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask_for_mem)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)
