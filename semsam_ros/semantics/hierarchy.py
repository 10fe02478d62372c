"""Part-of links between the masks of one frame: across levels and across prompts.

A mask is the child of a coarser one when at least ``min_inside`` of its area lies inside it; its parent is the
smallest such container. Coarser means a strictly lower level (layout.md, Conventions): masks of one level that
nest (different prompts) are siblings, never parent and child. Ids are stable within a frame: they follow a
canonical order that depends only on the masks, not on the order they arrived in.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np

from ..types import Segment


def canonical_key(segment: Segment) -> tuple:
    """Sort key of the canonical id order: coarse to fine, large to small, then top-left first."""
    x0, y0, x1, y1 = segment.bbox
    return (segment.level, -segment.area, y0, x0, y1, x1, segment.prompt_id)


def _inside_area(child: Segment, parent: Segment) -> int:
    """Pixels of ``child`` that are also in ``parent``, counted over the overlap of their boxes."""
    cx0, cy0, cx1, cy1 = child.bbox
    px0, py0, px1, py1 = parent.bbox
    x0, y0, x1, y1 = max(cx0, px0), max(cy0, py0), min(cx1, px1), min(cy1, py1)
    if x0 >= x1 or y0 >= y1:
        return 0
    return int(np.count_nonzero(child.mask[y0:y1, x0:x1] & parent.mask[y0:y1, x0:x1]))


def build_hierarchy(
    segments: Sequence[Segment],
    min_inside: float = 0.9,
    order: Literal["canonical", "given"] = "canonical",
) -> list[Segment]:
    """Give the segments of one frame ids and part-of links; returns them in id order (``out[i].id == i``).

    ``order="canonical"`` numbers them by :func:`canonical_key` (the same masks get the same ids whatever order
    they come in; a parent's id is then below its children's), ``"given"`` keeps the input order. A segment's
    parent is the smallest segment of a strictly lower level that holds at least ``min_inside`` of its area
    (ties: the lower id); ``child_ids`` are ascending. Empty masks get no links.
    The Segment objects are updated in place (``id``, ``parent_id``, ``child_ids``).
    """
    if not 0.0 < min_inside <= 1.0:
        raise ValueError(f"min_inside must be in (0, 1], got {min_inside}")
    if order not in ("canonical", "given"):
        raise ValueError(f"order must be 'canonical' or 'given', got {order!r}")
    out = sorted(segments, key=canonical_key) if order == "canonical" else list(segments)
    shapes = {s.mask.shape for s in out}
    if len(shapes) > 1:
        raise ValueError(f"all masks of a frame must have one shape, got {sorted(shapes)}")
    for i, segment in enumerate(out):
        segment.id = i
        segment.parent_id = -1
        segment.child_ids = []
    level = np.array([s.level for s in out])
    area = np.array([s.area for s in out])
    box = np.array([s.bbox for s in out], dtype=np.int64).reshape(-1, 4)
    # box-overlap area bounds the inside area: prune every (child, parent) pair that cannot qualify
    w = np.minimum(box[:, None, 2], box[None, :, 2]) - np.maximum(box[:, None, 0], box[None, :, 0])
    h = np.minimum(box[:, None, 3], box[None, :, 3]) - np.maximum(box[:, None, 1], box[None, :, 1])
    need = np.ceil(np.round(min_inside * area, 9))  # whole pixels: exactly min_inside qualifies (0.07 * 100 > 7)
    possible = (
        (level[None, :] < level[:, None])
        & (np.clip(w, 0, None) * np.clip(h, 0, None) >= need[:, None])
        & (area[None, :] >= need[:, None])
        & (area[:, None] > 0)
    )
    for c, child in enumerate(out):
        # smallest container first (ties: lower id), so the first hit is the parent
        for p in sorted(np.flatnonzero(possible[c]), key=lambda j: (area[j], j)):
            if _inside_area(child, out[p]) >= need[c]:
                child.parent_id = int(p)
                out[p].child_ids.append(c)
                break
    return out


def ancestors(segment: Segment, by_id: Mapping[int, Segment]) -> list[Segment]:
    """Parent, grandparent, ... of ``segment``; ``by_id`` maps ids to the frame's segments.

    The walk stops at a parent id that ``by_id`` lacks (a subset of the frame) or at a repeated id.
    """
    chain: list[Segment] = []
    seen = {segment.id}
    parent = by_id.get(segment.parent_id)
    while parent is not None and parent.id not in seen:
        chain.append(parent)
        seen.add(parent.id)
        parent = by_id.get(parent.parent_id)
    return chain
