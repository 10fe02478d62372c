"""The sample grids of a frame's masks stacked on one canvas, so that the per-grid work runs once per frame.

A mask's grid is every ``step``-th pixel of its bounding-box crop, both ways. Grid g occupies canvas rows
``offsets[g]`` to ``offsets[g] + heights[g] - 1`` and columns 1 to its width; the first canvas row, the row after
each grid and the first and last columns are padding (no mask, no depth), so that no link, region or distance
crosses from one grid to another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class SampleGrids:
    """Canvas ``mask``, ``valid`` (mask pixels with valid depth) and ``z`` (depth, NaN on padding) of the grids.

    Per grid g: ``steps``, crop ``y0``, ``y1``, ``x0``, ``x1`` (image pixels, exclusive max), ``offsets`` and
    ``heights``. Per canvas row: ``row_group`` (-1 on padding) and ``row_image`` (the image row it samples).
    ``width``: the image's. ``selected``: every crop's mask pixels with valid depth at full resolution, flattened
    one after the other (crop g from ``crop_starts[g]``), for ``in_mask``.
    """

    mask: np.ndarray
    valid: np.ndarray
    z: np.ndarray
    steps: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    offsets: np.ndarray
    heights: np.ndarray
    row_group: np.ndarray
    row_image: np.ndarray
    width: int
    selected: np.ndarray
    crop_starts: np.ndarray

    def grid(self, canvas: np.ndarray, g: int) -> np.ndarray:
        """Grid g's part of a canvas-shaped array."""
        h, w = self.heights[g], -(-(self.x1[g] - self.x0[g]) // self.steps[g])
        return canvas[self.offsets[g] : self.offsets[g] + h, 1 : 1 + w]

    def in_mask(self, rows: np.ndarray, cols: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Whether image pixels (rows, cols), inside the crops of grids ``g``, are mask pixels with valid depth."""
        y0, x0 = np.take(self.y0, g), np.take(self.x0, g)
        return np.take(self.selected, np.take(self.crop_starts, g) + (rows - y0) * (np.take(self.x1, g) - x0) +
                       (cols - x0))


def stack_grids(
    masks: Sequence[np.ndarray], crops: Sequence[tuple[int, int, int, int]], steps: Sequence[int],
    valid: Sequence[np.ndarray], depth: np.ndarray,
) -> SampleGrids:
    """The canvas of the step-``steps[g]`` grids of ``masks[g]`` (full image) cropped to ``crops[g]`` (x0, y0, x1,
    y1); ``valid[g]`` is the crop's mask pixels with valid depth, ``depth`` the image's depth."""
    shapes = [(-(-(y1 - y0) // s), -(-(x1 - x0) // s)) for (x0, y0, x1, y1), s in zip(crops, steps)]
    heights = np.array([h for h, _ in shapes], dtype=np.intp)
    offsets = np.cumsum(np.append(1, heights[:-1] + 1))
    rows, cols = int(heights.sum()) + len(shapes) + 1, max(w for _, w in shapes) + 2
    canvas_mask = np.zeros((rows, cols), dtype=bool)
    canvas_valid = np.zeros((rows, cols), dtype=bool)
    canvas_z = np.full((rows, cols), np.nan, dtype=depth.dtype)
    row_group = np.full(rows, -1, dtype=np.intp)
    row_image = np.zeros(rows, dtype=np.intp)
    for g, ((x0, y0, x1, y1), s, (h, w)) in enumerate(zip(crops, steps, shapes)):
        r = slice(offsets[g], offsets[g] + h)
        canvas_mask[r, 1 : 1 + w] = masks[g][y0:y1:s, x0:x1:s]
        canvas_valid[r, 1 : 1 + w] = valid[g][::s, ::s]
        canvas_z[r, 1 : 1 + w] = depth[y0:y1:s, x0:x1:s]
        row_group[r] = g
        row_image[r] = np.arange(y0, y1, s)
    box = np.array(crops, dtype=np.intp).reshape(-1, 4).T
    crop_starts = np.cumsum([0] + [v.size for v in valid[:-1]])
    return SampleGrids(canvas_mask, canvas_valid, canvas_z, np.array(steps, dtype=np.intp), box[1], box[3], box[0],
                       box[2], offsets, heights, row_group, row_image, depth.shape[1],
                       np.concatenate([v.reshape(-1) for v in valid]), crop_starts.astype(np.intp))
