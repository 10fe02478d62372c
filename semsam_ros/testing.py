"""Small random models and checkpoints for tests, benchmarks and trying the tools without real weights."""
from __future__ import annotations

from pathlib import Path

import torch

from .io.checkpoint import save_safetensors, to_official_state_dict
from .config import ModelConfig
from .model.semantic_sam import SemanticSam


def tiny_config() -> ModelConfig:
    """A few-hundred-kilobyte Semantic-SAM with every structural feature of the real one."""
    return ModelConfig(
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=7,
        conv_dim=32,
        mask_dim=32,
        encoder_layers=1,
        encoder_heads=4,
        hidden_dim=32,
        dim_feedforward=64,
        decoder_layers=2,
        dim_proj=16,
        name="tiny",
    )


def random_model(config: ModelConfig | None = None, seed: int = 0, noise: float = 0.05) -> SemanticSam:
    """The model's default initialisation plus Gaussian noise on every parameter (so no path is all zeros)."""
    torch.manual_seed(seed)
    model = SemanticSam(config or tiny_config())
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * noise)
    return model.eval()


def make_tiny_checkpoint(
    path: str | Path, seed: int = 0, config: ModelConfig | None = None, layout: str = "release"
) -> Path:
    """Write a random checkpoint: ``layout`` "release" ({'model': sd}, ``model.`` keys, aliases, the official
    .pth layout), "flat" (prefixed keys at the top level), "unprefixed", or "safetensors" (ours)."""
    model = random_model(config, seed)
    path = Path(path)
    if layout == "safetensors":
        return save_safetensors(model, path)
    state = to_official_state_dict(model)
    if layout == "release":
        torch.save({"model": state, "iteration": 1}, path)
    elif layout == "flat":
        torch.save(state, path)
    elif layout == "unprefixed":
        torch.save({k.removeprefix("model."): v for k, v in state.items()}, path)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path
