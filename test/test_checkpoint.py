"""Checkpoint loading: every official layout, strict key accounting, manifests, safetensors, safety."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from semsam_ros.io.checkpoint import (
    CheckpointError,
    checkpoint_info,
    convert_checkpoint,
    count_parameters,
    infer_config,
    load_model,
    to_official_state_dict,
)
from semsam_ros.config import ModelConfig
from semsam_ros.io.hashing import tensors_sha256
from semsam_ros.inference.predictor import Predictor
from semsam_ros.model.semantic_sam import SemanticSam
from semsam_ros.testing import make_tiny_checkpoint, random_model, tiny_config

MANIFEST_PARAMS = {"swinT": (52_980_543, "swint", 648), "swinL": (222_799_161, "swinl", 816)}


def _outputs(model, image):
    predictor = Predictor(model, short_side=96)
    predictor.set_image(image)
    return predictor.predict(points=[[20, 30]], boxes=[[5, 5, 60, 40]])


@pytest.mark.parametrize("layout", ["release", "flat", "unprefixed", "safetensors"])
def test_every_layout_loads_the_same_weights(tmp_path, layout, test_image):
    suffix = ".safetensors" if layout == "safetensors" else ".pth"
    path = make_tiny_checkpoint(tmp_path / f"m{suffix}", seed=3, layout=layout)
    model = load_model(path)
    reference = random_model(seed=3)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    np.testing.assert_array_equal(_outputs(model, test_image).mask_logits, _outputs(reference, test_image).mask_logits)
    # model_id names the weights, not the file: the same in every layout, the file's sha256 differs
    assert model.model_id == f"{model.config.name}-{tensors_sha256(reference.state_dict())[:12]}"
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (reference.weights_sha256, reference.model_id) == ("", "tiny")  # random weights: no file


def _release_state(model) -> dict:
    return {k.removeprefix("model."): v for k, v in to_official_state_dict(model).items()}


def _save(tmp_path: Path, state: dict, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": {"model." + k: v for k, v in state.items()}}, path)
    return path


def test_missing_unexpected_and_misshapen_keys_are_listed_together(tmp_path):
    state = _release_state(random_model())
    del state["sem_seg_head.predictor.mask_tokens.weight"]
    state["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    state["backbone.norm0.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        load_model(_save(tmp_path, state), config=tiny_config())
    text = str(err.value)
    assert "missing (1): sem_seg_head.predictor.mask_tokens.weight" in text
    assert "unexpected (1): sem_seg_head.predictor.extra_head.weight" in text
    assert "wrong shape (1): backbone.norm0.weight 5 (model 16)" in text


def test_aliases_must_agree_with_their_owner(tmp_path):
    state = _release_state(random_model())
    state["sem_seg_head.predictor.decoder.bbox_embed.1.layers.0.weight"] = torch.zeros(32, 32)
    with pytest.raises(CheckpointError, match=r"decoder\.bbox_embed\.1\.layers\.0\.weight differs"):
        load_model(_save(tmp_path, state))


def test_relative_position_index_is_checked(tmp_path):
    state = _release_state(random_model())
    key = "backbone.layers.0.blocks.0.attn.relative_position_index"
    state[key] = torch.flip(state[key], dims=[0])
    with pytest.raises(CheckpointError, match="relative position index"):
        load_model(_save(tmp_path, state))


def test_wrong_preset_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(tiny_checkpoint, config="swint")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
        (None, "expected a dict of tensors"),
        ({"model.a": torch.zeros(1), "b": torch.zeros(1)}, "mixes keys"),
        ({"iteration": 3}, "contains no tensors"),
    ],
)
def test_unreadable_checkpoints(tmp_path, content, message):
    path = tmp_path / "x.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2] if content is None else content, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.target = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": exploit}, f)
    with pytest.raises(CheckpointError, match="refused by the tensors-only loader") as err:
        load_model(path)
    assert not marker.exists()
    assert "weights_only" not in str(err.value)  # torch's advice to load it unsafely is never repeated


def test_convert_to_safetensors_round_trip(tmp_path, tiny_checkpoint, test_image):
    out = convert_checkpoint(tiny_checkpoint, tmp_path / "tiny.safetensors")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    original = load_model(tiny_checkpoint)
    assert meta["source_sha256"] == original.weights_sha256
    converted = load_model(out)
    assert converted.config == original.config
    assert converted.model_id == original.model_id and converted.weights_sha256 != original.weights_sha256
    np.testing.assert_array_equal(
        _outputs(converted, test_image).mask_logits, _outputs(original, test_image).mask_logits
    )
    info = checkpoint_info(out)
    assert info["parameters"] == count_parameters(original) and info["format"] == "safetensors"


def test_foreign_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a semsam_ros safetensors"):
        load_model(path)


def _manifest_state(tsv: Path) -> dict[str, torch.Tensor]:
    """A release-layout state dict with exactly the manifest's keys, shapes, dtypes and shared storage."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    for key, shape, dtype, _kind, shared in rows:
        dims = [int(d) for d in shape.split("x")]
        if shared:
            state[key] = state[shared]
        elif key.endswith("relative_position_index"):
            from semsam_ros.model.swin import relative_position_index

            state[key] = relative_position_index(int(round(dims[0] ** 0.5)))
        else:
            state[key] = torch.randn(dims, generator=gen, dtype=getattr(torch, dtype))
    return state


@pytest.mark.parametrize("variant", ["swinT", "swinL"])
def test_official_manifest_sizes_give_the_preset(reference_dir, variant):
    """Names and shapes only, on the meta device: the config read from the manifest builds the preset's model."""
    params, preset, entries = MANIFEST_PARAMS[variant]
    tsv = reference_dir / f"semantic_sam_{variant}_state_dict.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    shapes = {key.removeprefix("model."): [int(d) for d in shape.split("x")] for key, shape, *_ in rows}
    assert len(shapes) == entries
    with torch.device("meta"):
        config = infer_config({key: torch.empty(dims) for key, dims in shapes.items()})
        assert config == ModelConfig.preset(preset)
        assert count_parameters(SemanticSam(config)) == params


@pytest.mark.slow  # full-size random weights written and loaded (about a minute)
@pytest.mark.parametrize("variant", ["swinT", "swinL"])
def test_official_manifest_loads_strictly(tmp_path, reference_dir, variant):
    tsv = reference_dir / f"semantic_sam_{variant}_state_dict.tsv"
    params, preset, entries = MANIFEST_PARAMS[variant]
    state = _manifest_state(tsv)
    assert len(state) == entries
    path = tmp_path / f"{variant}.pth"
    torch.save({"model": state, "optimizer": {}, "iteration": 368750}, path)
    del state
    model = load_model(path)
    assert model.config == ModelConfig.preset(preset)
    assert model.config.name == preset
    assert count_parameters(model) == params
    loaded = torch.load(path, weights_only=True)["model"]
    ours = model.state_dict()
    assert torch.equal(ours["image_encoder.value_proj.4.weight"],
                       loaded["model.sem_seg_head.predictor.decoder.layers.4.cross_attn.value_proj.weight"])
    assert torch.equal(ours["prompt_decoder.box_embed.layers.2.bias"],
                       loaded["model.sem_seg_head.predictor.decoder.bbox_embed.8.layers.2.bias"])
    # an explicit config must agree with the file too
    assert load_model(path, config=preset).config == ModelConfig.preset(preset)


def test_manifest_keys_equal_our_official_export(reference_dir):
    for variant, (_, preset, _) in MANIFEST_PARAMS.items():
        tsv = reference_dir / f"semantic_sam_{variant}_state_dict.tsv"
        manifest = {line.split("\t")[0]: line.split("\t")[1] for line in tsv.read_text().splitlines()[1:]}
        with torch.device("meta"):
            model = SemanticSam(ModelConfig.preset(preset))
        exported = to_official_state_dict(model)
        assert set(exported) == set(manifest)
        for key, tensor in exported.items():
            assert "x".join(map(str, tensor.shape)) == manifest[key], key
