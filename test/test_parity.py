"""Stage-by-stage parity with the official implementation's tensors (shared/reference/parity_debug)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semsam_ros.io.checkpoint import load_model
from semsam_ros.types import LEVEL_TO_TOKEN, LEVELS
from semsam_ros.inference.predictor import Predictor
from semsam_ros.model.prompt_decoder import memory_shapes

TOKEN_COLUMNS = [LEVEL_TO_TOKEN[k] for k in LEVELS]
CASES = ["pt_handle", "box_cup"]
H, W = 256, 384


@pytest.fixture(scope="module")
def debug(reference_dir):
    folder = reference_dir / "parity_debug"
    model = load_model(folder / "semantic_sam_reduced_swinT.pth", config=folder / "semantic_sam_reduced_swinT.yaml")
    return model, np.load(folder / "coffee256_debug.npz")


def assert_rel_close(actual, expected, rel: float = 1e-4) -> None:
    actual = torch.as_tensor(np.asarray(actual), dtype=torch.float32)
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float32)
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max() / expected.abs().max()
    assert err <= rel, f"relative error {float(err):.2e}"


def test_inferred_config_equals_yaml(reference_dir):
    folder = reference_dir / "parity_debug"
    inferred = load_model(folder / "semantic_sam_reduced_swinT.pth").config
    assert inferred == load_model(folder / "semantic_sam_reduced_swinT.pth", folder / "semantic_sam_reduced_swinT.yaml").config


def test_encoder_stages(debug):
    model, z = debug
    image = torch.from_numpy(z["coffee256__image_hwc_uint8"].copy()).permute(2, 0, 1)
    x = model.preprocess(image)
    assert_rel_close(x, z["coffee256__image_input_normalized_padded"], 1e-6)
    with torch.no_grad():
        feats = model.image_encoder.backbone(x)
        for i, feat in enumerate(feats):
            assert_rel_close(feat, z[f"coffee256__backbone_res{i + 2}"])
        mask_features, levels = model.image_encoder.pixel_decoder(feats)
    assert_rel_close(mask_features, z["coffee256__pixdec_mask_features"])
    for i, level in enumerate(levels):
        assert_rel_close(level, z[f"coffee256__pixdec_multi_scale_{i}"])
    assert memory_shapes(*mask_features.shape[-2:]) == [tuple(s) for s in z["coffee256__pixdec_spatial_shapes"]]


@pytest.mark.parametrize("case", CASES)
def test_decoder_stages(debug, case):
    model, z = debug
    get = lambda name: z[f"coffee256__{case}__{name}"]  # noqa: E731
    image = torch.from_numpy(z["coffee256__image_hwc_uint8"].copy()).permute(2, 0, 1)
    boxes, pb = torch.from_numpy(get("points_padded")), torch.from_numpy(get("pb_in")).long()
    decoder = model.prompt_decoder
    with torch.no_grad():
        mask_features, values = model.image_encoder(model.preprocess(image))
        tgt, anchors = decoder.initial_queries(boxes, pb)
        outputs, refs = decoder.run_layers(boxes, pb, values, memory_shapes(*mask_features.shape[-2:]))
        logits, ious = decoder(boxes, pb, mask_features, values)
        hs = torch.stack([decoder.norm(o) for o in outputs])
    assert_rel_close(tgt, get("dec_tgt_in"), 1e-6)
    assert_rel_close(anchors, get("dec_refpoints_unsigmoid_in"), 1e-6)
    assert_rel_close(hs, get("dec_hs"))
    assert_rel_close(torch.stack(refs), get("dec_refs"))
    assert_rel_close(logits[0], get("pred_masks_lowres")[0][TOKEN_COLUMNS])
    np.testing.assert_allclose(ious[0].numpy(), get("pred_ious")[0, 0][TOKEN_COLUMNS], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def predictor(debug):
    model, z = debug
    predictor = Predictor(model, short_side=256)
    predictor.set_image(z["coffee256__image_hwc_uint8"])
    return predictor


def _official_gt(z, case):
    bits = np.unpackbits(z[f"coffee256__{case}__evaldemo_masks_gt0_packed"]).reshape(6, H, W).astype(bool)
    return bits[TOKEN_COLUMNS]


def test_click_through_the_public_api(debug, predictor):
    _, z = debug
    cx, cy = z["coffee256__pt_handle__points_in"][0, :2]
    pred = predictor.predict(points=[[cx * W, cy * H]])
    assert pred.mask_logits.shape == (1, 6, H, W) and pred.levels == LEVELS
    assert_rel_close(pred.mask_logits[0], z["coffee256__pt_handle__evaldemo_masks_full"][TOKEN_COLUMNS])
    np.testing.assert_allclose(
        pred.iou_scores[0], z["coffee256__pt_handle__pred_ious"][0, 0][TOKEN_COLUMNS], atol=1e-4, rtol=0
    )
    near_zero = np.abs(pred.mask_logits[0]) < 1e-3
    assert ((pred.masks[0] != _official_gt(z, "pt_handle")) & ~near_zero).sum() == 0


def test_box_through_the_public_api(debug, predictor):
    _, z = debug
    cx, cy, bw, bh = z["coffee256__box_cup__points_in"][0]
    box = [(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H]
    pred = predictor.predict(boxes=[box])
    y, x = z["coffee256__box_cup__evaldemo_masks_crop_yx"]
    crop = z["coffee256__box_cup__evaldemo_masks_crop"][TOKEN_COLUMNS]
    assert_rel_close(pred.mask_logits[0][:, y : y + crop.shape[1], x : x + crop.shape[2]], crop)
    near_zero = np.abs(pred.mask_logits[0]) < 1e-3
    assert ((pred.masks[0] != _official_gt(z, "box_cup")) & ~near_zero).sum() == 0
