"""Post-processing on hand-made logits with known answers; AMG utilities against brute-force references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semsam_ros.types import KIND_OBJECT, KIND_PART

from semsam_ros.inference.postprocess import (
    PostprocessParams,
    area_from_rle,
    batched_mask_to_box,
    box_nms,
    compress_rle,
    decode_counts,
    encode_counts,
    mask_to_rle,
    postprocess_prompt,
    remove_small_regions,
    rle_to_mask,
    stability_score,
)

H = W = 40


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Bool HxW mask of the pixel rectangle [x0, x1) x [y0, y1)."""
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def logits_of(*masks: np.ndarray) -> np.ndarray:
    """Logits +4 inside, -4 outside."""
    return np.stack([np.where(m, 4.0, -4.0) for m in masks]).astype(np.float32)


def run(masks: list[np.ndarray], scores: list[float], params: PostprocessParams = PostprocessParams()) -> list:
    """postprocess_prompt on masks given the levels 1..K."""
    return postprocess_prompt(logits_of(*masks), np.array(scores), params, levels=tuple(range(1, len(masks) + 1)))


# remove_small_regions -----------------------------------------------------------------------------------------


def test_holes_fills_small_holes_including_border_touching_background() -> None:
    mask = rect(0, 0, 30, 30)
    mask[10:13, 10:13] = False  # 9-px hole
    mask[0:2, 0:2] = False  # 4-px background piece in the corner, touching the border
    out, changed = remove_small_regions(mask, 10, "holes")
    assert changed
    expected = rect(0, 0, 30, 30)
    # the large outer background (1600 - 900 px) stays
    np.testing.assert_array_equal(out, expected)


def test_holes_uses_eight_connectivity() -> None:
    mask = np.ones((H, W), dtype=bool)
    mask[5, 5] = mask[6, 6] = mask[7, 7] = False  # one diagonal 3-px hole with 8-connectivity
    out, changed = remove_small_regions(mask, 3, "holes")
    assert not changed and not out[5, 5]
    out, changed = remove_small_regions(mask, 4, "holes")
    assert changed and out.all()


def test_islands_removes_small_keeps_large() -> None:
    mask = rect(0, 0, 20, 20) | rect(30, 30, 33, 33)
    out, changed = remove_small_regions(mask, 10, "islands")
    assert changed
    np.testing.assert_array_equal(out, rect(0, 0, 20, 20))


def test_islands_all_small_keeps_the_largest_and_reports_a_change() -> None:
    mask = rect(0, 0, 2, 2) | rect(10, 10, 13, 13) | rect(30, 30, 31, 31)
    out, changed = remove_small_regions(mask, 100, "islands")
    assert changed
    np.testing.assert_array_equal(out, rect(10, 10, 13, 13))
    lone = rect(5, 5, 7, 7)
    out, changed = remove_small_regions(lone, 100, "islands")
    assert changed  # SAM's flag: a small region was found, although the mask comes back the same
    np.testing.assert_array_equal(out, lone)


def test_islands_tie_breaks_like_cv2_by_first_2x2_block() -> None:
    # two 2-px islands; in pixel raster order the one on row 2 comes first, in 2x2-block order the one on row 3
    mask = np.zeros((7, 27), dtype=bool)
    mask[2, 18:20] = True
    mask[3:5, 10] = True
    out, _ = remove_small_regions(mask, 16, "islands")
    expected = np.zeros_like(mask)
    expected[3:5, 10] = True
    np.testing.assert_array_equal(out, expected)


def test_remove_small_regions_empty_and_zero_threshold() -> None:
    empty = np.zeros((H, W), dtype=bool)
    for mode in ("holes", "islands"):
        out, changed = remove_small_regions(empty, 100, mode)
        assert not changed and not out.any()
    mask = rect(0, 0, 3, 3)
    assert remove_small_regions(mask, 0, "islands")[1] is False
    with pytest.raises(ValueError):
        remove_small_regions(mask, 10, "both")  # type: ignore[arg-type]


# postprocess_prompt ---------------------------------------------------------------------------------------------


def test_visit_order_levels_and_geometry() -> None:
    masks = [rect(0, 0, 20, 20), rect(0, 0, 30, 30), rect(5, 5, 15, 25)]
    segs = postprocess_prompt(logits_of(*masks), np.array([0.7, 0.9, 0.8]), levels=(2, 4, 6), prompt_id=3,
                              point=(7.0, 8.0))
    assert [s.level for s in segs] == [4, 6, 2]
    assert [s.id for s in segs] == [0, 1, 2]
    s = segs[1]
    assert (s.area, s.raw_area, s.bbox) == (200, 200, (5, 5, 15, 25))
    assert s.centroid == pytest.approx((9.5, 14.5))
    assert s.iou_score == pytest.approx(0.8) and s.prompt_id == 3 and s.point == (7.0, 8.0)


def test_threshold_applies_to_score_rounded_to_two_decimals() -> None:
    masks = [rect(0, 0, 10, 10), rect(20, 20, 30, 30), rect(0, 20, 10, 30)]
    segs = run(masks, [0.4951, 0.4949, 0.9])
    assert [s.level for s in segs] == [3, 1]  # 0.4951 rounds to 0.5 and is kept, 0.4949 rounds to 0.49
    segs = run(masks, [0.4951, 0.4949, 0.9], PostprocessParams(iou_threshold=0.0))
    assert [s.level for s in segs] == [3, 1, 2]


def test_duplicates_against_kept_raw_masks() -> None:
    big = rect(0, 0, 20, 20)  # 400 px
    near = big.copy()
    near[0, 0:15] = False  # IoU 385/400 = 0.9625 > 0.95: duplicate
    far = big.copy()
    far[0:2, 0:20] = False  # IoU 360/400 = 0.9: kept
    segs = run([big, near, far], [0.9, 0.8, 0.7])
    assert [s.level for s in segs] == [1, 3]
    segs = run([big, near, far], [0.9, 0.8, 0.7], PostprocessParams(dedupe_iou=0.97))
    assert [s.level for s in segs] == [1, 2, 3]


def test_duplicate_test_uses_the_raw_mask_not_the_cleaned_one() -> None:
    holed = rect(0, 0, 20, 20)
    holed[5:8, 5:8] = False  # 9-px hole, filled by clean-up: raw IoU with the full square is 391/400 > 0.95
    full = rect(0, 0, 20, 20)
    segs = run([holed, full], [0.9, 0.8])
    assert len(segs) == 1 and segs[0].raw_area == 391 and segs[0].area == 400
    segs = run([holed, full], [0.9, 0.8], PostprocessParams(dedupe_iou=0.99))
    assert [s.level for s in segs] == [1, 2]


def test_empty_masks_are_never_duplicates() -> None:
    empty = np.zeros((H, W), dtype=bool)
    segs = run([empty, empty], [0.9, 0.8])
    assert [s.area for s in segs] == [0, 0] and segs[0].bbox == (0, 0, 0, 0)


def test_keep_at_least_one_keeps_the_last_visited() -> None:
    masks = [rect(0, 0, 10, 10), rect(0, 0, 20, 20), rect(0, 0, 30, 30)]
    segs = run(masks, [0.3, 0.1, 0.2])
    assert [s.level for s in segs] == [2]  # the lowest score is visited last and kept
    segs = run([masks[0], masks[0], masks[0]], [0.9, 0.8, 0.7])
    assert [s.level for s in segs] == [1]  # something kept: the duplicates stay dropped


def test_threshold_as_a_strict_minimum_can_keep_nothing() -> None:
    masks = [rect(0, 0, 10, 10), rect(0, 0, 20, 20), rect(0, 0, 30, 30)]
    strict = PostprocessParams(hole_area=0, island_area=0, keep_best_when_none=False)
    assert run(masks, [0.3, 0.1, 0.2], strict) == []
    assert [s.level for s in run(masks, [0.3, 0.6, 0.2], strict)] == [2]


def test_kind_follows_the_level() -> None:
    masks = [rect(0, 0, 10, 10), rect(0, 0, 20, 20)]
    segs = postprocess_prompt(logits_of(*masks), np.array([0.9, 0.8]), PostprocessParams(), levels=(3, 4))
    assert [(s.level, s.kind) for s in segs] == [(3, KIND_OBJECT), (4, KIND_PART)]


def test_cleanup_holes_then_islands() -> None:
    mask = rect(0, 0, 30, 30)
    mask[10:15, 10:15] = False  # 25-px hole: filled
    mask[20:30, 20:30] = False  # a notch open to the outer background: not a hole
    mask |= rect(35, 35, 38, 38)  # 9-px island: removed
    segs = postprocess_prompt(logits_of(mask), np.array([0.9]), levels=(5,))
    expected = rect(0, 0, 30, 30)
    expected[20:30, 20:30] = False
    np.testing.assert_array_equal(segs[0].mask, expected)
    assert segs[0].raw_area == int(mask.sum()) and segs[0].area == int(expected.sum())
    segs = postprocess_prompt(logits_of(mask), np.array([0.9]), PostprocessParams(hole_area=0, island_area=0),
                              levels=(5,))
    np.testing.assert_array_equal(segs[0].mask, mask)


def test_sort_by_raw_area_ascending() -> None:
    masks = [rect(0, 0, 30, 30), rect(0, 0, 10, 10), rect(20, 20, 40, 40)]
    segs = run(masks, [0.9, 0.8, 0.7], PostprocessParams(sort="area"))
    assert [s.raw_area for s in segs] == [100, 400, 900]
    assert [s.id for s in segs] == [1, 2, 0]
    with pytest.raises(ValueError):
        PostprocessParams(sort="size")  # type: ignore[arg-type]


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        postprocess_prompt(np.zeros((6, 4, 4), np.float32), np.zeros(5, np.float32))


# AMG utilities ---------------------------------------------------------------------------------------------------


def test_stability_score_matches_counting() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 13, 17, generator=g) * 3
    logits[4] = -5.0  # no pixel above -1: 0/0
    got = stability_score(logits, 0.0, 1.0)
    for i in range(4):
        hi = sum(1 for v in logits[i].flatten().tolist() if v > 1.0)
        lo = sum(1 for v in logits[i].flatten().tolist() if v > -1.0)
        assert got[i].item() == pytest.approx(hi / lo, rel=1e-7)
    assert torch.isnan(got[4]) and got.dtype == torch.float32
    assert stability_score(logits[:1], 0.5, 0.25).item() == pytest.approx(
        (logits[0] > 0.75).sum().item() / (logits[0] > 0.25).sum().item())


def test_batched_mask_to_box_inclusive_max() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 3, 9, 11)) < 0.05
    masks[1, 2] = False
    boxes = batched_mask_to_box(torch.from_numpy(masks))
    assert boxes.shape == (2, 3, 4) and boxes.dtype == torch.int64
    for idx in np.ndindex(2, 3):
        ys, xs = np.nonzero(masks[idx])
        expected = [0, 0, 0, 0] if xs.size == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]
        assert boxes[idx].tolist() == expected
    assert batched_mask_to_box(torch.zeros(0, 4, 5, dtype=torch.bool)).shape == (0, 4)


def brute_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """torchvision's rule written pair by pair with float32 scalars."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    removed: set[int] = set()
    keep = []
    for a, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        bi = boxes[i].astype(np.float32)
        ai = (bi[2] - bi[0]) * (bi[3] - bi[1])
        for j in order[a + 1:]:
            bj = boxes[j].astype(np.float32)
            aj = (bj[2] - bj[0]) * (bj[3] - bj[1])
            w = max(np.float32(0), min(bi[2], bj[2]) - max(bi[0], bj[0]))
            h = max(np.float32(0), min(bi[3], bj[3]) - max(bi[1], bj[1]))
            inter = w * h
            union = ai + aj - inter
            if union > 0 and float(inter / union) > thresh:
                removed.add(j)
    return keep


@pytest.mark.parametrize("n", [1, 7, 60, 300])
@pytest.mark.parametrize("tied", [False, True])
def test_box_nms_matches_brute_force(n: int, tied: bool) -> None:
    rng = np.random.default_rng(n)
    xy = rng.uniform(0, 50, (n, 2)) if n > 100 else rng.integers(0, 50, (n, 2))
    wh = rng.integers(0, 30, (n, 2))  # zero widths and heights included
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.integers(0, 3, n) if tied else rng.random(n)).astype(np.float32)  # tied: many equal scores
    for thresh in (0.0, 0.3, 0.7):
        got = box_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
        assert got == brute_nms(boxes, scores, thresh)


def test_box_nms_strict_threshold_and_stable_ties() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 5.1], [40, 40, 41, 41]])
    assert box_nms(boxes[:2], torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]  # IoU exactly 0.5 stays
    assert box_nms(boxes[[0, 2]], torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert box_nms(boxes, torch.ones(4), 0.4).tolist() == [0, 3]  # equal scores: input order decides
    assert box_nms(boxes[[3, 0]], torch.tensor([0.1, 0.9]), 0.4).tolist() == [1, 0]
    zero = torch.tensor([[3, 3, 3, 3], [3, 3, 3, 3]])  # zero-area boxes (one-pixel masks): NaN IoU
    assert box_nms(zero, torch.tensor([1.0, 0.5]), 0.7).tolist() == [0, 1]
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.7).tolist() == []


# RLE -------------------------------------------------------------------------------------------------------------


def test_uncompressed_rle_is_column_major_and_starts_with_zeros() -> None:
    m = np.zeros((4, 5), dtype=bool)
    m[1:3, 1:4] = True
    assert mask_to_rle(m) == {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    m = np.zeros((2, 2), dtype=bool)
    m[0, 0] = True
    assert mask_to_rle(m) == {"size": [2, 2], "counts": [0, 1, 3]}
    assert mask_to_rle(np.ones((2, 3), dtype=bool))["counts"] == [0, 6]


# strings produced by pycocotools.mask.encode for these masks
def _coco_masks() -> list[tuple[np.ndarray, str]]:
    a = np.zeros((4, 5), dtype=bool)
    a[1:3, 1:4] = True
    b = np.zeros((6, 7), dtype=bool)
    b[0, 0] = True
    b[2:5, 3:7] = True
    b[5, :] = True
    c = np.zeros((60, 70), dtype=bool)
    c[5:50, 10:65] = True
    c[20:30, 20:30] = False
    return [
        (a, "5220003"),
        (b, "01401000M3000000"),
        (c, "mb0]1?000000000000000000ROK55KK55KK55KK55KK55KK55KK55KK55KK55KK55i"
            + "0" * 69 + "W9"),
    ]


def test_compressed_rle_matches_pycocotools_strings() -> None:
    for mask, text in _coco_masks():
        rle = mask_to_rle(mask)
        assert compress_rle(rle) == {"size": list(mask.shape), "counts": text}
        assert decode_counts(text) == rle["counts"]
        np.testing.assert_array_equal(rle_to_mask({"size": list(mask.shape), "counts": text}), mask)
        np.testing.assert_array_equal(rle_to_mask({"size": list(mask.shape), "counts": text.encode()}), mask)
        assert area_from_rle({"size": list(mask.shape), "counts": text}) == int(mask.sum())


def test_rle_round_trips() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        rle = mask_to_rle(mask)
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        np.testing.assert_array_equal(rle_to_mask(compress_rle(rle)), mask)
        assert area_from_rle(rle) == area_from_rle(compress_rle(rle)) == int(mask.sum())
    counts = [0, 5, 100000, 3, 1, 1, 70000, 2]
    assert decode_counts(encode_counts(counts)) == counts
    with pytest.raises(ValueError):
        rle_to_mask({"size": [3, 3], "counts": [4, 4]})
