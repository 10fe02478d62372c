"""Accuracy guard: IoU and score arithmetic, the refuse / warn decision, fixed inputs, end-to-end evaluation."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from semsam_ros.inference.backends.accuracy import (
    GUARD_CHUNKS,
    AccuracyError,
    AccuracyReport,
    check,
    compare,
    evaluate,
    guard_images,
    guard_prompts,
    mask_iou,
)
from semsam_ros.inference.backends import EagerBackend


def test_mask_iou_per_prompt_and_level():
    ref = -np.ones((2, 3, 2, 4))
    cand = -np.ones((2, 3, 2, 4))
    ref[0, 0, 0, :4] = 1  # 4 pixels
    cand[0, 0, 0, 2:] = 1  # 2 pixels, 2 shared -> 2 / 4
    cand[0, 1, 1, 0] = 1  # reference empty, candidate not -> 0
    ref[1, 2] = 1
    cand[1, 2] = 1  # identical full masks -> 1
    cand[1, 2, 0, 0] = 0.0  # logit 0 is background: 7 / 8
    iou = mask_iou(ref, cand)
    np.testing.assert_allclose(iou, [[0.5, 0.0, 1.0], [1.0, 1.0, 7 / 8]])


def test_report_summary_figures():
    ref = np.zeros((2, 6, 2, 2)) - 1
    logits = ref.copy()
    ref[:, :, 0, 0] = 1
    logits[:, :, 0, :] = 1  # every mask: IoU 1/2
    logits[1] = ref[1]  # second prompt exact
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    report = compare(ref, scores, logits, scores + 0.25 * np.eye(2, 6))
    s = report.summary()
    assert s["prompts"] == 2 and s["mean_mask_iou"] == 0.75 and s["min_mask_iou"] == 0.5
    assert s["mean_mask_iou_per_level"] == [0.75] * 6
    assert s["max_iou_score_diff"] == 0.25 and s["mean_iou_score_diff"] == pytest.approx(0.5 / 12, abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        compare(ref, scores, logits[:1], scores[:1])


def test_check_refuses_or_warns_below_the_threshold(caplog):
    good = AccuracyReport(np.full((4, 6), 0.99), np.zeros((4, 6)))
    bad = AccuracyReport(np.concatenate([np.full((3, 6), 0.99), np.full((1, 6), 0.9)]), np.full((4, 6), 0.02))
    assert check(good, "engine") is True
    assert bad.mean_iou == pytest.approx(0.9675)
    with pytest.raises(AccuracyError, match=r"engine: mean mask IoU 0\.9675 .* below 0\.98 \(min 0\.9000.*refused"):
        check(bad, "engine")
    with caplog.at_level(logging.WARNING):
        assert check(bad, "engine", on_failure="warn") is False
    assert "0.9675" in caplog.text and "kept because on_failure='warn'" in caplog.text
    assert check(bad, "engine", min_mean_iou=0.95) is True
    with pytest.raises(ValueError, match="on_failure"):
        check(bad, "engine", on_failure="ignore")


def test_guard_inputs_are_fixed():
    first, second = guard_images((64, 96)), guard_images((64, 96))
    assert [im.shape for im in first] == [(64, 96, 3)] * 2 and all(im.dtype == np.uint8 for im in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert first[0].std() > 40 and first[1].std() > 40  # structured, not flat
    prompts = guard_prompts()
    assert prompts.shape == (20, 4) and sum(GUARD_CHUNKS) == 20
    assert bool(((prompts >= 0) & (prompts <= 1)).all())


def test_evaluate_runs_the_reference_and_the_candidate_on_the_same_inputs(tiny_model):
    reference = EagerBackend(tiny_model, "cpu")
    same = EagerBackend(tiny_model, "cpu", static_prompts=True, buckets=(1, 8))
    report = evaluate(reference, same, tiny_model.preprocess, (64, 96), torch.device("cpu"))
    assert report.mask_iou.shape == (40, 6)  # 2 images x 20 prompts
    assert report.mean_iou == 1.0 and report.score_diff.max() < 1e-5

    class Flipped:
        image_encoder = reference.image_encoder

        def prompt_decoder(self, *args):
            logits, ious = reference.prompt_decoder(*args)
            return -logits, ious + 1

    report = evaluate(reference, Flipped(), tiny_model.preprocess, (64, 96), torch.device("cpu"))
    assert report.mean_iou < 0.5 and report.score_diff.min() == pytest.approx(1.0)
