"""Model configuration: presets for the released checkpoints and the official YAML format."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semsam_ros.types import LEVELS


@dataclass(frozen=True)
class ModelConfig:
    """Every size the Semantic-SAM inference graph depends on.

    Field names follow the official config keys (MODEL.BACKBONE.SWIN.*, MODEL.ENCODER.*, MODEL.DECODER.*).
    ``decoder_heads`` is always 8: the official interactive decoder ignores ``DECODER.NHEADS``, which only reaches
    the pixel decoder (``encoder_heads``).
    """

    # Swin backbone
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    # pixel decoder
    conv_dim: int = 256
    mask_dim: int = 256
    encoder_layers: int = 6
    encoder_heads: int = 8
    num_feature_levels: int = 4
    num_points: int = 4
    # interactive decoder
    hidden_dim: int = 256
    dim_feedforward: int = 2048
    decoder_layers: int = 9
    decoder_heads: int = 8
    num_tokens: int = 6
    dim_proj: int = 512
    # input normalisation (RGB, 0-255 scale)
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)
    size_divisibility: int = 32
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError("Swin needs 4 stages: depths and num_heads must have 4 entries")
        if self.num_feature_levels != 4:
            raise ValueError("only 4 feature levels (strides 8..64) are supported")
        if self.num_tokens != len(LEVELS):
            raise ValueError(f"num_tokens must be {len(LEVELS)} (one per granularity level)")
        for width, what in ((self.conv_dim, "conv_dim"), (self.mask_dim, "mask_dim")):
            if width % 32:
                raise ValueError(f"{what} must be a multiple of 32 (GroupNorm with 32 groups), got {width}")
        if self.conv_dim != self.hidden_dim:
            raise ValueError("conv_dim must equal hidden_dim (the released models have no decoder input projection)")
        if self.mask_dim != self.hidden_dim:
            raise ValueError("mask_dim must equal hidden_dim (the mask head projects decoder queries onto it)")
        for heads, what in ((self.encoder_heads, "encoder_heads"), (self.decoder_heads, "decoder_heads")):
            if self.hidden_dim % heads:
                raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by {what} {heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """``"swint"`` or ``"swinl"``: the two released Semantic-SAM models."""
        key = name.lower().replace("-", "").replace("_", "")
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[key]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        """Build from an official Semantic-SAM YAML (its MODEL and INPUT sections)."""
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict) or "MODEL" not in data:
            raise ValueError(f"{path}: not an official Semantic-SAM config (no MODEL section)")
        return cls.from_official(data, name=Path(path).stem)

    @classmethod
    def from_official(cls, data: dict[str, Any], name: str = "custom") -> "ModelConfig":
        """Build from the parsed official config dictionary."""
        model = data["MODEL"]
        swin = model.get("BACKBONE", {}).get("SWIN", {})
        enc = model.get("ENCODER", {})
        dec = model.get("DECODER", {})
        inp = data.get("INPUT", {})
        d = cls()
        return cls(
            embed_dim=swin.get("EMBED_DIM", d.embed_dim),
            depths=tuple(swin.get("DEPTHS", d.depths)),
            num_heads=tuple(swin.get("NUM_HEADS", d.num_heads)),
            window_size=swin.get("WINDOW_SIZE", d.window_size),
            patch_size=swin.get("PATCH_SIZE", d.patch_size),
            mlp_ratio=float(swin.get("MLP_RATIO", d.mlp_ratio)),
            conv_dim=enc.get("CONVS_DIM", d.conv_dim),
            mask_dim=enc.get("MASK_DIM", d.mask_dim),
            encoder_layers=enc.get("TRANSFORMER_ENC_LAYERS", d.encoder_layers),
            encoder_heads=dec.get("NHEADS", d.encoder_heads),
            num_feature_levels=enc.get("TOTAL_NUM_FEATURE_LEVELS", d.num_feature_levels),
            hidden_dim=dec.get("HIDDEN_DIM", d.hidden_dim),
            dim_feedforward=dec.get("DIM_FEEDFORWARD", d.dim_feedforward),
            decoder_layers=dec.get("DEC_LAYERS", d.decoder_layers),
            num_tokens=dec.get("NUM_INTERACTIVE_TOKENS", d.num_tokens),
            dim_proj=model.get("DIM_PROJ", d.dim_proj),
            pixel_mean=tuple(inp.get("PIXEL_MEAN", d.pixel_mean)),
            pixel_std=tuple(inp.get("PIXEL_STD", d.pixel_std)),
            size_divisibility=dec.get("SIZE_DIVISIBILITY", d.size_divisibility),
            name=name,
        )

    def matching_preset(self) -> str | None:
        """Name of the preset this config equals, if any."""
        for key, preset in PRESETS.items():
            if preset == self:
                return key
        return None


def resolve_config(config: "ModelConfig | str | Path | None") -> ModelConfig | None:
    """A ModelConfig from a preset name, a YAML path or an instance (None stays None)."""
    if config is None or isinstance(config, ModelConfig):
        return config
    text = str(config)
    if text.lower().replace("-", "").replace("_", "") in PRESETS:
        return ModelConfig.preset(text)
    if not Path(text).is_file():
        raise ValueError(f"config {text!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a YAML file")
    return ModelConfig.from_yaml(text)


PRESETS: dict[str, ModelConfig] = {
    "swint": ModelConfig(name="swint"),
    "swinl": ModelConfig(
        embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, name="swinl"
    ),
}
