"""Multi-scale deformable attention (Zhu et al. 2021) in pure PyTorch.

Sampling uses ``grid_sample`` (bilinear, zero padding, ``align_corners=False``), which equals the official CUDA
kernel to about 1e-6 and exports with ``torch.export``; level sizes are Python ints, never tensor values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LevelShapes = list[tuple[int, int]]


def split_levels(values: Tensor, shapes: LevelShapes) -> list[Tensor]:
    """(B*M, D, S) projected values -> one (B*M, D, h, w) map per level (flattened in ``shapes`` order)."""
    maps, start = [], 0
    for h, w in shapes:
        maps.append(values[..., start : start + h * w].unflatten(-1, (h, w)))
        start += h * w
    return maps


def deformable_sample(value_maps: list[Tensor], locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted bilinear samples of every head at every location.

    value_maps: per level (B*M, D, h, w); locations: (B, Q, M, L, P, 2) normalised (x, y);
    weights: (B, Q, M, L, P), already softmax-ed. Returns (B, Q, M*D), heads concatenated head-major.
    """
    b, q, m, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    samples = [
        F.grid_sample(
            value_maps[lvl],
            grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        for lvl in range(levels)
    ]  # each (B*M, D, Q, P)
    weights = weights.transpose(1, 2).reshape(b * m, 1, q, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(b, -1, q).transpose(1, 2)


class DeformableAttention(nn.Module):
    """MSDA: per head, level and point, an offset and a weight predicted from the query.

    With ``with_value_proj=False`` the module takes values already projected (the interactive decoder's values
    depend only on the image, so the image encoder projects them once per frame).
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int, with_value_proj: bool = True) -> None:
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim) if with_value_proj else None
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1) * torch.arange(1, self.points + 1).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            if proj is not None:
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def project_values(self, memory: Tensor) -> Tensor:
        """(B, S, C) -> (B*M, D, S), the layout :func:`split_levels` expects."""
        b, s, c = memory.shape
        return self.value_proj(memory).view(b, s, self.heads, c // self.heads).permute(0, 2, 3, 1).flatten(0, 1)

    def forward(self, query: Tensor, reference: Tensor, value_maps: list[Tensor], shapes: LevelShapes) -> Tensor:
        """query (B, Q, C); reference (B, Q, L, 2) points or (B, Q, L, 4) boxes (cx, cy, w, h), normalised."""
        b, q, _ = query.shape
        m, lv, p = self.heads, self.levels, self.points
        offsets = self.sampling_offsets(query).view(b, q, m, lv, p, 2)
        weights = self.attention_weights(query).view(b, q, m, lv * p).softmax(-1).view(b, q, m, lv, p)
        if reference.shape[-1] == 2:
            normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        else:
            ref = reference[:, :, None, :, None]
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        return self.output_proj(deformable_sample(value_maps, locations, weights))
