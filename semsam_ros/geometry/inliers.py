"""Which depth pixels of a mask belong to its surface: the outlier rule of ``mask3d``.

Two neighbouring pixels are on one surface when their depths differ by little (``jump``, relative), or when the
step between them continues the surface on one side: the inverse depth of a plane is linear in pixel coordinates,
so along a plane seen at any angle successive inverse-depth steps are equal, however large. A true depth edge (an
object's silhouette against the wall, a mixed pixel between them) is a step unlike the steps on either side.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

SLOPE_TOLERANCE = 0.25
"""Largest change between successive inverse-depth steps, relative to the step, on one surface."""
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def _continues(d: np.ndarray, tol: float) -> np.ndarray:
    """Along the last axis of steps ``d`` (link k between pixels k and k + 1): True where the three steps ending
    with link k, or the three starting with it, are equal within ``tol`` * |d_k| (NaN: no surface)."""
    n = d.shape[-1]
    gap = np.full((*d.shape[:-1], 2), np.nan, dtype=d.dtype)
    p = np.concatenate([gap, d, gap], axis=-1)
    limit = tol * np.abs(d)
    with np.errstate(invalid="ignore"):
        before = (np.abs(p[..., 1 : n + 1] - d) <= limit) & (np.abs(p[..., 0:n] - p[..., 1 : n + 1]) <= limit)
        after = (np.abs(p[..., 3 : n + 3] - d) <= limit) & (np.abs(p[..., 4 : n + 4] - p[..., 3 : n + 3]) <= limit)
    return before | after


def _linked(z: np.ndarray, axis: int, jump: float) -> np.ndarray:
    """Links between neighbours along ``axis`` of depth ``z`` (NaN: not a node): small jump or surface-following."""
    log_z = np.log(z)
    with np.errstate(invalid="ignore"):
        step = np.abs(np.diff(log_z, axis=axis))
        small = step <= math.log1p(jump)  # |dz| <= jump * min(z1, z2)
        if not (step > math.log1p(jump)).any():
            return small
    w = np.moveaxis(1.0 / z, axis, -1)
    return small | np.moveaxis(_continues(np.diff(w, axis=-1), SLOPE_TOLERANCE), -1, axis)


def surface_inliers(
    mask: np.ndarray, valid: np.ndarray, z: np.ndarray, jump: float, keep_fraction: float, holes: bool
) -> np.ndarray:
    """Valid pixels of a grid in its large surface-connected regions (4-neighbours linked by ``_linked``).

    Regions with at least ``keep_fraction`` of the valid pixels of the largest one are kept. Pixels sit at even
    positions of a twice-as-fine image, links between them at odd ones. A mask pixel without depth (``holes``)
    takes the depth of the last valid pixel to its left in the row, so holes bridge rather than cut a surface;
    regions are sized by their valid pixels only.
    """
    h, w = valid.shape
    nodes = valid
    if holes:
        rows = np.arange(h)[:, None]
        last = np.where(valid, np.arange(w), 0)
        np.maximum.accumulate(last, axis=1, out=last)
        nodes = mask & valid[rows, last]
        z = z[rows, last]
    zn = np.where(nodes, z, np.nan)
    links = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)
    links[::2, ::2] = nodes
    links[::2, 1::2] = _linked(zn, 1, jump)
    links[1::2, ::2] = _linked(zn, 0, jump)
    labels, n = ndimage.label(links, structure=_FOUR_NEIGHBOURS)
    if n == 1:
        return valid
    pixel_labels = labels[::2, ::2]
    sizes = np.bincount(pixel_labels[valid], minlength=n + 1)
    sizes[0] = 0
    return (sizes >= max(keep_fraction * sizes.max(), 1))[pixel_labels] & valid


def _on_surface(z: np.ndarray, z_node: np.ndarray, z_back: np.ndarray, k: np.ndarray, step: int,
                tolerance: float) -> np.ndarray:
    """Pixels ``k`` pixels beyond a node (depth ``z_node``) away from the node ``step`` pixels back (``z_back``,
    NaN: none): depth within ``tolerance`` of the node's, or on the line of inverse depth through both nodes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        close = np.abs(z - z_node) <= tolerance * z_node
        slope = (1.0 / z_node - 1.0 / z_back) * (k / step)
        along = np.abs(1.0 / z - (1.0 / z_node + slope)) <= SLOPE_TOLERANCE * np.abs(slope)
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
    sel: np.ndarray, depth_m: np.ndarray, x0: int, y0: int, inliers: np.ndarray, step: int, tolerance: float
) -> np.ndarray:
    """Image (flat) indices of the valid pixels up to step - 1 beyond a grid inlier, towards each of its 4 grid
    neighbours that is not an inlier, kept when on the inlier's surface (``_on_surface``).

    ``sel`` is the crop at (x0, y0) of valid mask pixels, ``inliers`` its step-``step`` grid of inliers; the grid
    misses up to step - 1 pixels at each side of a mask, these restore the extents.
    """
    h, w = sel.shape
    width = depth_m.shape[1]
    padded = np.zeros((inliers.shape[0] + 2, inliers.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = inliers
    neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    side, node_r, node_c = np.nonzero(inliers > neighbours)  # inliers whose up, down, left, right one is not
    back = np.stack([padded[2:, 1:-1], padded[:-2, 1:-1], padded[1:-1, 2:], padded[1:-1, :-2]])[side, node_r, node_c]
    node_r *= step
    node_c *= step
    dr, dc = _probe_offsets(step)
    rows = np.minimum(np.maximum(node_r[:, None] + dr[side], 0), h - 1)
    cols = np.minimum(np.maximum(node_c[:, None] + dc[side], 0), w - 1)
    image = (rows + y0) * width + (cols + x0)
    node = (node_r + y0) * width + (node_c + x0)
    back_flat = np.where(back, node - (dr[side, 0] * width + dc[side, 0]) * step, node)
    z_back = np.where(back, np.take(depth_m, back_flat), np.nan)[:, None]
    on = _on_surface(np.take(depth_m, image), np.take(depth_m, node)[:, None], z_back, np.arange(1, step), step,
                     tolerance)
    return image[np.take(sel, rows * w + cols) & on]


@lru_cache(maxsize=64)
def _probe_offsets(step: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, step - 1) row and column offsets of the pixels 1..step-1 up, down, left and right of a grid node."""
    k = np.arange(1, step)
    zero = np.zeros_like(k)
    return np.stack([-k, k, zero, zero]), np.stack([zero, zero, -k, k])
