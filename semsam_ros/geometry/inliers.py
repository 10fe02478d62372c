"""Which depth pixels of a mask belong to its surface: the outlier rule of ``mask3d``.

Two neighbouring pixels are on one surface when their depths differ by little (``jump``, relative), or when the
step between them continues the surface on one side: the inverse depth of a plane is linear in pixel coordinates,
so along a plane seen at any angle successive inverse-depth steps are equal, however large. A true depth edge (an
object's silhouette against the wall, a mixed pixel between them) is a step unlike the steps on either side.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from semsam_ros.geometry.grids import SampleGrids

SLOPE_TOLERANCE = 0.25
"""Largest change between successive inverse-depth steps, relative to the step, on one surface."""
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def _follows(inverse: np.ndarray, node: np.ndarray, stride: int) -> np.ndarray:
    """Whether the link from each flat index ``node`` to ``node + stride`` of a canvas of inverse depths
    (``inverse``, flat, NaN: not a node; its first and last rows and columns padding) continues the surface: the
    three steps ending with it, or the three starting with it, are equal within ``SLOPE_TOLERANCE`` times it."""
    window = np.take(inverse, node[:, None] + stride * np.arange(-2, 4), mode="clip")  # clipped: padding, NaN
    step = np.diff(window, axis=1)  # (K, 5): the link's step in the middle
    change = np.abs(np.diff(step, axis=1))  # (K, 4)
    limit = SLOPE_TOLERANCE * np.abs(step[:, 2])
    with np.errstate(invalid="ignore"):
        before, after = (change[:, 1] <= limit) & (change[:, 0] <= limit), change[:, 2:] <= limit[:, None]
        return before | after.all(axis=1)


def surface_inliers(
    mask: np.ndarray, valid: np.ndarray, z: np.ndarray, jump: np.ndarray, keep_fraction: float,
    groups: np.ndarray, n_groups: int,
) -> np.ndarray:
    """Valid pixels of sample grids in their large surface-connected regions (4-neighbours linked by a small depth
    jump, |dz| <= ``jump`` * min(z1, z2), or by a step that continues the surface, ``_follows``).

    The grids of several masks are stacked along the rows of one canvas, each followed by a row without nodes and
    with a column without nodes first and last; ``groups`` (H,) gives each canvas row's grid (-1: none) and
    ``jump`` (H,) its relative depth jump. In each grid, regions with at least ``keep_fraction`` of the valid
    pixels of its largest one are kept. Where some neighbours are not linked, the regions are those of an image
    with the links between the pixels (``_linked_regions``). A mask pixel without depth takes the depth of the last
    valid pixel to its left in the row, so holes bridge rather than cut a surface; regions are sized by their valid
    pixels only.
    """
    h, w = valid.shape
    first_valid = np.where(valid.any(axis=1), np.argmax(valid, axis=1), w)
    nodes = mask & (np.arange(w) >= first_valid[:, None])  # mask pixels with a valid pixel at or left of them
    valid_index = np.flatnonzero(valid)
    holes = np.flatnonzero(nodes > valid)
    zn = np.full(h * w, np.nan, dtype=z.dtype)
    zn[valid_index] = np.take(z, valid_index)
    zn[holes] = np.take(z, np.take(valid_index, np.searchsorted(valid_index, holes) - 1))  # same row: a node's
    zn = zn.reshape(h, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_z = np.log(zn)
        limit = np.log1p(jump)[:, None]
        across = np.abs(np.diff(log_z, axis=1)) <= limit
        down = np.abs(np.diff(log_z, axis=0)) <= limit[:-1]
    cut_across = np.flatnonzero(across < (nodes[:, :-1] & nodes[:, 1:]))  # in (h, w - 1): row * (w - 1) + column
    cut_down = np.flatnonzero(down < (nodes[:-1] & nodes[1:]))  # in (h - 1, w): the upper node's canvas index
    if cut_across.size or cut_down.size:  # links that are large jumps: kept where they continue the surface
        with np.errstate(divide="ignore"):
            inverse = 1.0 / zn.reshape(-1)
        follows = _follows(inverse, cut_across + cut_across // (w - 1), 1)
        across.reshape(-1)[cut_across] = follows
        cut_across = cut_across[~follows]
        follows = _follows(inverse, cut_down, w)
        down.reshape(-1)[cut_down] = follows
        cut_down = cut_down[~follows]
    if cut_across.size or cut_down.size:
        pixel_labels, n = _linked_regions(nodes, across, down, cut_down // w)
    else:  # no neighbours unlinked: the regions are those of the nodes
        pixel_labels, n = ndimage.label(nodes, structure=_FOUR_NEIGHBOURS)
    sizes = np.bincount(np.take(pixel_labels, valid_index), minlength=n + 1)
    sizes[0] = 0
    # labels are numbered in row order and no region spans two grids: a label's grid is that of the first row
    # whose labels reach it
    label_group = groups[np.searchsorted(np.maximum.accumulate(pixel_labels.max(axis=1)), np.arange(n + 1))]
    largest = np.zeros(n_groups + 1, dtype=sizes.dtype)  # the last entry collects label 0 (grid -1)
    np.maximum.at(largest, label_group, sizes)
    return np.take(sizes >= np.maximum(keep_fraction * largest[label_group], 1), pixel_labels) & valid


def _linked_regions(nodes: np.ndarray, across: np.ndarray, down: np.ndarray, cut_rows: np.ndarray
                    ) -> tuple[np.ndarray, int]:
    """4-connected regions (labels in raster order, and their count) of ``nodes`` (H, W) joined by the links
    ``across`` (H, W - 1) and ``down`` (H - 1, W), some of which are cut, those down only after rows ``cut_rows``.
    Nodes sit at the even columns of an image, the links across at the odd ones; a row of links down follows the
    rows in ``cut_rows``, elsewhere the next row of nodes touches (all its links down hold): the regions of the
    twice-as-fine image at a fraction of its cost."""
    h, w = nodes.shape
    extra = np.zeros(h, dtype=np.intp)
    extra[cut_rows + 1] = 1
    row = np.arange(h) + np.cumsum(extra)  # the nodes' rows in the image
    links = np.zeros((row[-1] + 1, 2 * w - 1), dtype=bool)  # a link implies its two nodes
    links[row, ::2] = nodes
    links[row, 1::2] = across
    link_rows = np.flatnonzero(extra[1:])
    links[row[link_rows] + 1, ::2] = down[link_rows]
    labels, n = ndimage.label(links, structure=_FOUR_NEIGHBOURS)
    return labels[row, ::2], n


def _on_surface(z: np.ndarray, z_node: np.ndarray, z_back: np.ndarray, fraction: np.ndarray,
                tolerance: np.ndarray) -> np.ndarray:
    """Pixels a ``fraction`` of a grid step beyond a node (depth ``z_node``) away from the node one step back
    (``z_back``, NaN: none): depth within ``tolerance`` of the node's, or on the line of inverse depth through both
    nodes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        close = np.abs(z - z_node) <= tolerance * z_node
        slope = (1 / z_node - 1 / z_back) * fraction
        along = np.abs(1 / z - (1 / z_node + slope)) <= SLOPE_TOLERANCE * np.abs(slope)
    return close | along


def full_resolution_inliers(
    sel: np.ndarray, z: np.ndarray, inliers: np.ndarray, step: int, tolerance: float
) -> np.ndarray:
    """Valid pixels of ``sel`` depth-continuous (|dz| <= tolerance * z) with an inlier at a corner of their cell
    of the step-``step`` grid ``inliers``."""
    h, w = sel.shape
    gh, gw = inliers.shape
    corners = np.full((gh + 1, gw + 1), np.nan, dtype=z.dtype)  # node depth where an inlier, one NaN row/col more
    corners[:gh, :gw] = np.where(inliers, z[::step, ::step], np.nan)
    near = np.zeros((h, w), dtype=bool)
    for dr in (0, 1):
        for dc in (0, 1):
            zn = np.repeat(np.repeat(corners[dr : dr + gh, dc : dc + gw], step, axis=0), step, axis=1)[:h, :w]
            with np.errstate(invalid="ignore"):
                near |= np.abs(z - zn) <= tolerance * zn
    return near & sel


def boundary_pixels(
    inliers: np.ndarray, grid: "SampleGrids", depth: np.ndarray, tolerance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image (flat) indices, and their grid, of the valid mask pixels up to step - 1 beyond the outermost inliers
    of each grid row (left and right) and grid column (up and down), kept when on the inlier's surface
    (``_on_surface``); grouped by grid.

    ``inliers`` is the canvas of ``grid`` (``SampleGrids``); ``depth`` is the flat image, ``tolerance`` the relative
    depth tolerance of each grid. A step-s grid misses up to s - 1 pixels at each side of a mask; these restore the
    extents (the edges of holes inside a mask never set an extent and are not probed).
    """
    width, (height, canvas_width) = grid.width, inliers.shape
    coarse_rows = np.flatnonzero(inliers.any(axis=1) & (np.take(grid.steps, np.maximum(grid.row_group, 0)) > 1))
    left = np.take(np.argmax(inliers, axis=1), coarse_rows)
    right = canvas_width - 1 - np.take(np.argmax(inliers[:, ::-1], axis=1), coarse_rows)
    row = np.arange(1, height + 1, dtype=np.int32)[:, None]  # 1-based: 0 is no inlier in a grid's column
    # (G, W) first and last inlier rows of each grid column (a grid's rows end at the next grid's)
    top = height - np.maximum.reduceat(inliers * (height + 1 - row), grid.offsets, axis=0)
    bottom = np.maximum.reduceat(inliers * row, grid.offsets, axis=0) - 1
    top_g, top_c = np.nonzero((bottom >= 0) & (grid.steps > 1)[:, None])
    n_rows, n_columns = coarse_rows.size, top_g.size
    r = np.concatenate([top[top_g, top_c], bottom[top_g, top_c], coarse_rows, coarse_rows])
    c = np.concatenate([top_c, top_c, left, right])
    side = np.repeat(np.arange(4), [n_columns, n_columns, n_rows, n_rows])
    row_g = np.take(grid.row_group, coarse_rows)
    g = np.concatenate([top_g, top_g, row_g, row_g])
    if g.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    order = np.argsort(g, kind="stable")  # grouped by grid
    r, c, side, g = np.take(r, order), np.take(c, order), np.take(side, order), np.take(g, order)
    dr, dc = np.take(_SIDES[0], side), np.take(_SIDES[1], side)
    back = np.take(inliers.reshape(-1), (r - dr) * canvas_width + c - dc)  # the inlier one step back
    step = np.take(grid.steps, g)
    y = np.take(grid.row_image, r)
    x = np.take(grid.x0, g) + (c - 1) * step  # the canvas has one padding column on the left
    pixel = y * width + x
    z_back = np.where(back, np.take(depth, np.where(back, pixel - (dr * width + dc) * step, pixel)), np.nan)
    count = step - 1  # pixels 1 .. step - 1 beyond each node
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + 1
    g = np.repeat(g, count)
    rows = np.clip(np.repeat(y, count) + np.repeat(dr, count) * k, np.take(grid.y0, g), np.take(grid.y1, g) - 1)
    cols = np.clip(np.repeat(x, count) + np.repeat(dc, count) * k, np.take(grid.x0, g), np.take(grid.x1, g) - 1)
    image = rows * width + cols
    keep = _on_surface(np.take(depth, image), np.repeat(np.take(depth, pixel), count), np.repeat(z_back, count),
                       (k / np.repeat(step, count)).astype(depth.dtype), np.take(tolerance.astype(depth.dtype), g))
    keep &= grid.in_mask(rows, cols, g)
    return image[keep], g[keep]


_SIDES = (np.array([-1, 1, 0, 0]), np.array([0, 0, -1, 1]))  # row and column direction of up, down, left, right
