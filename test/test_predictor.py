"""Predictor: the public API contract, resizing rules and clear errors for bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import semsam_ros
from semsam_ros.config import ModelConfig
from semsam_ros.inference.predictor import Predictor, min_short_side, prompts_to_boxes, resized_shape
from semsam_ros.testing import random_model, tiny_config


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
    predictor = semsam_ros.Predictor(model, device="cpu", short_side=96)
    predictor.set_image(test_image)
    pred = predictor.predict(points=np.array([[10.0, 12.0], [50, 24]]), boxes=np.array([[30, 10, 70, 40]]))
    assert pred.mask_logits.shape == (3, 6, 48, 80) and pred.mask_logits.dtype == np.float32
    assert pred.iou_scores.shape == (3, 6) and pred.iou_scores.dtype == np.float32
    assert pred.masks.dtype == bool and np.array_equal(pred.masks, pred.mask_logits > 0)
    assert pred.levels == (1, 2, 3, 4, 5, 6)
    assert predictor.image_size == (48, 80)


def test_encode_batch_groups_by_padded_size_and_equals_encode(tiny_model, test_image):
    """Three images, two padded sizes: two encoder calls, and every embedding equals encoding its image alone."""
    predictor = Predictor(tiny_model, short_side=96)
    calls = []
    encoder = predictor.backend.image_encoder
    predictor.backend.image_encoder = lambda x: calls.append(tuple(x.shape)) or encoder(x)
    images = [test_image, np.ascontiguousarray(test_image[::-1]), np.ascontiguousarray(test_image[:, :48])]
    batch = predictor.encode_batch(images)
    assert sorted(calls) == [(1, 3, 96, 96), (2, 3, 96, 160)]
    for image, emb in zip(images, batch):
        alone = predictor.encode(image)
        assert (emb.original_size, emb.resized_size, emb.padded_size) == (
            alone.original_size, alone.resized_size, alone.padded_size)
        assert emb.mask_features.shape == alone.mask_features.shape and emb.values.shape[0] == 1
        scale = alone.mask_features.abs().max()
        assert (emb.mask_features - alone.mask_features).abs().max() <= 1e-5 * scale
        predictor.set_embedding(emb)
        batched = predictor.predict(points=[[10, 12]])
        predictor.set_embedding(alone)
        single = predictor.predict(points=[[10, 12]])
        np.testing.assert_allclose(batched.mask_logits, single.mask_logits, rtol=1e-4, atol=1e-4)
    assert not torch.equal(batch[0].mask_features, batch[1].mask_features)
    assert predictor.encode_batch([]) == []


def test_input_size_is_a_deprecated_alias_of_short_side(tiny_model, test_image):
    with pytest.warns(DeprecationWarning, match="short_side"):
        old = Predictor(tiny_model, input_size=80)
    with pytest.warns(DeprecationWarning, match="short_side"):
        assert old.input_size == 80
    assert old.short_side == 80
    emb = old.encode(test_image)
    with pytest.warns(DeprecationWarning, match="resized_size"):
        assert emb.input_size == emb.resized_size == (80, 133)
    with pytest.raises(TypeError, match="not both"):
        Predictor(tiny_model, short_side=80, input_size=80)
    assert Predictor(tiny_model).short_side == 640


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


def test_image_resized_for_the_model_and_masks_returned_at_the_size_given(tiny_model, test_image):
    big = np.repeat(np.repeat(test_image, 2, axis=0), 2, axis=1)  # 96x160, short side != short_side
    predictor = Predictor(tiny_model, short_side=80)
    emb = predictor.encode(big)
    assert emb.original_size == (96, 160) and emb.resized_size == (80, 133) and emb.padded_size == (96, 160)
    predictor.set_embedding(emb)
    pred = predictor.predict(points=[[100, 50]])
    assert pred.mask_logits.shape == (1, 6, 96, 160)


def test_set_embedding_reuses_the_encoder_output(tiny_model, test_image):
    predictor = Predictor(tiny_model, short_side=96)
    emb = predictor.encode(test_image)
    predictor.set_image(np.zeros_like(test_image))
    predictor.set_embedding(emb)
    reused = predictor.predict(points=[[20, 20]])
    predictor.set_image(test_image)
    fresh = predictor.predict(points=[[20, 20]])
    np.testing.assert_array_equal(reused.mask_logits, fresh.mask_logits)


def test_upsample_is_bilinear_then_crop(tiny_model, test_image):
    predictor = Predictor(tiny_model, short_side=80)
    predictor.set_image(test_image)  # 48x80 -> resized 80x133, padded 96x160
    lowres, _ = predictor.predict_lowres(points=[[5, 5]])
    assert lowres.shape == (1, 6, 24, 40)
    full = torch.nn.functional.interpolate(lowres, size=(96, 160), mode="bilinear", align_corners=False)
    crop = full[..., :80, :133]
    expected = torch.nn.functional.interpolate(crop, size=(48, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(predictor.upsample_logits(lowres), expected)


def test_levels_select_columns_in_the_order_given(tiny_predictor, test_image, monkeypatch):
    tiny_predictor.set_image(test_image)
    prompts = {"points": [[10, 12], [60, 30]], "boxes": [[30, 10, 70, 40]]}
    every = tiny_predictor.predict(**prompts)
    lowres_every, _ = tiny_predictor.predict_lowres(**prompts)
    upsampled = []
    upsample = tiny_predictor.upsample_logits
    monkeypatch.setattr(tiny_predictor, "upsample_logits", lambda x: upsampled.append(x.shape) or upsample(x))
    for levels in [(4,), (5, 2), (6, 1, 3)]:
        columns = [level - 1 for level in levels]
        pred = tiny_predictor.predict(**prompts, levels=levels)
        assert pred.levels == levels and upsampled[-1] == (3, len(levels), 24, 40)
        np.testing.assert_array_equal(pred.mask_logits, every.mask_logits[:, columns])
        np.testing.assert_array_equal(pred.iou_scores, every.iou_scores[:, columns])
        lowres, ious = tiny_predictor.predict_lowres(**prompts, levels=levels)
        torch.testing.assert_close(lowres, lowres_every[:, columns], rtol=0, atol=0)
        np.testing.assert_array_equal(ious.numpy(), pred.iou_scores)
    assert tiny_predictor.predict(levels=[3]).mask_logits.shape == (0, 1, 48, 80)


@pytest.mark.parametrize("levels", [(), (0,), (7,), (2, 2), (1, 2, 3, 4, 5, 6, 1)])
def test_bad_levels(tiny_predictor, test_image, levels):
    tiny_predictor.set_image(test_image)
    with pytest.raises(ValueError, match="levels must be distinct values of"):
        tiny_predictor.predict(points=[[5, 5]], levels=levels)


def test_bgr_images_are_flipped_to_rgb(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    rgb = tiny_predictor.predict(points=[[50, 24]])
    tiny_predictor.set_image(test_image[..., ::-1], image_format="BGR")
    np.testing.assert_array_equal(tiny_predictor.predict(points=[[50, 24]]).mask_logits, rgb.mask_logits)
    tiny_predictor.set_image(test_image[..., ::-1].copy())
    assert not np.array_equal(tiny_predictor.predict(points=[[50, 24]]).mask_logits, rgb.mask_logits)
    with pytest.raises(ValueError, match="image_format"):
        tiny_predictor.encode(test_image, image_format="GRAY")


def test_reset_image_forgets_the_embedding(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    tiny_predictor.reset_image()
    assert tiny_predictor.embedding is None
    with pytest.raises(RuntimeError, match="no image set"):
        tiny_predictor.predict(points=[[5, 5]])


def test_point_labels_must_all_be_foreground(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    points = [[10, 12], [60, 30]]
    labelled = tiny_predictor.predict(points=points, point_labels=[1, 1])
    np.testing.assert_array_equal(labelled.mask_logits, tiny_predictor.predict(points=points).mask_logits)
    with pytest.raises(ValueError, match="no negative or multi-click prompts"):
        tiny_predictor.predict(points=points, point_labels=[1, 0])
    with pytest.raises(ValueError, match="2 entries for 1 points"):
        tiny_predictor.predict(points=points[:1], point_labels=[1, 1])


def test_smallest_short_side_is_computed_from_the_config(tiny_model):
    assert min_short_side(tiny_model.config) == 65  # one channel per GroupNorm group: the stride-64 map needs 2x2
    assert min_short_side(ModelConfig.preset("swint")) == min_short_side(ModelConfig.preset("swinl")) == 32
    with pytest.raises(ValueError, match="short_side=64 .* smallest usable value is 65"):
        Predictor(tiny_model, short_side=64)
    predictor = Predictor(tiny_model, short_side=65)
    predictor.set_image(np.zeros((65, 65, 3), np.uint8))  # the boundary runs...
    predictor.short_side = 64
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # ...and one below it does not
        predictor.set_image(np.zeros((64, 64, 3), np.uint8))


def test_short_side_below_32_is_rejected_for_any_model():
    config = dataclasses.replace(tiny_config(), conv_dim=64, mask_dim=64, hidden_dim=64)
    assert min_short_side(config) == 32
    model = random_model(config)
    with pytest.raises(ValueError, match="short_side=31 .* smallest usable value is 32"):
        Predictor(model, short_side=31)
    Predictor(model, short_side=32).set_image(np.zeros((32, 32, 3), np.uint8))


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
        ({"points": [[80, 10]]}, r"point \(80, 10\) is outside"),  # column 80 of an 80-wide image does not exist
        ({"points": [[10, 48]]}, "outside"),
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


def test_the_last_pixel_is_a_point_and_a_full_image_box_is_a_box(tiny_predictor, test_image):
    tiny_predictor.set_image(test_image)
    pred = tiny_predictor.predict(points=[[79.5, 47.5]], boxes=[[0, 0, 80, 48]])
    assert pred.mask_logits.shape[0] == 2


def test_predict_before_set_image(tiny_model):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_model).predict(points=[[1, 1]])
