"""Model modules on tiny random configs: shapes, prompt independence, exportability, building blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semsam_ros.config import ModelConfig
from semsam_ros.types import LEVEL_TO_TOKEN
from semsam_ros.model.deform_attn import DeformableAttention, split_levels
from semsam_ros.model.prompt_decoder import inverse_sigmoid, memory_shapes
from semsam_ros.model.swin import relative_position_index, shift_attention_mask
from semsam_ros.testing import random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(seed=1)


@pytest.fixture(scope="module")
def image_input(model):
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 70, 100), generator=gen, dtype=torch.uint8)
    return model.preprocess(image)


def _boxes(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen) * 0.8 + 0.1
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.005
    return torch.cat([centre, size], 1)


def test_preprocess_normalises_then_pads_with_zeros(model):
    image = torch.full((3, 70, 100), 200, dtype=torch.uint8)
    x = model.preprocess(image)
    assert x.shape == (1, 3, 96, 128) and x.dtype == torch.float32
    expected = (200 - torch.tensor(model.config.pixel_mean)) / torch.tensor(model.config.pixel_std)
    torch.testing.assert_close(x[0, :, 0, 0], expected)
    assert (x[0, :, 70:, :] == 0).all() and (x[0, :, :, 100:] == 0).all()


def test_encoder_and_decoder_shapes(model, image_input):
    cfg = model.config
    with torch.no_grad():
        mask_features, values = model.image_encoder(image_input)
        logits, ious = model.prompt_decoder(_boxes(3), torch.zeros(3, dtype=torch.long), mask_features, values)
    h4, w4 = 96 // 4, 128 // 4
    s = sum(h * w for h, w in memory_shapes(h4, w4))
    assert mask_features.shape == (1, cfg.hidden_dim, h4, w4)
    assert values.shape == (1, cfg.decoder_layers, 8, cfg.hidden_dim // 8, s)
    assert logits.shape == (3, 6, h4, w4) and logits.dtype == torch.float32
    assert ious.shape == (3, 6) and torch.isfinite(logits).all()


def test_memory_shapes_match_the_pixel_decoder(model, image_input):
    with torch.no_grad():
        _, levels = model.image_encoder.pixel_decoder(model.image_encoder.backbone(image_input))
    actual = [tuple(lvl.shape[-2:]) for lvl in reversed(levels)]
    assert memory_shapes(96 // 4, 128 // 4) == actual


def test_levels_are_token_columns_in_level_order(model, image_input):
    """Column k-1 of the output is mask token LEVEL_TO_TOKEN[k]: compare with the decoder's raw token order."""
    decoder = model.prompt_decoder
    with torch.no_grad():
        mask_features, values = model.image_encoder(image_input)
        logits, _ = decoder(_boxes(1), torch.zeros(1, dtype=torch.long), mask_features, values)
        outputs, _ = decoder.run_layers(_boxes(1), torch.zeros(1, dtype=torch.long), values, memory_shapes(24, 32))
        h = decoder.norm(decoder.norm(outputs[-1]))
        tokens = torch.einsum("qc,chw->qhw", decoder.mask_embed(h), mask_features[0])
    for level, token in LEVEL_TO_TOKEN.items():
        torch.testing.assert_close(logits[0, level - 1], tokens[token], rtol=1e-4, atol=1e-4)


def test_prompts_in_a_batch_do_not_influence_each_other(model, image_input):
    boxes = _boxes(5, seed=2)
    pb = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        mask_features, values = model.image_encoder(image_input)
        batch_logits, batch_ious = model.prompt_decoder(boxes, pb, mask_features, values)
        for i in range(5):
            logits, ious = model.prompt_decoder(boxes[i : i + 1], pb[i : i + 1], mask_features, values)
            scale = logits.abs().max()
            assert (batch_logits[i] - logits[0]).abs().max() <= 1e-4 * scale
            torch.testing.assert_close(batch_ious[i], ious[0], rtol=0, atol=1e-5)


def test_deterministic(model, image_input):
    with torch.no_grad():
        first = model(image_input, _boxes(2), torch.zeros(2, dtype=torch.long))
        second = model(image_input, _boxes(2), torch.zeros(2, dtype=torch.long))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_export_matches_eager(model, image_input):
    """torch.export of both halves at static shapes succeeds (no graph breaks) and reproduces eager outputs."""
    with torch.no_grad():
        mask_features, values = model.image_encoder(image_input)
        boxes, pb = _boxes(4), torch.zeros(4, dtype=torch.long)
        logits, ious = model.prompt_decoder(boxes, pb, mask_features, values)
    encoder = torch.export.export(model.image_encoder, (image_input,), strict=False)
    decoder = torch.export.export(model.prompt_decoder, (boxes, pb, mask_features, values), strict=False)
    with torch.no_grad():
        mf2, v2 = encoder.module()(image_input)
        logits2, ious2 = decoder.module()(boxes, pb, mask_features, values)
    torch.testing.assert_close(mf2, mask_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v2, values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ious2, ious, rtol=1e-5, atol=1e-5)


def _batch_inputs(model, count: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (count, 3, 70, 100), generator=gen, dtype=torch.uint8)
    return torch.cat([model.preprocess(image) for image in images])


def assert_rel_equal(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err <= rel, f"relative error {err:.2e}"


def test_encoder_batch_equals_each_image_alone(model):
    """B images in one call give, per image, what that image gives alone (and decode the same)."""
    batch = _batch_inputs(model, 3)
    boxes, pb = _boxes(2), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        mask_features, values = model.image_encoder(batch)
        assert mask_features.shape[0] == values.shape[0] == 3
        for i in range(3):
            alone_features, alone_values = model.image_encoder(batch[i : i + 1])
            assert_rel_equal(mask_features[i : i + 1], alone_features)
            assert_rel_equal(values[i : i + 1], alone_values)
            logits, ious = model.prompt_decoder(boxes, pb, mask_features[i : i + 1], values[i : i + 1])
            alone_logits, alone_ious = model.prompt_decoder(boxes, pb, alone_features, alone_values)
            assert_rel_equal(logits, alone_logits, 1e-4)
            torch.testing.assert_close(ious, alone_ious, rtol=0, atol=1e-5)
    assert not torch.allclose(mask_features[0], mask_features[1])  # the images differ, and so do their features


def test_encoder_exports_at_a_fixed_batch(model):
    batch = _batch_inputs(model, 2)
    with torch.no_grad():
        mask_features, values = model.image_encoder(batch)
    encoder = torch.export.export(model.image_encoder, (batch,), strict=False)
    with torch.no_grad():
        mf2, v2 = encoder.module()(batch)
    torch.testing.assert_close(mf2, mask_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v2, values, rtol=1e-5, atol=1e-5)


def test_relative_position_index_matches_definition():
    w = 3
    index = relative_position_index(w)
    for a in range(w * w):
        for b in range(w * w):
            (ya, xa), (yb, xb) = divmod(a, w), divmod(b, w)
            assert index[a, b] == (ya - yb + w - 1) * (2 * w - 1) + (xa - xb + w - 1)


def test_shift_mask_separates_the_nine_regions():
    mask = shift_attention_mask(hp=14, wp=14, window=7, shift=3, device=torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window is one region
    last = mask[3]  # bottom-right window: 4 regions of sizes 4x4, 4x3, 3x4, 3x3
    assert set(last.unique().tolist()) == {-100.0, 0.0}
    assert int((last == 0).sum()) == 16 * 16 + 12 * 12 + 12 * 12 + 9 * 9


def _bilinear_zero_padded(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Reference bilinear sample of (D, h, w) at pixel position (x, y), neighbours outside count as zero."""
    d, h, w = img.shape
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = torch.zeros(d, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx].double()
    return out


def test_deformable_attention_against_brute_force():
    torch.manual_seed(0)
    dim, heads, levels, points = 16, 2, 2, 2
    attn = DeformableAttention(dim, heads, levels, points).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    shapes = [(3, 4), (2, 2)]
    memory = torch.randn(1, 16, dim, dtype=torch.float64)
    query = torch.randn(1, 3, dim, dtype=torch.float64)
    boxes = torch.tensor([[[0.3, 0.6, 0.4, 0.5]], [[0.9, 0.1, 0.3, 0.2]], [[0.5, 0.5, 1.0, 1.0]]], dtype=torch.float64)
    reference = boxes.view(1, 3, 1, 4).expand(1, 3, levels, 4)
    value_maps = split_levels(attn.project_values(memory), shapes)
    out = attn(query, reference, value_maps, shapes)

    offsets = attn.sampling_offsets(query).view(1, 3, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(1, 3, heads, levels * points).softmax(-1).view(1, 3, heads, levels, points)
    values = attn.value_proj(memory)[0].view(16, heads, dim // heads)
    starts = [0, 12]
    expected = torch.zeros(3, dim, dtype=torch.float64)
    for q in range(3):
        cx, cy, bw, bh = boxes[q, 0].tolist()
        for m in range(heads):
            acc = torch.zeros(dim // heads, dtype=torch.float64)
            for lvl, (h, w) in enumerate(shapes):
                vmap = values[starts[lvl] : starts[lvl] + h * w, m].T.reshape(-1, h, w)
                for p in range(points):
                    dx, dy = offsets[0, q, m, lvl, p].tolist()
                    x = cx + dx / points * bw * 0.5
                    y = cy + dy / points * bh * 0.5
                    acc += weights[0, q, m, lvl, p] * _bilinear_zero_padded(vmap, x * w - 0.5, y * h - 0.5)
            expected[q, m * (dim // heads) : (m + 1) * (dim // heads)] = acc
    torch.testing.assert_close(out[0], attn.output_proj(expected), rtol=1e-9, atol=1e-9)


def test_inverse_sigmoid_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[2], torch.tensor(0.0))
    torch.testing.assert_close(y[0], y[1])
    torch.testing.assert_close(y[1], torch.log(torch.tensor(1e-5)))


def test_config_from_official_yaml(reference_dir):
    cfg = ModelConfig.from_yaml(reference_dir / "parity_debug" / "semantic_sam_reduced_swinT.yaml")
    assert cfg.embed_dim == 16 and cfg.hidden_dim == 64 and cfg.encoder_heads == 4 and cfg.decoder_heads == 8
    assert cfg.dim_feedforward == 128 and cfg.decoder_layers == 3 and cfg.encoder_layers == 2


def test_presets():
    t, l = ModelConfig.preset("swint"), ModelConfig.preset("SwinL")
    assert t.depths == (2, 2, 6, 2) and l.depths == (2, 2, 18, 2) and l.window_size == 12
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("swinb")
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(conv_dim=48, mask_dim=48, hidden_dim=48)
    assert tiny_config().matching_preset() is None
