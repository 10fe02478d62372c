"""A tiny random CLIP model with a tiny byte-level tokenizer, saved as a local folder (tests, benchmarks)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

from .labeller import _require_transformers


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: the printable character that stands for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def make_tiny_clip(directory: str | os.PathLike, seed: int = 0, size: Literal["tiny", "base"] = "tiny") -> Path:
    """Save a randomly initialised CLIPModel and its tokenizer files to ``directory``; returns it.

    ``size="tiny"``: 2-layer towers of width 32, 32 px images, 8 px patches (tests). ``"base"``: the
    ViT-B/32 architecture of openai/clip-vit-base-patch32 (224 px, 12 + 12 layers), random weights, for
    realistic timings without a download. The tokenizer has no merges: every character is one token, so any
    text tokenizes offline (sequences are longer than with CLIP's real BPE).
    """
    transformers = _require_transformers()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    text = dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if size == "tiny":
        tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        config = transformers.CLIPConfig(
            text_config=dict(tower, **text),
            vision_config=dict(tower, image_size=32, patch_size=8),
            projection_dim=16,
        )
    elif size == "base":
        config = transformers.CLIPConfig(text_config=text, vision_config=dict(image_size=224, patch_size=32))
    else:
        raise ValueError(f"size must be 'tiny' or 'base', got {size!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config)
    model.save_pretrained(path)
    return path
