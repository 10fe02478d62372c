"""Pixel decoder: 4-level deformable-attention encoder (strides 8..64) and one FPN step to stride-4 mask features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_attn import DeformableAttention, LevelShapes, split_levels

GN_GROUPS = 32


class ConvNorm(nn.Sequential):
    """Conv2d followed by GroupNorm(32)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        self.norm = nn.GroupNorm(GN_GROUPS, cout)


def sine_position_encoding(h: int, w: int, channels: int, device: torch.device) -> Tensor:
    """Normalised 2-D sine encoding (1, channels, h, w): [y-part | x-part], sin/cos interleaved."""
    half = channels // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(e: Tensor) -> Tensor:
        p = e[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)  # (n, half)

    pos_y = encode(y)[:, None, :].expand(h, w, half)
    pos_x = encode(x)[None, :, :].expand(h, w, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)[None]


def encoder_reference_points(shapes: LevelShapes, levels: int, device: torch.device) -> Tensor:
    """(1, S, levels, 2): every token's own pixel centre (x, y), normalised, repeated for every level."""
    refs = []
    for h, w in shapes:
        ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h
        xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    return torch.cat(refs, 0)[None, :, None, :].expand(1, -1, levels, 2)


class EncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (ReLU)."""

    def __init__(self, dim: int, ffn: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.self_attn = DeformableAttention(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor, shapes: LevelShapes) -> Tensor:
        value_maps = split_levels(self.self_attn.project_values(src), shapes)
        src = self.norm1(src + self.self_attn(src + pos, reference, value_maps, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class PixelDecoder(nn.Module):
    """res2..res5 -> encoder outputs E0..E3 (strides 8, 16, 32, 64; fine to coarse) and stride-4 mask features."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        dim: int,
        mask_dim: int,
        layers: int,
        heads: int,
        ffn: int,
        levels: int = 4,
        points: int = 4,
    ) -> None:
        super().__init__()
        self.levels = levels
        res2, res3, res4, res5 = in_channels
        self.input_proj = nn.ModuleList(
            [ConvNorm(res3, dim, 1), ConvNorm(res4, dim, 1), ConvNorm(res5, dim, 1), ConvNorm(res5, dim, 3, stride=2)]
        )
        self.level_embed = nn.Parameter(torch.zeros(levels, dim))
        self.encoder_layers = nn.ModuleList(EncoderLayer(dim, ffn, heads, levels, points) for _ in range(layers))
        self.lateral = ConvNorm(res2, dim, 1, bias=False)
        self.fpn_out = ConvNorm(dim, dim, 3, bias=False)
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        nn.init.normal_(self.level_embed)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        res2, res3, res4, res5 = feats
        srcs = [proj(x) for proj, x in zip(self.input_proj, (res3, res4, res5, res5))]
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        dim = srcs[0].shape[1]
        device = srcs[0].device
        tokens = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat(
            [
                (sine_position_encoding(h, w, dim, device).flatten(2).transpose(1, 2) + self.level_embed[lvl])
                for lvl, (h, w) in enumerate(shapes)
            ],
            1,
        )
        reference = encoder_reference_points(shapes, self.levels, device)
        for layer in self.encoder_layers:
            tokens = layer(tokens, pos, reference, shapes)
        outs = split_levels(tokens.transpose(1, 2), shapes)
        lateral = self.lateral(res2)
        y = lateral + F.interpolate(outs[0], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = F.relu(self.fpn_out(y))
        return self.mask_features(y), outs
