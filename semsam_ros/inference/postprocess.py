"""From mask logits to masks people use: the official predictor's selection and clean-up, and SAM's AMG utilities.

Everything here is pure numpy/torch and needs no model. The semantics follow the official Semantic-SAM predictor
(``SemanticSAMPredictor.process_multi_mask``) and SAM's ``utils/amg.py`` helpers, re-implemented without cv2,
torchvision or pycocotools (see docs/cli.md and the design document, sections 7.2 and 8).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from semsam_ros.types import LEVELS
from semsam_ros.types import Segment, make_segment

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill small holes or remove small islands of a bool mask, as SAM does (8-connectivity).

    ``holes``: connected background components with fewer than ``area_thresh`` pixels become foreground, border
    touching ones included. ``islands``: foreground components smaller than the threshold are removed; when every
    component is small, the largest one is kept. The flag is True whenever a small component was found, even if
    the mask comes back unchanged (a lone small island), exactly as in SAM.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    correct_holes = mode == "holes"
    working = mask ^ correct_holes
    labels, n_components = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n_components + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if correct_holes:
        fill_labels = np.concatenate(([0], small))
    else:
        fill_labels = np.setdiff1d(np.arange(1, n_components + 1), small)
        if fill_labels.size == 0:
            fill_labels = np.array([_first_largest(labels, sizes)])
    return np.isin(labels, fill_labels), True


def _first_largest(labels: np.ndarray, sizes: np.ndarray) -> int:
    """Label of the largest component; among equals, the one cv2 numbers first.

    cv2's 8-connected labelling scans 2x2 blocks in raster order (a block never holds two components), so its
    numbering follows each component's first block in that order, not its first pixel.
    """
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    if largest.size == 1:
        return int(largest[0])
    ys, xs = np.nonzero(np.isin(labels, largest))
    block = (ys // 2) * (labels.shape[1] // 2 + 1) + xs // 2
    first = int(np.argmin(block))
    return int(labels[ys[first], xs[first]])


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of the interactive post-processing; the defaults are the official predictor's.

    ``iou_threshold`` is compared with the IoU score rounded to 2 decimals (Python ``round``), like the official
    predictor. ``dedupe_iou``: a mask whose IoU with an already kept raw mask is above it is dropped.
    ``hole_area``/``island_area``: clean-up thresholds in pixels (0 disables). ``sort``: ``"score"`` gives the
    descending-score visit order, ``"area"`` ascending raw area (the official second list).
    ``keep_best_when_none``: when no mask passes, keep the last one visited (the lowest-scoring), as the official
    predictor does; False makes ``iou_threshold`` a strict minimum (an empty answer is possible).
    """

    iou_threshold: float = 0.5
    dedupe_iou: float = 0.95
    hole_area: int = 100
    island_area: int = 100
    sort: Literal["score", "area"] = "score"
    keep_best_when_none: bool = True

    def __post_init__(self) -> None:
        if self.sort not in ("score", "area"):
            raise ValueError(f"sort must be 'score' or 'area', not {self.sort!r}")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; NaN when both are empty (0/0, which never counts as a duplicate)."""
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(a & b)) / union


def postprocess_prompt(
    mask_logits: np.ndarray,
    iou_scores: np.ndarray,
    params: PostprocessParams = PostprocessParams(),
    prompt_id: int = -1,
    point: tuple[float, float] | None = None,
    levels: Sequence[int] = LEVELS,
) -> list[Segment]:
    """The kept masks of one prompt, as the official predictor selects and cleans them.

    ``mask_logits`` (K, H, W) and ``iou_scores`` (K,) hold the K candidates whose levels are ``levels``. Masks
    are visited by descending raw score: one is skipped when its score rounded to 2 decimals is below
    ``params.iou_threshold`` or when its raw mask has IoU > ``params.dedupe_iou`` with an already kept raw mask;
    the last candidate is kept anyway when nothing was kept before it (unless ``params.keep_best_when_none`` is
    False). A kept mask has holes, then islands,
    removed. ``Segment.mask``/``area``/``bbox``/``centroid`` describe the cleaned mask, ``raw_area`` the pixel
    count before clean-up (what the official predictor records), ``iou_score`` the raw score. ``Segment.id`` is
    the rank in visit order, whatever ``params.sort``.
    """
    logits = np.asarray(mask_logits)
    scores = np.asarray(iou_scores, dtype=np.float32).reshape(-1)
    if logits.ndim != 3 or logits.shape[0] != scores.shape[0] or len(levels) != scores.shape[0]:
        raise ValueError(
            f"expected mask_logits (K,H,W), iou_scores (K,) and K levels; got {logits.shape}, "
            f"{scores.shape}, {len(levels)} levels"
        )
    order = np.argsort(-scores, kind="stable")
    kept_raw: list[np.ndarray] = []
    segments: list[Segment] = []
    for rank, index in enumerate(order):
        raw = logits[index] > 0
        skip = round(float(scores[index]), 2) < params.iou_threshold or any(
            _mask_iou(raw, other) > params.dedupe_iou for other in kept_raw
        )
        if skip and not (params.keep_best_when_none and rank == len(order) - 1 and not kept_raw):
            continue
        kept_raw.append(raw)
        cleaned, _ = remove_small_regions(raw, params.hole_area, "holes")
        cleaned, _ = remove_small_regions(cleaned, params.island_area, "islands")
        segments.append(
            make_segment(
                cleaned,
                levels[index],
                float(scores[index]),
                id=len(segments),
                prompt_id=prompt_id,
                point=point,
                raw_area=int(np.count_nonzero(raw)),
            )
        )
    if params.sort == "area":
        segments.sort(key=lambda s: s.raw_area)
    return segments


def stability_score(logits: torch.Tensor, thresh: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """#(logit > thresh + offset) / #(logit > thresh - offset) over the last two axes (float32; NaN for 0/0)."""
    high = (logits > thresh + offset).flatten(-2).sum(-1, dtype=torch.int32)
    low = (logits > thresh - offset).flatten(-2).sum(-1, dtype=torch.int32)
    return high.float() / low.float()


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (int64) of bool masks (..., H, W) with INCLUSIVE max, as SAM's AMG; an empty mask gives zeros."""
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    row_index = torch.arange(h, device=masks.device)
    col_index = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, row_index, -1).amax(dim=-1)
    top = torch.where(rows, row_index, h).amin(dim=-1)
    right = torch.where(cols, col_index, -1).amax(dim=-1)
    left = torch.where(cols, col_index, w).amin(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS (torchvision's rule, no torchvision): indices kept, by descending score.

    Boxes are XYXY, compared in float32 with areas (x1 - x0) * (y1 - y0); a box is suppressed when its IoU
    with a kept box is strictly greater than ``iou_thresh`` (compared in float64; a NaN IoU of two zero-area boxes
    suppresses nothing). Equal scores keep their input order. The pairwise IoU matrix is computed once (N x N
    memory); only the greedy pass over its rows is sequential.
    """
    b = boxes.detach().to("cpu", torch.float32).numpy()
    order = np.argsort(-scores.detach().to("cpu", torch.float64).numpy(), kind="stable")
    x0, y0, x1, y1 = (b[order, i] for i in range(4))
    areas = (x1 - x0) * (y1 - y0)
    zero = np.float32(0)
    w = np.maximum(zero, np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0))
    h = np.maximum(zero, np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        overlaps = (inter / (areas[:, None] + areas - inter)).astype(np.float64) > iou_thresh  # (N, N), by score
    suppressed = np.zeros(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if not suppressed[i]:
            keep.append(order[i])
            suppressed |= overlaps[i]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


# COCO run-length encoding. Uncompressed: {"size": [h, w], "counts": [int, ...]} over the mask in column-major
# order, starting with a (possibly empty) run of zeros. Compressed: the same with "counts" as pycocotools'
# string (each count minus the count two places before it, from the fourth on, in 5-bit groups offset by 48).


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a bool HxW mask."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def encode_counts(counts: Sequence[int]) -> str:
    """pycocotools' compressed string of RLE counts."""
    chars = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def decode_counts(text: str) -> list[int]:
    """RLE counts of a pycocotools compressed string."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def compress_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """The COCO compressed form (``counts`` a str, as pycocotools' ``frPyObjects`` then ``.decode()``)."""
    return {"size": list(rle["size"]), "counts": encode_counts(rle["counts"])}


def _counts(rle: dict[str, Any]) -> list[int]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return decode_counts(counts) if isinstance(counts, str) else list(counts)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Bool HxW mask of a COCO RLE, uncompressed or compressed."""
    h, w = rle["size"]
    counts = _counts(rle)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h}*{w}")
    return flat.reshape((w, h)).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixel count of a COCO RLE, uncompressed or compressed."""
    return int(sum(_counts(rle)[1::2]))
