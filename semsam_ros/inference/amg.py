"""Automatic mask generation ("segment everything") at chosen granularity levels.

Follows the official ``SemanticSamAutomaticMaskGenerator`` (design document, section 8) with SAM's crop logic,
with two deliberate differences: a prompt's masks do not depend on the other prompts of its batch (the predictor's
block-diagonal attention), and only the masks that pass the IoU filter are upsampled to full resolution.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from semsam_ros.types import LEVELS
from semsam_ros.inference.postprocess import (
    area_from_rle,
    batched_mask_to_box,
    box_nms,
    compress_rle,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    stability_score,
)
from semsam_ros.types import Segment, make_segment

# Masks upsampled at once: bounds the memory of full-resolution float logits (32 x 640 x 853 x 4 B = 70 MB).
_UPSAMPLE_CHUNK = 32
# SAM's distance (pixels) under which a box edge counts as touching a crop edge.
_CROP_EDGE_ATOL = 20.0


class LowresPredictor(Protocol):
    """What the generator needs from ``semsam_ros.Predictor``."""

    def set_image(self, image: np.ndarray) -> None: ...

    def predict_lowres(
        self, points: np.ndarray | None = None, boxes: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def upsample_logits(self, lowres: torch.Tensor) -> torch.Tensor: ...


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 points (x, y) in [0, 1]: cell centres of an n x n grid, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """SAM's crop boxes (pixel XYXY) and their layer index: the whole image, then 2^i x 2^i crops on layer i."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes, layer_idxs = [[0, 0, im_w, im_h]], [0]
    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = int(math.ceil((overlap * (n_crops - 1) + im_w) / n_crops))
        crop_h = int(math.ceil((overlap * (n_crops - 1) + im_h) / n_crops))
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def box_xyxy_to_xywh(box: Sequence[int]) -> list[int]:
    """[x0, y0, x1 - x0, y1 - y0] (with SAM's inclusive boxes, w and h are one less than the pixel extent)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int]) -> torch.Tensor:
    """True for boxes (already in image coordinates) within 20 px of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float)
    orig = torch.as_tensor(orig_box, dtype=torch.float)
    b = boxes.float()
    near_crop = torch.isclose(b, crop[None], atol=_CROP_EDGE_ATOL, rtol=0)
    near_image = torch.isclose(b, orig[None], atol=_CROP_EDGE_ATOL, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def _uncrop_mask(mask: np.ndarray, crop_box: list[int], height: int, width: int) -> np.ndarray:
    """A crop's mask placed in the HxW image."""
    if mask.shape == (height, width):
        return mask
    x0, y0, x1, y1 = crop_box
    full = np.zeros((height, width), dtype=bool)
    full[y0:y1, x0:x1] = mask
    return full


@dataclass
class _Candidates:
    """Masks that passed the filters so far, one row per mask (boxes XYXY inclusive, image coordinates)."""

    rles: list[dict[str, Any]]
    boxes: torch.Tensor
    iou_preds: torch.Tensor
    stability: torch.Tensor
    levels: torch.Tensor
    points: torch.Tensor
    crop_boxes: torch.Tensor

    @staticmethod
    def empty() -> _Candidates:
        return _Candidates([], torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0), torch.zeros(0),
                           torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2, dtype=torch.float64),
                           torch.zeros(0, 4, dtype=torch.int64))

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        if not parts:
            return _Candidates.empty()
        return _Candidates(
            [r for p in parts for r in p.rles],
            *(torch.cat([getattr(p, name) for p in parts]) for name in
              ("boxes", "iou_preds", "stability", "levels", "points", "crop_boxes")),
        )

    def take(self, index: torch.Tensor) -> _Candidates:
        index = index.cpu()
        return _Candidates(
            [self.rles[i] for i in index.tolist()], self.boxes[index], self.iou_preds[index],
            self.stability[index], self.levels[index], self.points[index], self.crop_boxes[index],
        )


class AutomaticMaskGenerator:
    """Masks for the whole image from a grid of point prompts, at the chosen levels (1..6, coarse to fine).

    Per batch of points: IoU-score filter (strictly above ``pred_iou_thresh``, on the raw score) on the stride-4
    logits, upsampling of the survivors only, stability filter (``>= stability_score_thresh``), boxes; then box
    NMS over all batches by IoU score, and, when ``min_mask_region_area > 0``, hole/island clean-up and a second
    NMS that prefers unchanged masks. ``crop_n_layers > 0`` adds SAM's overlapping crops (each re-encoded).
    """

    def __init__(
        self,
        predictor: LowresPredictor,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        levels: Sequence[int] = LEVELS,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.92,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 10,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        output_mode: Literal["binary_mask", "coco_rle"] = "binary_mask",
        progress: bool = False,
    ) -> None:
        levels = tuple(int(level) for level in levels)
        if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVELS):
            raise ValueError(f"levels must be distinct values among 1..6, got {levels}")
        if output_mode not in ("binary_mask", "coco_rle"):
            raise ValueError(f"output_mode must be 'binary_mask' or 'coco_rle', not {output_mode!r}")
        if points_per_side < 1 or points_per_batch < 1 or crop_n_layers < 0:
            raise ValueError("points_per_side and points_per_batch must be >= 1, crop_n_layers >= 0")
        self.predictor = predictor
        self.levels = levels
        self.point_grids = [
            build_point_grid(int(points_per_side / crop_n_points_downscale_factor**i))
            for i in range(crop_n_layers + 1)
        ]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.min_mask_region_area = min_mask_region_area
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.output_mode = output_mode
        self.progress = progress

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """One record per mask, SAM-style, for an HxWx3 uint8 RGB image.

        Keys: ``segmentation`` (bool HxW, or COCO compressed RLE with ``output_mode="coco_rle"``), ``area``,
        ``bbox`` (XYWH of the inclusive box, as SAM), ``predicted_iou``, ``stability_score``, ``level``,
        ``point_coords`` ([[x, y]] in pixels of ``image``) and ``crop_box`` (XYWH).
        """
        data = self._generate(image)
        records = []
        for i, rle in enumerate(data.rles):
            records.append({
                "segmentation": rle_to_mask(rle) if self.output_mode == "binary_mask" else compress_rle(rle),
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(data.boxes[i].tolist()),
                "predicted_iou": float(data.iou_preds[i]),
                "stability_score": float(data.stability[i]),
                "level": int(data.levels[i]),
                "point_coords": [data.points[i].tolist()],
                "crop_box": box_xyxy_to_xywh(data.crop_boxes[i].tolist()),
            })
        return records

    @torch.no_grad()
    def generate_segments(self, image: np.ndarray) -> list[Segment]:
        """The same masks as ``generate``, as ``Segment`` records (ids 0.. in output order)."""
        data = self._generate(image)
        return [
            make_segment(
                rle_to_mask(rle), int(data.levels[i]), float(data.iou_preds[i]), id=i,
                stability_score=float(data.stability[i]), point=tuple(data.points[i].tolist()),
            )
            for i, rle in enumerate(data.rles)
        ]

    def _generate(self, image: np.ndarray) -> _Candidates:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        im_size = (image.shape[0], image.shape[1])
        crop_boxes, layer_idxs = generate_crop_boxes(im_size, self.crop_n_layers, self.crop_overlap_ratio)
        n_batches = sum(math.ceil(len(self.point_grids[i]) / self.points_per_batch) for i in layer_idxs)
        with tqdm(total=n_batches, desc="segment everything", unit="batch", disable=not self.progress) as bar:
            data = _Candidates.cat([
                self._process_crop(image, crop_box, self.point_grids[layer], bar)
                for crop_box, layer in zip(crop_boxes, layer_idxs)
            ])
        if len(crop_boxes) > 1 and data.rles:
            crops = data.crop_boxes.double()
            scores = 1 / ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1]))  # prefer smaller crops
            data = data.take(box_nms(data.boxes, scores, self.crop_nms_thresh))
        if self.min_mask_region_area > 0 and data.rles:
            data = self._postprocess_small_regions(data, max(self.box_nms_thresh, self.crop_nms_thresh))
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], grid: np.ndarray, bar: tqdm
    ) -> _Candidates:
        x0, y0, x1, y1 = crop_box
        self.predictor.set_image(image[y0:y1, x0:x1])
        points = grid * np.array([x1 - x0, y1 - y0], dtype=np.float64)
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            parts.append(self._process_batch(points[start:start + self.points_per_batch], crop_box, image.shape))
            bar.update(1)
        data = _Candidates.cat(parts)
        data = data.take(box_nms(data.boxes, data.iou_preds, self.box_nms_thresh))
        offset = torch.tensor([x0, y0, x0, y0], dtype=torch.int64)
        data.boxes = data.boxes + offset
        data.points = data.points + offset[:2].double()
        data.crop_boxes = torch.tensor([crop_box] * len(data.rles), dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(
        self, points: np.ndarray, crop_box: list[int], image_shape: tuple[int, ...]
    ) -> _Candidates:
        lowres, ious = self.predictor.predict_lowres(points=points)
        columns = [level - 1 for level in self.levels]
        lowres = lowres[:, columns].flatten(0, 1)
        ious = ious[:, columns].flatten().float().cpu()
        keep = torch.nonzero(ious > self.pred_iou_thresh).flatten()
        prompt_of = torch.as_tensor(points, dtype=torch.float64)[keep // len(columns)]
        level_of = torch.tensor(self.levels)[keep % len(columns)]
        orig_h, orig_w = image_shape[:2]
        offset = torch.tensor([crop_box[0], crop_box[1]] * 2)
        parts = []
        for start in range(0, len(keep), _UPSAMPLE_CHUNK):
            chunk = torch.arange(start, min(start + _UPSAMPLE_CHUNK, len(keep)))
            logits = self.predictor.upsample_logits(lowres[keep[chunk].to(lowres.device)])
            stability = stability_score(logits, 0.0, self.stability_score_offset).cpu()
            stable = torch.nonzero(stability >= self.stability_score_thresh).flatten()
            masks = (logits > 0)[stable.to(logits.device)]
            boxes = batched_mask_to_box(masks).cpu()
            masks = masks.cpu()
            near_edge = is_box_near_crop_edge(boxes + offset, crop_box, [0, 0, orig_w, orig_h])
            inside = torch.nonzero(~near_edge).flatten()
            rles = [mask_to_rle(_uncrop_mask(mask, crop_box, orig_h, orig_w)) for mask in masks[inside].numpy()]
            rows = chunk[stable[inside]]
            parts.append(_Candidates(
                rles, boxes[inside], ious[keep[rows]], stability[stable[inside]], level_of[rows], prompt_of[rows],
                torch.zeros(len(rles), 4, dtype=torch.int64),
            ))
        return _Candidates.cat(parts)

    def _postprocess_small_regions(self, data: _Candidates, nms_thresh: float) -> _Candidates:
        """Clean up holes then islands; NMS with score 1 for unchanged masks and 0 for changed ones."""
        masks, scores = [], []
        for rle in data.rles:
            mask, holes_changed = remove_small_regions(rle_to_mask(rle), self.min_mask_region_area, "holes")
            mask, islands_changed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            masks.append(mask)
            scores.append(0.0 if holes_changed or islands_changed else 1.0)
        boxes = batched_mask_to_box(torch.from_numpy(np.stack(masks)))
        keep = box_nms(boxes, torch.tensor(scores), nms_thresh)
        for i in keep.tolist():
            if scores[i] == 0.0:
                data.rles[i] = mask_to_rle(masks[i])
                data.boxes[i] = boxes[i]
        return data.take(keep)
