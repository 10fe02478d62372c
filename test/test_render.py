"""Overlay and level-grid rendering."""
from __future__ import annotations

import numpy as np

from semsam_ros.viz.palette import segment_color
from semsam_ros.viz.render import PROMPT_COLOR, mask_contour, render_level_grid, render_overlay
from semsam_ros.types import make_segment


def scene() -> tuple[np.ndarray, list]:
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    big = np.zeros((60, 80), dtype=bool)
    big[10:50, 10:70] = True
    small = np.zeros((60, 80), dtype=bool)
    small[30:40, 40:50] = True
    return image, [make_segment(big, 1, 0.9, id=0), make_segment(small, 4, 0.8, id=7)]


def test_mask_contour() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True
    expected = mask.copy()
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(mask_contour(mask), expected)
    assert mask_contour(np.ones((3, 3), dtype=bool)).sum() == 8  # the image border counts as background


def test_overlay_colours_contours_and_prompts() -> None:
    image, segs = scene()
    out = render_overlay(image, segs, points=[(5, 55)], text=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    big, small = np.array(segment_color(0)), np.array(segment_color(7))
    np.testing.assert_array_equal(out[20, 20], np.rint(100 * 0.5 + big * 0.5))
    np.testing.assert_array_equal(out[35, 45], np.rint((100 * 0.5 + big * 0.5) * 0.5 + small * 0.5))  # on top
    np.testing.assert_array_equal(out[30, 45], small)  # contour
    np.testing.assert_array_equal(out[2, 2], [100, 100, 100])
    np.testing.assert_array_equal(out[55, 5], PROMPT_COLOR)
    with_text = render_overlay(image, segs, points=[(5, 55)])
    assert (with_text[10:20, 10:40] != out[10:20, 10:40]).any()  # "L1 0.90" at the big box corner
    np.testing.assert_array_equal(image, np.full((60, 80, 3), 100))  # input untouched


def test_level_grid_tiles() -> None:
    image, segs = scene()
    grid = render_level_grid(image, segs, levels=(1, 2, 4), points=[(45, 35)], columns=2)
    assert grid.shape == (120, 160, 3)
    tile_l2 = grid[0:60, 80:160]
    assert tile_l2[50, 70].tolist() == [40, 40, 40]  # dimmed image where no level-2 segment was kept
    tile_l4 = grid[60:120, 0:80]
    np.testing.assert_array_equal(tile_l4[30, 48], segment_color(7))
    assert grid[60:120, 80:160].max() == 0  # unused cell
    wide = render_level_grid(np.zeros((10, 1000, 3), np.uint8), [], tile_width=100)
    assert wide.shape == (2 * 1, 3 * 100, 3)
