"""The result record every layer above the model shares: one kept mask of one frame."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KIND_UNKNOWN = 0
KIND_OBJECT = 1
KIND_PART = 2


@dataclass
class Segment:
    """One mask with everything known about it.

    The model fills the geometry of the mask (``mask``, ``level``, ``iou_score``...), the semantics layer the
    label fields and the part-of links, the geometry layer ``pose``/``size`` once depth is known.

    Conventions: ``mask`` is bool HxW at the resolution of the image given to ``Predictor.set_image``;
    ``bbox`` is pixel XYXY with exclusive max (``x1 - x0`` is the pixel width; an empty mask gives all zeros);
    ``centroid`` is (x, y) in pixels; ``level`` is the granularity 1..6 (coarse to fine). ``raw_area`` is the
    pixel count of the mask before hole/island clean-up when one was applied (-1 otherwise).
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
    label: str = "unknown"
    label_score: float = 0.0
    top_labels: list[tuple[str, float]] = field(default_factory=list)
    parent_id: int = -1
    child_ids: list[int] = field(default_factory=list)
    raw_area: int = -1


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
    """A Segment whose area, bbox and centroid are computed from ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    return Segment(
        mask=mask,
        level=int(level),
        iou_score=float(iou_score),
        area=int(mask.sum()),
        bbox=mask_bbox(mask),
        centroid=mask_centroid(mask),
        **fields,
    )
