"""Accuracy guard: masks and IoU scores of a compiled or low-precision backend against fp32 eager.

Both run the same fixed synthetic images and prompts. Masks are compared at the decoder's resolution (stride-4
logits > 0): IoU per prompt and granularity level, an empty-vs-empty pair counting as 1. IoU scores are compared
by absolute difference. A backend whose mean mask IoU is below the threshold (0.98 by default) is refused, or
only warned about when asked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from ...types import MIN_MEAN_IOU, ON_FAILURE

log = logging.getLogger(__name__)

GUARD_CHUNKS = (1, 5, 14)  # prompts per decoder call, so that the 1-, 8- and 64-prompt buckets all run


class AccuracyError(RuntimeError):
    """A backend's masks differ too much from fp32 eager."""


class Runner(Protocol):
    def image_encoder(self, image: Tensor) -> tuple[Tensor, Tensor]: ...

    def prompt_decoder(
        self, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor
    ) -> tuple[Tensor, Tensor]: ...


def mask_iou(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """IoU of the masks ``logits > 0`` over the last two axes, e.g. (N, 6, h, w) -> (N, 6); 1 where both are empty."""
    a, b = reference > 0, candidate > 0
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


@dataclass(frozen=True)
class AccuracyReport:
    """Per prompt and level (columns in level order 1..6): mask IoU and absolute IoU-score difference."""

    mask_iou: np.ndarray  # (N, 6)
    score_diff: np.ndarray  # (N, 6)

    @property
    def mean_iou(self) -> float:
        return float(self.mask_iou.mean())

    def summary(self) -> dict[str, Any]:
        return {
            "prompts": int(self.mask_iou.shape[0]),
            "mean_mask_iou": round(self.mean_iou, 5),
            "min_mask_iou": round(float(self.mask_iou.min()), 5),
            "mean_mask_iou_per_level": [round(float(v), 5) for v in self.mask_iou.mean(axis=0)],
            "max_iou_score_diff": round(float(self.score_diff.max()), 6),
            "mean_iou_score_diff": round(float(self.score_diff.mean()), 6),
        }


def compare(ref_logits: np.ndarray, ref_scores: np.ndarray, logits: np.ndarray, scores: np.ndarray) -> AccuracyReport:
    """Report for (N, 6, h, w) logits and (N, 6) IoU scores against the reference ones."""
    if ref_logits.shape != logits.shape or ref_scores.shape != scores.shape:
        raise ValueError(f"shapes differ: {ref_logits.shape} vs {logits.shape}, {ref_scores.shape} vs {scores.shape}")
    diff = np.abs(ref_scores.astype(np.float64) - scores.astype(np.float64))
    return AccuracyReport(mask_iou(ref_logits, logits), diff)


def check(report: AccuracyReport, what: str, min_mean_iou: float = MIN_MEAN_IOU, on_failure: str = "refuse") -> bool:
    """True when the mean mask IoU reaches ``min_mean_iou``; otherwise raise AccuracyError ("refuse") or log a
    warning and return False ("warn")."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if report.mean_iou >= min_mean_iou:
        return True
    s = report.summary()
    message = (
        f"{what}: mean mask IoU {s['mean_mask_iou']:.4f} against fp32 eager is below {min_mean_iou} "
        f"(min {s['min_mask_iou']:.4f}, per level {s['mean_mask_iou_per_level']}, "
        f"max IoU-score difference {s['max_iou_score_diff']:.4g})"
    )
    if on_failure == "refuse":
        raise AccuracyError(message + "; refused (use on_failure='warn' / --accuracy warn to keep it anyway)")
    log.warning("%s; kept because on_failure='warn'", message)
    return False


def guard_images(shape: tuple[int, int]) -> list[np.ndarray]:
    """Two fixed HxWx3 uint8 RGB images: smooth gradients with solid shapes, and a seeded blocky texture."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    first = np.stack([255 * xx / w, 255 * yy / h, 255 * (1 - xx / w) * (yy / h)], axis=-1)
    first[(yy - 0.4 * h) ** 2 + (xx - 0.6 * w) ** 2 < (0.2 * min(h, w)) ** 2] = (240, 220, 30)
    first[int(0.6 * h) : int(0.9 * h), int(0.1 * w) : int(0.35 * w)] = (20, 40, 200)
    blocks = np.random.default_rng(0).integers(0, 256, size=(-(-h // 8), -(-w // 8), 3))
    second = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h, :w]
    return [first.clip(0, 255).astype(np.uint8), second.astype(np.uint8)]


def guard_prompts() -> Tensor:
    """(20, 4) prompt boxes (cx, cy, w, h) relative to the image: a 4x4 grid of clicks and 4 boxes."""
    grid = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
    cy, cx = torch.meshgrid(grid, grid, indexing="ij")
    clicks = torch.stack([cx.flatten(), cy.flatten(), torch.full((16,), 0.005), torch.full((16,), 0.005)], dim=1)
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.6, 0.4, 0.4, 0.4], [0.22, 0.75, 0.25, 0.3], [0.3, 0.3, 0.5, 0.2]])
    return torch.cat([clicks, boxes])


def _run(runner: Runner, image: Tensor, prompts: Tensor, chunks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    mask_features, values = runner.image_encoder(image)
    logits, scores, start = [], [], 0
    for count in chunks:
        boxes = prompts[start : start + count].to(image.device)
        pb = torch.zeros(len(boxes), dtype=torch.long, device=image.device)
        lg, sc = runner.prompt_decoder(boxes, pb, mask_features, values)
        logits.append(lg.float().cpu().numpy())
        scores.append(sc.float().cpu().numpy())
        start += count
    return np.concatenate(logits), np.concatenate(scores)


@torch.inference_mode()
def evaluate(
    reference: Runner,
    candidate: Runner,
    preprocess: Callable[[Tensor], Tensor],
    shape: tuple[int, int],
    device: torch.device,
) -> AccuracyReport:
    """Run both on :func:`guard_images` of ``shape`` (a padded input size) with :func:`guard_prompts`; the
    reference decodes all prompts at once, the candidate in chunks of :data:`GUARD_CHUNKS`."""
    prompts = guard_prompts()
    refs, cands = [], []
    for image in guard_images(shape):
        x = preprocess(torch.from_numpy(image).to(device).permute(2, 0, 1))
        refs.append(_run(reference, x, prompts, (len(prompts),)))
        cands.append(_run(candidate, x, prompts, GUARD_CHUNKS))
    return compare(
        np.concatenate([r[0] for r in refs]),
        np.concatenate([r[1] for r in refs]),
        np.concatenate([c[0] for c in cands]),
        np.concatenate([c[1] for c in cands]),
    )
