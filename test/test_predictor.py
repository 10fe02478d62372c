"""Predictor: the public API contract, resizing rules and clear errors for bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import semsam_ros
from semsam_ros.inference.predictor import Predictor, prompts_to_boxes, resized_shape


@pytest.mark.parametrize(
    "wh, expected_wh",
    [((1280, 853), (960, 640)), ((1000, 667), (959, 640)), ((640, 480), (853, 640)), ((500, 640), (640, 819)),
     ((640, 640), (640, 640))],
)
def test_resize_rule_truncates_the_long_side(wh, expected_wh):
    w, h = wh
    assert resized_shape(h, w, 640)[::-1] == expected_wh


def test_public_api(tiny_checkpoint, test_image):
    model = semsam_ros.load_model(tiny_checkpoint)
    predictor = semsam_ros.Predictor(model, device="cpu", input_size=64)
    predictor.set_image(test_image)
    pred = predictor.predict(points=np.array([[10.0, 12.0], [50, 24]]), boxes=np.array([[30, 10, 70, 40]]))
    assert pred.mask_logits.shape == (3, 6, 48, 80) and pred.mask_logits.dtype == np.float32
    assert pred.iou_scores.shape == (3, 6) and pred.iou_scores.dtype == np.float32
    assert pred.masks.dtype == bool and np.array_equal(pred.masks, pred.mask_logits > 0)
    assert pred.levels == (1, 2, 3, 4, 5, 6)
    assert predictor.image_size == (48, 80)


def test_order_points_then_boxes_and_independence(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    both = tiny_predictor.predict(points=[[10, 12]], boxes=[[30, 10, 70, 40]])
    point = tiny_predictor.predict(points=[[10, 12]])
    box = tiny_predictor.predict(boxes=[[30, 10, 70, 40]])
    scale = np.abs(both.mask_logits).max()
    assert np.abs(both.mask_logits[0] - point.mask_logits[0]).max() <= 1e-4 * scale
    assert np.abs(both.mask_logits[1] - box.mask_logits[0]).max() <= 1e-4 * scale
    np.testing.assert_allclose(both.iou_scores, np.concatenate([point.iou_scores, box.iou_scores]), atol=1e-5)


def test_prompt_encoding_matches_the_official_convention():
    rel = prompts_to_boxes([[40, 30]], [[10, 20, 50, 60]], height=100, width=200)
    np.testing.assert_allclose(rel, [[0.2, 0.3, 0.005, 0.005], [0.15, 0.4, 0.2, 0.4]], rtol=1e-6)
    assert rel.dtype == np.float32


def test_image_resized_for_the_model_and_masks_returned_at_input_size(tiny_model, test_image):
    big = np.repeat(np.repeat(test_image, 2, axis=0), 2, axis=1)  # 96x160, short side != input_size
    predictor = Predictor(tiny_model, input_size=64)
    emb = predictor.encode(big)
    assert emb.input_size == (64, 106) and emb.padded_size == (64, 128) and emb.original_size == (96, 160)
    predictor.set_embedding(emb)
    pred = predictor.predict(points=[[100, 50]])
    assert pred.mask_logits.shape == (1, 6, 96, 160)


def test_set_embedding_reuses_the_encoder_output(tiny_model, test_image):
    predictor = Predictor(tiny_model, input_size=64)
    emb = predictor.encode(test_image)
    predictor.set_image(np.zeros_like(test_image))
    predictor.set_embedding(emb)
    reused = predictor.predict(points=[[20, 20]])
    predictor.set_image(test_image)
    fresh = predictor.predict(points=[[20, 20]])
    np.testing.assert_array_equal(reused.mask_logits, fresh.mask_logits)


def test_upsample_is_bilinear_then_crop(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)  # 48x80 -> resized 64x106, padded 64x128
    lowres, _ = tiny_predictor.predict_lowres(points=[[5, 5]])
    emb = tiny_predictor.embedding
    full = torch.nn.functional.interpolate(lowres, size=emb.padded_size, mode="bilinear", align_corners=False)
    crop = full[..., :64, :106]
    expected = torch.nn.functional.interpolate(crop, size=(48, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(tiny_predictor.upsample_logits(lowres), expected)


def test_no_prompts_gives_empty_results(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    pred = tiny_predictor.predict()
    assert pred.mask_logits.shape == (0, 6, 48, 80) and pred.iou_scores.shape == (0, 6)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((10, 10), dtype=np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), dtype=np.uint8), "HxWx3"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images(tiny_predictor, image, message):
    with pytest.raises(ValueError, match=message):
        tiny_predictor.set_image(image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [[81, 10]]}, "outside the 80x48 image"),
        ({"points": [[-1, 10]]}, "outside"),
        ({"points": [[np.nan, 10]]}, "NaN"),
        ({"points": [[1, 2, 3]]}, r"shape \(N, 2\)"),
        ({"boxes": [[30, 10, 20, 40]]}, "X1 > X0"),
        ({"boxes": [[30, 10, 90, 40]]}, "outside"),
    ],
)
def test_bad_prompts(tiny_predictor, test_image, kwargs, message):
    tiny_predictor.set_image(test_image)
    with pytest.raises(ValueError, match=message):
        tiny_predictor.predict(**kwargs)


def test_predict_before_set_image(tiny_model):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_model).predict(points=[[1, 1]])
