"""Checkpoints: official Semantic-SAM ``.pth`` files (every layout) and our ``.safetensors``, loaded strictly.

The official loader skips missing, unexpected and misshapen keys silently; ours accounts for every key and fails
with one error that lists every problem. ``torch.load`` always runs with ``weights_only=True``.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig, resolve_config
from .hashing import file_sha256, tensors_sha256
from ..model.semantic_sam import SemanticSam

FORMAT_NAME = "semsam_ros"
FORMAT_VERSION = "1"
OFFICIAL_PREFIX = "model."

_OPD = "sem_seg_head.pixel_decoder."
_OP = "sem_seg_head.predictor."
_BB, _PD, _DEC = "image_encoder.backbone.", "image_encoder.pixel_decoder.", "prompt_decoder."

# Name templates (official without the "model." prefix, ours); {i} is an integer, {rest} any dotted tail.
_NAME_PAIRS: list[tuple[str, str]] = [
    ("backbone.patch_embed.{rest}", _BB + "patch_embed.{rest}"),
    ("backbone.layers.{i}.blocks.{rest}", _BB + "stages.{i}.blocks.{rest}"),
    ("backbone.layers.{i}.downsample.{rest}", _BB + "stages.{i}.downsample.{rest}"),
    ("backbone.norm{i}.{rest}", _BB + "out_norms.{i}.{rest}"),
    (_OPD + "input_proj.{i}.0.{rest}", _PD + "input_proj.{i}.conv.{rest}"),
    (_OPD + "input_proj.{i}.1.{rest}", _PD + "input_proj.{i}.norm.{rest}"),
    (_OPD + "transformer.level_embed", _PD + "level_embed"),
    (_OPD + "transformer.encoder.layers.{rest}", _PD + "encoder_layers.{rest}"),
    (_OPD + "adapter_1.weight", _PD + "lateral.conv.weight"),
    (_OPD + "adapter_1.norm.{rest}", _PD + "lateral.norm.{rest}"),
    (_OPD + "layer_1.weight", _PD + "fpn_out.conv.weight"),
    (_OPD + "layer_1.norm.{rest}", _PD + "fpn_out.norm.{rest}"),
    (_OPD + "mask_features.{rest}", _PD + "mask_features.{rest}"),
    (_OP + "decoder.layers.{i}.cross_attn.value_proj.{rest}", "image_encoder.value_proj.{i}.{rest}"),
    (_OP + "decoder.layers.{rest}", _DEC + "layers.{rest}"),
    (_OP + "decoder.ref_point_head.{rest}", _DEC + "ref_point_head.{rest}"),
    (_OP + "decoder_norm.{rest}", _DEC + "norm.{rest}"),
    (_OP + "_bbox_embed.{rest}", _DEC + "box_embed.{rest}"),
    (_OP + "iou_prediction_head.{rest}", _DEC + "iou_head.{rest}"),
    *[(_OP + f"{n}.{{rest}}", _DEC + f"{n}.{{rest}}")
      for n in ("mask_embed", "mask_tokens", "pb_embedding", "label_enc")],
    *[(_OP + n, _DEC + n) for n in ("class_embed", "class_embed_part", "lang_mapper")],
]
# Official keys that name the same tensor as another official key (shared storage): (alias, owner).
_ALIAS_PAIRS: list[tuple[str, str]] = [
    (_OP + "decoder.norm.{rest}", _OP + "decoder_norm.{rest}"),
    (_OP + "bbox_embed.{i}.{rest}", _OP + "_bbox_embed.{rest}"),
    (_OP + "decoder.bbox_embed.{i}.{rest}", _OP + "_bbox_embed.{rest}"),
]
_REL_INDEX = re.compile(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index\Z")


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{rest\}", r"(?P<rest>.+)")
    return re.compile(pattern + r"\Z")


def _translate(key: str, pairs: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in pairs:
        if m := pattern.match(key):
            return template.format(**m.groupdict())
    return None


_TO_OURS = [(_template_regex(a), b) for a, b in _NAME_PAIRS]
_TO_OFFICIAL = [(_template_regex(b), a) for a, b in _NAME_PAIRS]
_ALIAS_OWNER = [(_template_regex(a), b) for a, b in _ALIAS_PAIRS]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message lists every problem."""


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official key (without ``model.``), or None when no rule maps it."""
    return _translate(key, _TO_OURS)


def ours_to_official(name: str) -> str:
    """The official key (without ``model.``) for one of our parameter names."""
    key = _translate(name, _TO_OFFICIAL)
    if key is None:
        raise KeyError(f"no official name for {name}")
    return key


def _read_pth(path: Path) -> dict[str, Tensor]:
    """The flat, unprefixed official state dict of a .pth file in any of its layouts."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError: {exc})") from None
        # weights_only refused a Python object: say so, without torch's advice to load it unsafely
        found = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", str(exc), re.S)
        reason = " ".join(found.group(1).split()) if found else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: refused by the tensors-only loader ({reason or 'pickle'}); "
            "a file holding other Python objects is never unpickled here. Use the official release checkpoint or "
            "a .safetensors file") from None
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if isinstance(obj.get("model"), dict):
        obj = obj["model"]  # detectron2 layout; optimizer, scheduler, iteration... are ignored
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors")
    prefixed = [k.startswith(OFFICIAL_PREFIX) for k in tensors]
    if all(prefixed):
        return {k[len(OFFICIAL_PREFIX) :]: v for k, v in tensors.items()}
    if any(prefixed):
        raise CheckpointError(f"{path}: mixes keys with and without the '{OFFICIAL_PREFIX}' prefix")
    return tensors


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _format_problems(path: Path | str, problems: dict[str, list[str]]) -> str:
    lines = [f"{path}: checkpoint does not match the model"]
    for title, items in problems.items():
        if items:
            shown = items[:40] + ([f"... and {len(items) - 40} more"] if len(items) > 40 else [])
            lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    return "\n".join(lines)


def map_official_state_dict(
    official: dict[str, Tensor], model: SemanticSam, source: str | Path = "checkpoint"
) -> dict[str, Tensor]:
    """Our state dict from an official one, accounting for every key; raises CheckpointError listing problems."""
    expected = model.state_dict()
    ours: dict[str, Tensor] = {}
    owner: dict[str, str] = {}
    aliases: list[tuple[str, str]] = []
    misshapen: set[str] = set()
    problems: dict[str, list[str]] = {"unexpected": [], "missing": [], "wrong shape": [], "inconsistent": []}
    for key, tensor in official.items():
        if _REL_INDEX.match(key):  # a fixed table we recompute; the stored one must agree
            try:
                table = model.get_buffer(official_to_ours(key))
            except AttributeError:
                problems["unexpected"].append(key)
                continue
            if tensor.shape != table.shape or not torch.equal(tensor.long(), table):
                problems["inconsistent"].append(f"{key} is not the Swin relative position index")
            continue
        target = _translate(key, _ALIAS_OWNER)
        if target is not None:
            aliases.append((key, target))
            continue
        name = official_to_ours(key)
        if name is None or name not in expected:
            problems["unexpected"].append(key)
            continue
        if tensor.shape != expected[name].shape:
            problems["wrong shape"].append(f"{key} {_shape(tensor)} (model {_shape(expected[name])})")
            misshapen.add(name)
            continue
        ours[name], owner[name] = tensor, key
    for key, target in aliases:
        name = official_to_ours(target)
        if name not in expected:
            problems["unexpected"].append(key)
        elif official[key].shape != expected[name].shape:
            problems["wrong shape"].append(f"{key} {_shape(official[key])} (model {_shape(expected[name])})")
            misshapen.add(name)
        elif name not in ours:
            ours[name], owner[name] = official[key], key
        elif not torch.equal(official[key], ours[name]):
            problems["inconsistent"].append(f"{key} differs from {owner[name]} (they share storage officially)")
    problems["missing"] = [ours_to_official(n) for n in expected if n not in ours and n not in misshapen]
    if any(problems.values()):
        raise CheckpointError(_format_problems(source, problems))
    return ours


def to_official_state_dict(model: SemanticSam, with_aliases: bool = True) -> dict[str, Tensor]:
    """The model's weights under official keys (``model.`` prefix), laid out as the released checkpoints."""
    out = {ours_to_official(name): t for name, t in model.state_dict().items()}
    if with_aliases:
        layers = range(model.config.decoder_layers)
        for alias, owner in _ALIAS_PAIRS:
            owner_rx = _template_regex(owner)
            for key in [k for k in out if owner_rx.match(k)]:
                rest = owner_rx.match(key).group("rest")
                out.update({alias.format(i=i, rest=rest): out[key] for i in layers})
        for i, stage in enumerate(model.image_encoder.backbone.stages):
            for j, block in enumerate(stage.blocks):
                index = block.attn.relative_position_index.clone()
                out[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = index
    return {OFFICIAL_PREFIX + k: v for k, v in out.items()}


def infer_config(official: dict[str, Tensor]) -> ModelConfig:
    """Every size of the model, read from the shapes of an official state dict (unprefixed keys)."""

    def get(key: str) -> Tensor:
        if key not in official:
            raise CheckpointError(f"cannot infer the model config: key {key!r} is missing")
        return official[key]

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m.group(1) for k in official if (m := rx.match(k))})

    embed_dim = get("backbone.patch_embed.proj.weight").shape[0]
    depths = tuple(count(rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
    num_heads = tuple(get(f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(4))
    table = get("backbone.layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    window = (int(round(table**0.5)) + 1) // 2
    hidden = get(_OP + "mask_tokens.weight").shape[1]
    levels, points = 4, 4
    enc_heads = get(_OPD + "transformer.encoder.layers.0.self_attn.attention_weights.weight").shape[0] // (
        levels * points
    )
    return ModelConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window,
        conv_dim=get(_OPD + "input_proj.0.0.weight").shape[0],
        mask_dim=get(_OPD + "mask_features.weight").shape[0],
        encoder_layers=count(re.escape(_OPD) + r"transformer\.encoder\.layers\.(\d+)\."),
        encoder_heads=enc_heads,
        hidden_dim=hidden,
        dim_feedforward=get(_OP + "decoder.layers.0.linear1.weight").shape[0],
        decoder_layers=count(re.escape(_OP) + r"decoder\.layers\.(\d+)\."),
        num_tokens=get(_OP + "mask_tokens.weight").shape[0],
        dim_proj=get(_OP + "class_embed").shape[1],
        name="inferred",
    )


def _named(cfg: ModelConfig) -> ModelConfig:
    preset = cfg.matching_preset()
    return ModelConfig.preset(preset) if preset else cfg


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a semsam_ros safetensors file (metadata format={meta.get('format')!r})")
    return tensors, meta


def load_model(
    checkpoint: str | Path, config: ModelConfig | str | Path | None = None, device: str | torch.device = "cpu"
) -> SemanticSam:
    """Build the model for ``checkpoint`` and load it strictly, in eval mode.

    ``checkpoint``: an official ``.pth`` (any layout) or our ``.safetensors``. ``config``: None (read from the
    file: our metadata, or inferred from the official shapes), ``"swint"``, ``"swinl"``, a YAML path in the
    official format, or a ModelConfig. The model gets ``weights_sha256`` (of the file) and ``model_id`` (the
    preset and a hash of the weights themselves: the same for a .pth and its converted .safetensors).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    cfg = resolve_config(config)
    if path.suffix == ".safetensors":
        tensors, meta = _read_safetensors(path)
        stored = ModelConfig.from_dict(json.loads(meta["config"]))
        cfg = cfg or stored
        model = SemanticSam(cfg)
        _load_ours(model, tensors, path)
    else:
        official = _read_pth(path)
        cfg = cfg or _named(infer_config(official))
        model = SemanticSam(cfg)
        model.load_state_dict(map_official_state_dict(official, model, path))
    model.set_weights_source(file_sha256(path), tensors_sha256(model.state_dict()))
    return model.to(device).eval()


def _load_ours(model: SemanticSam, tensors: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    problems = {
        "unexpected": sorted(set(tensors) - set(expected)),
        "missing": sorted(set(expected) - set(tensors)),
        "wrong shape": [
            f"{k} {_shape(t)} (model {_shape(expected[k])})"
            for k, t in tensors.items()
            if k in expected and t.shape != expected[k].shape
        ],
    }
    if any(problems.values()):
        raise CheckpointError(_format_problems(path, problems))
    model.load_state_dict(tensors)


def save_safetensors(model: SemanticSam, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write our format: weights under our names, the config and provenance in the metadata (no pickle)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": json.dumps(model.config.to_dict())}
    meta.update(metadata or {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return Path(path)


def convert_checkpoint(src: str | Path, dst: str | Path, config: ModelConfig | str | Path | None = None) -> Path:
    """Official ``.pth`` -> our ``.safetensors`` (strictly loaded first; records the source sha256)."""
    model = load_model(src, config)
    return save_safetensors(
        model, dst, {"source_sha256": model.weights_sha256, "source_name": Path(src).name}
    )


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Preset, parameter count, sha256 and format of a checkpoint (loads it strictly)."""
    model = load_model(path)
    cfg = model.config
    return {
        "path": str(path),
        "format": "safetensors" if Path(path).suffix == ".safetensors" else "official-pth",
        "preset": cfg.matching_preset() or "custom",
        "parameters": count_parameters(model),
        "sha256": model.weights_sha256,
        "model_id": model.model_id,
        "config": cfg.to_dict(),
    }


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
