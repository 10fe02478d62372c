"""The torch-free vocabulary every layer shares: levels, segment kinds, the Segment record, backend names.

One definition of each fact; every other module imports it from here (importing this module never imports torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
"""Granularity levels, coarse (1: whole objects and stuff) to fine (6: the smallest parts)."""
LEVEL_TO_TOKEN: dict[int, int] = {1: 3, 2: 2, 3: 0, 4: 4, 5: 1, 6: 5}
"""The decoder's mask token (query index within a prompt's 6) that answers each level."""
OBJECT_LEVELS: tuple[int, ...] = (1, 2, 3)
PART_LEVELS: tuple[int, ...] = (4, 5, 6)

KIND_UNKNOWN = 0
KIND_OBJECT = 1
KIND_PART = 2
KIND_NAMES: dict[int, str] = {KIND_UNKNOWN: "unknown", KIND_OBJECT: "object", KIND_PART: "part"}
TRACK_NONE = 0
TRACK_TRACKING = 1
TRACK_LOST = 2
TRACK_ENDED = 3
TRACK_STATE_NAMES: dict[int, str] = {TRACK_NONE: "none", TRACK_TRACKING: "tracking", TRACK_LOST: "lost",
                                     TRACK_ENDED: "ended"}
"""Track states (``Segment.track_state``, the Segment message's TRACK_* constants); TRACK_NONE: not tracked."""
UNKNOWN_LABEL = "unknown"
"""The label of a mask no vocabulary name fits well enough (and of every mask without semantics)."""

BACKENDS: tuple[str, ...] = ("eager", "compile", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
DEFAULT_BUCKETS: tuple[int, ...] = (1, 8, 64)
"""Prompt-batch sizes compiled backends are built for (a call is padded up to the next one)."""
MIN_MEAN_IOU = 0.98
"""Accuracy guard: the smallest mean mask IoU of a compiled backend against eager fp32."""
ENGINE_ROUTES: tuple[str, ...] = ("torch", "onnx")
"""How TensorRT engines are built: Torch-TensorRT from torch.export programs, or TensorRT's ONNX parser."""
ONNX_OPSET = 18
"""ONNX opset of the exported files (GridSample needs 16+; 18 is the exporter's oldest well-tested one)."""
ON_FAILURE: tuple[str, ...] = ("refuse", "warn")
"""What the accuracy guard does below MIN_MEAN_IOU."""
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image (width x height) decoded or converted: covers 4K cameras (4096x3072); larger is rejected from the
header, before any pixel is decoded (node/bag parameter and CLI flag max_image_pixels)."""
DEFAULT_MAX_LONG_SIDE = 2048
"""Largest long side of the resized encoder input (a 640 short side allows aspect ratios up to 3.2); node/bag
parameter and CLI flag max_long_side."""


def kind_of_level(level: int) -> int:
    """KIND_OBJECT for levels 1-3, KIND_PART for levels 4-6 (the paper's decoupled object/part split)."""
    if level in OBJECT_LEVELS:
        return KIND_OBJECT
    if level in PART_LEVELS:
        return KIND_PART
    raise ValueError(f"level must be 1..6, got {level}")


@dataclass
class Segment:
    """One mask with everything known about it.

    The model fills the geometry of the mask (``mask``, ``level``, ``iou_score``...), the semantics layer the
    label fields and the part-of links, the geometry layer ``pose``/``size`` once depth is known.

    Conventions: ``mask`` is bool HxW at the resolution of the image given to ``Predictor.set_image``;
    ``bbox`` is pixel XYXY with exclusive max (``x1 - x0`` is the pixel width; an empty mask gives all zeros);
    ``centroid`` is (x, y) in pixels; ``level`` is the granularity 1..6 (coarse to fine). ``raw_area`` is the
    pixel count of the mask before hole/island clean-up when one was applied (-1 otherwise). ``track_id`` is the
    id of the track this mask continues (-1: none), ``track_state`` that track's state (TRACK_*).
    """

    mask: np.ndarray
    level: int
    iou_score: float
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    id: int = 0
    prompt_id: int = -1
    stability_score: float = float("nan")
    point: tuple[float, float] | None = None
    kind: int = KIND_UNKNOWN
    label: str = UNKNOWN_LABEL
    label_score: float = 0.0
    top_labels: list[tuple[str, float]] = field(default_factory=list)
    parent_id: int = -1
    child_ids: list[int] = field(default_factory=list)
    raw_area: int = -1
    track_id: int = -1
    track_state: int = TRACK_NONE


def outside_image(points: np.ndarray, boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bad points, bad boxes) masks: the pixel points (P, 2) that are not pixels of a ``height`` x ``width`` image
    (0 <= x < width, 0 <= y < height) and the XYXY boxes (B, 4) that are not a non-empty part of it. Non-finite
    values are outside."""
    x, y = points[:, 0], points[:, 1]
    bad_points = ~np.isfinite(points).all(1) | (x < 0) | (x >= width) | (y < 0) | (y >= height)
    x0, y0, x1, y1 = boxes.T
    bad_boxes = ~np.isfinite(boxes).all(1) | (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)
    return bad_points, bad_boxes | (x1 <= x0) | (y1 <= y0)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel XYXY (exclusive max) of a bool mask; (0, 0, 0, 0) when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """Mean (x, y) pixel position of a bool mask; (nan, nan) when it is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (float("nan"), float("nan"))
    return (float(xs.mean()), float(ys.mean()))


def make_segment(mask: np.ndarray, level: int, iou_score: float, **fields) -> Segment:
    """A Segment whose area, bbox and centroid are computed from ``mask``; its kind follows its level unless given."""
    mask = np.asarray(mask, dtype=bool)
    fields.setdefault("kind", kind_of_level(level))
    return Segment(
        mask=mask,
        level=int(level),
        iou_score=float(iou_score),
        area=int(mask.sum()),
        bbox=mask_bbox(mask),
        centroid=mask_centroid(mask),
        **fields,
    )


class Segment3D(Protocol):
    """What the 3D layer reports for one segment (``geometry.Mask3D`` is the implementation)."""

    valid: bool
    position: Sequence[float]  # robust centroid x, y, z in metres
    box_center: Sequence[float]  # centre of the oriented box
    orientation: Sequence[float]  # box axes as a quaternion x, y, z, w
    size: Sequence[float]  # box extents in metres along its own axes
    normal: Sequence[float]  # unit surface normal at the centroid, towards the camera
    axis: Sequence[float]  # unit axis of the box's longest side
    point_count: int
    valid_ratio: float
    grasp_point: Sequence[float]  # a point on the object: the 3D point of grasp_pixel
    grasp_normal: Sequence[float]  # unit normal of the face grasp_point lies on, towards the camera
    grasp_pixel: Sequence[float]  # (x, y) of the most interior inlier pixel of the mask
