"""Swin Transformer backbone (Liu et al. 2021), the detection variant with per-stage output norms.

All window padding, shift masks and position-bias gathers are built from Python ints taken from static input
shapes, so the module exports with ``torch.export`` at a fixed input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHIFT_MASK_VALUE = -100.0  # the official value, not -inf


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table for every pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, w*w, C), windows row-major, tokens row-major within a window."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, w*w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_attention_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(nW, w*w, w*w) additive mask of a shifted stage: 0 within a region, -100 across regions."""
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    row_band = (rows >= hp - window).long() + (rows >= hp - shift).long()
    col_band = (cols >= wp - window).long() + (cols >= wp - shift).long()
    region = (row_band[:, None] * 3 + col_band[None, :]).to(torch.float32)
    region_windows = window_partition(region[None, :, :, None], window).squeeze(-1)
    diff = region_windows[:, None, :] - region_windows[:, :, None]
    return torch.where(diff != 0, SHIFT_MASK_VALUE, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """W-MSA (shift 0) or SW-MSA block; padded tokens are zeros after norm1 and are not masked."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor | None) -> Tensor:
        b, _, c = x.shape
        win = self.window
        hp, wp = -(-h // win) * win, -(-w // win) * win
        y = F.pad(self.norm1(x).view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, win), mask if self.shift else None), win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w, :].reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 token merge; channel order (row, col) offsets (0,0), (1,0), (0,1), (1,1) as the checkpoints expect."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """Returns the stage output before any norm or merge."""
        win = self.window
        mask = shift_attention_mask(-(-h // win) * win, -(-w // win) * win, win, self.shift, x.device)
        for block in self.blocks:
            x = block(x, h, w, mask)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, H/4, W/4) after the token LayerNorm."""
        p = self.patch
        x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        x = self.proj(x)
        b, c, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, h, w)


class SwinBackbone(nn.Module):
    """Swin backbone returning res2..res5 (strides 4..32) after the per-stage output LayerNorms."""

    def __init__(
        self,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window: int,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.channels = tuple(embed_dim * 2**i for i in range(len(depths)))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.stages = nn.ModuleList(
            SwinStage(dim, depth, heads, window, mlp_ratio, downsample=i < len(depths) - 1)
            for i, (dim, depth, heads) in enumerate(zip(self.channels, depths, num_heads))
        )
        self.out_norms = nn.ModuleList(nn.LayerNorm(dim) for dim in self.channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for stage, norm in zip(self.stages, self.out_norms):
            x_out = stage(x, h, w)
            outs.append(norm(x_out).view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x_out, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outs
