"""AutomaticMaskGenerator: the official per-mask arithmetic on controlled logits, crops, records; invariants on a
tiny random model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import semsam_ros

from semsam_ros.inference.amg import (
    AutomaticMaskGenerator,
    build_point_grid,
    generate_crop_boxes,
    is_box_near_crop_edge,
)
from semsam_ros.inference.postprocess import (
    batched_mask_to_box,
    box_nms,
    compress_rle,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    stability_score,
)
from semsam_ros.testing import make_tiny_checkpoint


class DiscPredictor:
    """Stand-in predictor with known logits: level k of a point is a disc of radius 3 + 2k around it.

    Levels 4-6 also get a small island in the bottom-right corner and level 6 a small hole below the point, for the
    clean-up. IoU scores run 0.80, 0.84, ... 1.00 over the levels, shifted per point by a deterministic amount, so
    that the filters keep a known subset. Prompts are independent, as with the real predictor.
    """

    def __init__(self) -> None:
        self.image_size = (0, 0)
        self.upsampled = 0
        self.images: list[tuple[int, int]] = []

    def set_image(self, image: np.ndarray) -> None:
        self.image_size = (image.shape[0], image.shape[1])
        self.images.append(self.image_size)

    def predict_lowres(self, points: np.ndarray | None = None, boxes: None = None) -> tuple[torch.Tensor, ...]:
        h, w = self.image_size
        h4, w4 = math.ceil(h / 32) * 8, math.ceil(w / 32) * 8
        pts = torch.as_tensor(points, dtype=torch.float32)
        ys = (torch.arange(h4) * 4 + 1.5)[None, :, None]
        xs = (torch.arange(w4) * 4 + 1.5)[None, None, :]
        dist = ((xs - pts[:, 0, None, None]) ** 2 + (ys - pts[:, 1, None, None]) ** 2).sqrt()
        radii = 3.0 + 2.0 * torch.arange(1, 7, dtype=torch.float32)
        logits = (radii[None, :, None, None] - dist[:, None]) / 2
        logits[:, 3:, h4 - 3, w4 - 3] = 3.0
        rows = (pts[:, 1] / 4).long().clamp(max=h4 - 3) + 2
        logits[torch.arange(len(pts)), 5, rows, (pts[:, 0] / 4).long()] = -3.0
        shift = ((pts[:, 0] * 7 + pts[:, 1] * 3) % 10) / 100
        ious = 0.8 + 0.04 * torch.arange(6, dtype=torch.float32)[None] - shift[:, None]
        return logits, ious

    def upsample_logits(self, lowres: torch.Tensor) -> torch.Tensor:
        self.upsampled += len(lowres)
        h, w = self.image_size
        return F.interpolate(lowres[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :h, :w]


def official_flow(image: np.ndarray, gen: AutomaticMaskGenerator) -> list[dict]:
    """The official order of operations on the whole grid at once: upsample everything, then filter."""
    pred = DiscPredictor()
    pred.set_image(image)
    h, w = image.shape[:2]
    points = gen.point_grids[0] * [w, h]
    lowres, ious = pred.predict_lowres(points=points)
    cols = [lv - 1 for lv in gen.levels]
    logits = pred.upsample_logits(lowres[:, cols].flatten(0, 1))
    ious = ious[:, cols].flatten()
    levels = torch.tensor(gen.levels).repeat(len(points))
    pts = torch.as_tensor(points).repeat_interleave(len(cols), 0)
    keep = ious > gen.pred_iou_thresh
    logits, ious, levels, pts = logits[keep], ious[keep], levels[keep], pts[keep]
    stab = stability_score(logits, 0.0, gen.stability_score_offset)
    keep = stab >= gen.stability_score_thresh
    masks, ious, levels, pts, stab = logits[keep] > 0, ious[keep], levels[keep], pts[keep], stab[keep]
    boxes = batched_mask_to_box(masks)
    keep = box_nms(boxes, ious, gen.box_nms_thresh)
    masks, ious, levels, pts, stab, boxes = (t[keep] for t in (masks, ious, levels, pts, stab, boxes))
    if gen.min_mask_region_area:
        cleaned, scores = [], []
        for m in masks.numpy():
            m, a = remove_small_regions(m, gen.min_mask_region_area, "holes")
            m, b = remove_small_regions(m, gen.min_mask_region_area, "islands")
            cleaned.append(m)
            scores.append(float(not (a or b)))
        masks = torch.from_numpy(np.stack(cleaned))
        boxes = batched_mask_to_box(masks)
        keep = box_nms(boxes, torch.tensor(scores), gen.box_nms_thresh)
        masks, ious, levels, pts, stab, boxes = (t[keep] for t in (masks, ious, levels, pts, stab, boxes))
    return [
        {"segmentation": m.numpy(), "area": int(m.sum()), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
         "predicted_iou": float(i), "stability_score": float(s), "level": int(lv), "point_coords": [p.tolist()],
         "crop_box": [0, 0, w, h]}
        for m, b, i, s, lv, p in zip(masks, boxes.tolist(), ious, stab, levels, pts)
    ]


def image(h: int = 70, w: int = 90) -> np.ndarray:
    return np.zeros((h, w, 3), dtype=np.uint8)


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.pop("segmentation"), e.pop("segmentation"))
        assert g == e


@pytest.mark.parametrize("min_area", [0, 10, 60])
def test_matches_the_official_flow_and_upsamples_only_survivors(min_area: int) -> None:
    pred = DiscPredictor()
    gen = AutomaticMaskGenerator(pred, points_per_side=4, points_per_batch=5, pred_iou_thresh=0.85,
                                 stability_score_thresh=0.5, min_mask_region_area=min_area)
    got = gen.generate(image())
    _, ious = pred.predict_lowres(points=gen.point_grids[0] * [90, 70])
    assert pred.upsampled == int((ious > 0.85).sum()) < ious.numel()
    expected = official_flow(image(), gen)
    assert 0 < len(got) < ious.numel()
    assert_same_records(got, expected)


def generator(pred: DiscPredictor, **kwargs) -> AutomaticMaskGenerator:
    """Small grid, lenient filters (kwargs override)."""
    options = dict(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.85, stability_score_thresh=0.5)
    options.update(kwargs)
    return AutomaticMaskGenerator(pred, **options)


def test_grid_cell_centres_x_fastest() -> None:
    grid = build_point_grid(4)
    assert grid.shape == (16, 2) and grid.dtype == np.float64
    np.testing.assert_allclose(grid[:5], [[0.125, 0.125], [0.375, 0.125], [0.625, 0.125], [0.875, 0.125],
                                          [0.125, 0.375]])


def test_iou_filter_is_strict_on_the_raw_score() -> None:
    pred = DiscPredictor()
    pred.set_image(image())
    _, ious = pred.predict_lowres(points=build_point_grid(4) * [90, 70])
    thresh = float(ious[0, 5])
    records = generator(DiscPredictor(), pred_iou_thresh=thresh, box_nms_thresh=1.0,
                        min_mask_region_area=0).generate(image())
    got = sorted(r["predicted_iou"] for r in records)
    assert got == sorted(float(v) for v in ious.flatten() if v > thresh)


def test_stability_filter_is_inclusive() -> None:
    base = generator(DiscPredictor(), stability_score_thresh=0.0, box_nms_thresh=1.0,
                     min_mask_region_area=0).generate(image())
    scores = sorted({r["stability_score"] for r in base})
    cut = scores[len(scores) // 2]
    records = generator(DiscPredictor(), stability_score_thresh=cut, box_nms_thresh=1.0,
                        min_mask_region_area=0).generate(image())
    assert sorted(r["stability_score"] for r in records) == sorted(
        r["stability_score"] for r in base if r["stability_score"] >= cut)


def test_records_schema_and_segments() -> None:
    gen = generator(DiscPredictor())
    records = gen.generate(image())
    for r in records:
        assert set(r) == {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "level",
                          "point_coords", "crop_box"}
        m = r["segmentation"]
        assert m.dtype == bool and m.shape == (70, 90) and r["area"] == int(m.sum())
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert r["crop_box"] == [0, 0, 90, 70]
        (x, y), = r["point_coords"]
        assert m[int(y), int(x)] or r["level"] == 6  # the disc contains its point (level 6 has the hole below)
        assert all(isinstance(v, int) for v in r["bbox"]) and isinstance(r["predicted_iou"], float)
    segments = gen.generate_segments(image())
    assert len(segments) == len(records)
    for i, (s, r) in enumerate(zip(segments, records)):
        x, y, w, h = r["bbox"]
        assert s.id == i and s.level == r["level"] and s.area == r["area"] and s.bbox == (x, y, x + w + 1, y + h + 1)
        assert s.iou_score == r["predicted_iou"] and s.stability_score == r["stability_score"]
        assert s.point == tuple(r["point_coords"][0])
        np.testing.assert_array_equal(s.mask, r["segmentation"])


def test_coco_rle_output() -> None:
    binary = generator(DiscPredictor()).generate(image())
    coco = generator(DiscPredictor(), output_mode="coco_rle").generate(image())
    assert len(binary) == len(coco) > 0
    for b, c in zip(binary, coco):
        assert c["segmentation"]["size"] == [70, 90] and isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(rle_to_mask(c["segmentation"]), b["segmentation"])
        assert c["segmentation"] == compress_rle(mask_to_rle(b["segmentation"]))
    with pytest.raises(ValueError):
        AutomaticMaskGenerator(DiscPredictor(), output_mode="uncompressed")  # type: ignore[arg-type]


def test_crop_boxes_like_sam() -> None:
    boxes, layers = generate_crop_boxes((70, 90), 1, 512 / 1500)
    assert boxes == [[0, 0, 90, 70], [0, 0, 57, 47], [0, 24, 57, 70], [34, 0, 90, 47], [34, 24, 90, 70]]
    assert layers == [0, 1, 1, 1, 1]


def test_box_near_crop_edge() -> None:
    crop, image_box = [34, 24, 90, 70], [0, 0, 90, 70]
    boxes = torch.tensor([[40, 30, 80, 60], [60, 50, 89, 69], [54, 44, 80, 60], [55, 45, 80, 60], [0, 0, 5, 5]])
    assert is_box_near_crop_edge(boxes, crop, image_box).tolist() == [True, False, True, False, False]


def test_crops_encode_each_crop_and_map_back_to_the_image() -> None:
    pred = DiscPredictor()
    records = generator(pred, crop_n_layers=1).generate(image())
    assert pred.images == [(70, 90), (47, 57), (46, 57), (47, 56), (46, 56)]
    crop_boxes = {tuple(r["crop_box"]) for r in records}
    assert (0, 0, 90, 70) in crop_boxes and len(crop_boxes) > 1
    for r in records:
        x0, y0, w, h = r["crop_box"]
        m = r["segmentation"]
        assert m.shape == (70, 90) and not m[:y0].any() and not m[:, :x0].any()
        assert not m[y0 + h:].any() and not m[:, x0 + w:].any()
        (x, y), = r["point_coords"]
        assert x0 <= x < x0 + w and y0 <= y < y0 + h
        bx0, by0, bw, bh = r["bbox"]
        edges = ((bx0, x0, 0), (by0, y0, 0), (bx0 + bw, x0 + w, 90), (by0 + bh, y0 + h, 70))
        for edge, crop_edge, image_edge in edges:
            assert abs(edge - crop_edge) > 20 or crop_edge == image_edge  # masks cut by an inner crop edge are gone


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    generator(DiscPredictor(), progress=True).generate(image())
    assert "segment everything" in capsys.readouterr().err
    generator(DiscPredictor()).generate(image())
    assert capsys.readouterr().err == ""


def test_rejects_bad_images() -> None:
    with pytest.raises(ValueError):
        generator(DiscPredictor()).generate(np.zeros((10, 10), np.uint8))


# on the tiny random model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory: pytest.TempPathFactory) -> semsam_ros.Predictor:
    path = make_tiny_checkpoint(Path(tmp_path_factory.mktemp("amg")) / "tiny.pth")
    return semsam_ros.Predictor(semsam_ros.load_model(path), short_side=96)


def noise_image() -> np.ndarray:
    return (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)


def by_prompt(records: list[dict]) -> dict[tuple, dict]:
    """Records keyed by (point, level): unique when NMS is off."""
    keyed = {(tuple(r["point_coords"][0]), r["level"]): r for r in records}
    assert len(keyed) == len(records)
    return keyed


def tiny_generator(predictor: semsam_ros.Predictor, **kwargs) -> AutomaticMaskGenerator:
    """Filters loose enough for random weights; no NMS or clean-up, so that every candidate is visible."""
    options = dict(points_per_side=5, pred_iou_thresh=-0.1, stability_score_thresh=0.0, box_nms_thresh=1.0,
                   min_mask_region_area=0)
    options.update(kwargs)
    return AutomaticMaskGenerator(predictor, **options)


def test_tiny_model_batch_size_independence(tiny_predictor: semsam_ros.Predictor) -> None:
    reference = by_prompt(tiny_generator(tiny_predictor, points_per_batch=64).generate(noise_image()))
    assert 0 < len(reference) < 25 * 6  # the IoU filter removed some, kept some
    for batch in (2, 7):
        got = by_prompt(tiny_generator(tiny_predictor, points_per_batch=batch).generate(noise_image()))
        assert got.keys() == reference.keys()
        for key, r in got.items():
            np.testing.assert_array_equal(r["segmentation"], reference[key]["segmentation"])
            assert r["predicted_iou"] == pytest.approx(reference[key]["predicted_iou"], abs=1e-5)
            assert r["stability_score"] == reference[key]["stability_score"] and r["bbox"] == reference[key]["bbox"]


def test_tiny_model_level_subset(tiny_predictor: semsam_ros.Predictor) -> None:
    full = by_prompt(tiny_generator(tiny_predictor).generate(noise_image()))
    assert {level for _, level in full} == set(range(1, 7))
    sub = by_prompt(tiny_generator(tiny_predictor, levels=(5, 2)).generate(noise_image()))
    assert sub.keys() == {key for key in full if key[1] in (2, 5)}
    for key, r in sub.items():
        np.testing.assert_array_equal(r["segmentation"], full[key]["segmentation"])


def test_tiny_model_records(tiny_predictor: semsam_ros.Predictor) -> None:
    gen = AutomaticMaskGenerator(tiny_predictor, points_per_side=4, pred_iou_thresh=-0.1, stability_score_thresh=0.0,
                                 output_mode="coco_rle")
    records = gen.generate(noise_image())
    assert records
    grid = {tuple(p) for p in (build_point_grid(4) * [80, 64]).tolist()}
    for r in records:
        mask = rle_to_mask(r["segmentation"])
        assert mask.shape == (64, 80) and r["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert tuple(r["point_coords"][0]) in grid and 1 <= r["level"] <= 6 and r["crop_box"] == [0, 0, 80, 64]
        assert r["predicted_iou"] > -0.1
    boxes = torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in records)])
    ious = torch.tensor([r["predicted_iou"] for r in records])
    assert sorted(box_nms(boxes, ious, 0.7).tolist()) == list(range(len(records)))  # nothing left to suppress
