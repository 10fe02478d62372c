"""Interactive decoder: every prompt box becomes 6 granularity queries refined by deformable decoder layers.

Prompts never see each other: self-attention runs within each prompt's 6 queries (the block-diagonal mask of
training, applied by reshaping to (prompts, 6, C)), so a prompt's result is the same alone or in any batch, and
padding a batch to a fixed size is harmless.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..types import LEVEL_TO_TOKEN, LEVELS
from .deform_attn import DeformableAttention, LevelShapes, split_levels

INVERSE_SIGMOID_EPS = 1e-5


def inverse_sigmoid(x: Tensor) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=INVERSE_SIGMOID_EPS) / (1 - x).clamp(min=INVERSE_SIGMOID_EPS))


def box_sine_embedding(boxes: Tensor, dim: int) -> Tensor:
    """(Q, 4) boxes (cx, cy, w, h) -> (Q, 4*dim) sine embedding in the order [cy | cx | w | h]."""
    dim_t = torch.arange(dim, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / dim)
    embeds = []
    for coord in (1, 0, 2, 3):
        p = (boxes[:, coord] * (2 * math.pi))[:, None] / dim_t
        embeds.append(torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1))
    return torch.cat(embeds, dim=1)


def memory_shapes(h4: int, w4: int) -> LevelShapes:
    """Decoder memory level sizes, coarse first (strides 64, 32, 16, 8), from the stride-4 map size."""
    h8, w8 = (h4 + 1) // 2, (w4 + 1) // 2
    h16, w16 = (h8 + 1) // 2, (w8 + 1) // 2
    h32, w32 = (h16 + 1) // 2, (w16 + 1) // 2
    return [((h32 - 1) // 2 + 1, (w32 - 1) // 2 + 1), (h32, w32), (h16, w16), (h8, w8)]


class Mlp(nn.Module):
    """Linear layers with ReLU between them (not after the last)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class PromptSelfAttention(nn.Module):
    """Multi-head attention among the queries of each prompt (parameters packed as nn.MultiheadAttention)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x, pos: (prompts, tokens, C); queries and keys get the position, values do not."""
        n, k, c = x.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        head_dim = c // self.heads

        def heads(t: Tensor) -> Tensor:
            return t.view(n, k, self.heads, head_dim).transpose(1, 2)

        q = heads(F.linear(x + pos, w_q, b_q)) * math.sqrt(1.0 / head_dim)
        key = heads(F.linear(x + pos, w_k, b_k))
        v = heads(F.linear(x, w_v, b_v))
        attn = (q @ key.transpose(-2, -1)).softmax(-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(n, k, c))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention (norm2), deformable cross-attention (norm1), FFN (norm3)."""

    def __init__(self, dim: int, heads: int, ffn: int, levels: int, points: int) -> None:
        super().__init__()
        self.self_attn = PromptSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, heads, levels, points, with_value_proj=False)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, tgt: Tensor, pos: Tensor, boxes: Tensor, value_maps: list[Tensor], shapes: LevelShapes, tokens: int
    ) -> Tensor:
        """tgt, pos: (Q, C) prompt-major; boxes: (Q, 4) reference boxes in sigmoid space."""
        q, c = tgt.shape
        sa = self.self_attn(tgt.view(-1, tokens, c), pos.view(-1, tokens, c)).reshape(q, c)
        tgt = self.norm2(tgt + sa)
        reference = boxes[None, :, None, :].expand(1, q, len(shapes), 4)
        tgt = self.norm1(tgt + self.cross_attn((tgt + pos)[None], reference, value_maps, shapes)[0])
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class PromptDecoder(nn.Module):
    """(prompt boxes, image features) -> 6 mask logits and 6 IoU scores per prompt, in level order 1..6."""

    def __init__(
        self,
        dim: int,
        layers: int,
        ffn: int,
        heads: int = 8,
        levels: int = 4,
        points: int = 4,
        tokens: int = 6,
        dim_proj: int = 512,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = tokens
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, levels, points) for _ in range(layers))
        self.ref_point_head = Mlp([2 * dim, dim, dim])
        self.box_embed = Mlp([dim, dim, dim, 4])  # one box MLP shared by every layer
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = Mlp([dim, dim, dim, dim])
        self.iou_head = Mlp([dim, dim, dim, 1])
        self.mask_tokens = nn.Embedding(tokens, dim)
        self.pb_embedding = nn.Embedding(2, dim)
        self.label_enc = nn.Embedding(2, dim)
        # Object/part projections and the text mapper of the paper's semantic heads. The released checkpoints
        # carry them untrained; they are kept so those checkpoints load strictly, and are not used here.
        self.class_embed = nn.Parameter(torch.zeros(dim, dim_proj))
        self.class_embed_part = nn.Parameter(torch.zeros(dim, dim_proj))
        self.lang_mapper = nn.Parameter(torch.zeros(dim_proj, dim))
        level_order = [LEVEL_TO_TOKEN[level] for level in LEVELS]
        self.register_buffer("level_order", torch.tensor(level_order), persistent=False)

    def initial_queries(self, boxes: Tensor, pb: Tensor) -> tuple[Tensor, Tensor]:
        """Query contents (Q, C) and anchors (Q, 4) before sigmoid, prompt-major (6 tokens per prompt)."""
        content = self.label_enc.weight[0] + self.pb_embedding(pb)
        tgt = (content[:, None, :] + self.mask_tokens.weight[None]).flatten(0, 1)
        anchors = inverse_sigmoid(boxes).repeat_interleave(self.tokens, dim=0)
        return tgt, anchors

    def run_layers(
        self, boxes: Tensor, pb: Tensor, values: Tensor, shapes: LevelShapes
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per-layer outputs (Q, C), un-normalised, and reference boxes (layers + 1 entries, sigmoid space);
        ``values`` (1, layers, heads, C/heads, S) as the image encoder gives them for one image."""
        tgt, anchors = self.initial_queries(boxes, pb)
        ref = anchors.sigmoid()
        outputs, refs = [], [ref]
        dim = tgt.shape[1]
        for layer, layer_values in zip(self.layers, values[0]):
            pos = self.ref_point_head(box_sine_embedding(ref, dim // 2))
            tgt = layer(tgt, pos, ref, split_levels(layer_values, shapes), shapes, self.tokens)
            ref = (self.box_embed(tgt) + inverse_sigmoid(ref)).sigmoid()
            outputs.append(tgt)
            refs.append(ref)
        return outputs, refs

    def forward(self, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """boxes (N, 4) cx, cy, w, h relative to the padded image; pb (N,) prompt type (0 for clicks and boxes);
        mask_features (1, C, h4, w4) and values (1, layers, heads, C/heads, S): one image's from the image encoder.
        Returns mask logits (N, 6, h4, w4) and raw IoU scores (N, 6), columns in level order 1..6."""
        _, c, h4, w4 = mask_features.shape
        outputs, _ = self.run_layers(boxes, pb, values, memory_shapes(h4, w4))
        h = self.norm(self.norm(outputs[-1]))  # the official double LayerNorm before the heads
        masks = (self.mask_embed(h) @ mask_features.view(c, h4 * w4)).view(-1, self.tokens, h4, w4)
        ious = self.iou_head(h).view(-1, self.tokens)
        return masks.index_select(1, self.level_order), ious.index_select(1, self.level_order)
