"""Semantic-SAM = ImageEncoder (once per frame) + PromptDecoder (per batch of prompts)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .pixel_decoder import PixelDecoder
from .prompt_decoder import PromptDecoder
from .swin import SwinBackbone


class ImageEncoder(nn.Module):
    """Backbone, pixel decoder and the decoder layers' value projections (prompt-independent, so run once).

    Input: B normalised images of one size, padded bottom/right to a multiple of 32, (B, 3, Hp, Wp).
    Output: mask features (B, C, Hp/4, Wp/4) and projected values (B, decoder layers, heads, C/heads, S) of the
    decoder memory (encoder levels flattened coarse first). Every image is computed on its own: image ``i`` of a
    batch gives what it gives alone (``[i : i + 1]`` of both outputs is one image's input to the prompt decoder).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.decoder_heads = cfg.decoder_heads
        self.backbone = SwinBackbone(
            cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size, cfg.patch_size, cfg.mlp_ratio
        )
        self.pixel_decoder = PixelDecoder(
            self.backbone.channels,
            cfg.conv_dim,
            cfg.mask_dim,
            cfg.encoder_layers,
            cfg.encoder_heads,
            cfg.dim_feedforward,
            cfg.num_feature_levels,
            cfg.num_points,
        )
        self.value_proj = nn.ModuleList(nn.Linear(cfg.hidden_dim, cfg.hidden_dim) for _ in range(cfg.decoder_layers))
        for proj in self.value_proj:
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mask_features, levels = self.pixel_decoder(self.backbone(image))
        memory = torch.cat([lvl.flatten(2) for lvl in reversed(levels)], dim=2).transpose(1, 2)  # (B, S, C)
        b, s, c = memory.shape
        heads = self.decoder_heads
        values = [proj(memory).transpose(1, 2).reshape(b, heads, c // heads, s) for proj in self.value_proj]
        return mask_features, torch.stack(values, dim=1)


class SemanticSam(nn.Module):
    """The whole interactive model. ``preprocess`` normalises and pads; the two halves run separately.

    ``weights_sha256`` and ``model_id`` name the weights (set by ``checkpoint.load_model``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.prompt_decoder = PromptDecoder(
            cfg.hidden_dim,
            cfg.decoder_layers,
            cfg.dim_feedforward,
            cfg.decoder_heads,
            cfg.num_feature_levels,
            cfg.num_points,
            cfg.num_tokens,
            cfg.dim_proj,
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)
        self.weights_sha256 = ""  # sha256 of the checkpoint file the weights came from ("" for random weights)
        self.model_id = cfg.name

    def set_weights_source(self, file_sha256: str, weights_sha256: str) -> None:
        """Record the checkpoint file's sha256 and the hash of the weights themselves; ``model_id`` becomes
        ``<config name>-<first 12 hex digits of the weights' hash>`` (the same for a .pth and its .safetensors)."""
        self.weights_sha256 = file_sha256
        self.model_id = f"{self.config.name}-{weights_sha256[:12]}"

    def preprocess(self, image: Tensor) -> Tensor:
        """(3, H, W) uint8 RGB -> (1, 3, Hp, Wp) float32: (x - mean) / std, then zeros bottom/right to /32."""
        x = (image.to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std
        div = self.config.size_divisibility
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % div, 0, (-h) % div))[None]

    def forward(self, image: Tensor, boxes: Tensor, pb: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised padded image, prompt boxes relative to it -> (N, 6, Hp/4, Wp/4) logits, (N, 6) IoUs."""
        mask_features, values = self.image_encoder(image)
        return self.prompt_decoder(boxes, pb, mask_features, values)
