"""A grasp point that lies on the object: the most interior inlier pixel of a mask and its one-face normal."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage

MIN_HALF_WINDOW, MAX_HALF_WINDOW = 2, 12  # pixels of the one-sided windows the normal is fitted to


class Grasp(NamedTuple):
    """Image pixel (x, y), its 3D point and the unit normal of the face it lies on (towards the camera)."""

    pixel: np.ndarray
    point: np.ndarray
    normal: np.ndarray


def grasp_pixel(mask: np.ndarray, inliers: np.ndarray, step: int) -> tuple[int, int, float]:
    """(row, col, distance to the mask's outside in pixels) of the most interior inlier of a mask crop.

    ``inliers`` is the step-``step`` grid of inliers of ``mask``. Among the inliers at most one grid step less
    interior than the best, the one nearest the mask's mean pixel wins (a plateau, e.g. a strip's midline, gives
    its middle, not its end).
    """
    grid = np.pad(mask[::step, ::step], 1)
    inside = ndimage.distance_transform_edt(grid)[1:-1, 1:-1] * step
    rows, cols = np.nonzero(inliers)
    depth = inside[rows, cols]
    near = depth >= depth.max() - step
    mr, mc = np.nonzero(grid[1:-1, 1:-1])
    d2 = (rows - mr.mean()) ** 2 + (cols - mc.mean()) ** 2
    best = np.flatnonzero(near)[np.argmin(d2[near])]
    return int(rows[best]) * step, int(cols[best]) * step, float(depth[best])


def face_normal(rays: np.ndarray, z: np.ndarray, sel: np.ndarray, row: int, col: int, reach: float) -> np.ndarray:
    """Unit normal at crop pixel (row, col) from a plane fit that stays on one face.

    ``rays`` (3, h, w) and depths ``z`` (h, w) of a crop give its points, valid where ``sel``. Planes are fitted to the four
    square windows that have the pixel at a corner (half-size from ``reach``, its distance to the mask's outside);
    the one with the smallest mean squared residual is on one face. Oriented towards the camera.
    """
    h, w = sel.shape
    half = int(np.clip(math.floor(reach / math.sqrt(2)), MIN_HALF_WINDOW, MAX_HALF_WINDOW))
    r0, r1, c0, c1 = max(row - half, 0), min(row + half + 1, h), max(col - half, 0), min(col + half + 1, w)
    keep = sel[r0:r1, c0:c1]
    p = (rays[:, r0:r1, c0:c1] * z[r0:r1, c0:c1]).astype(np.float64)
    rr, cc = np.nonzero(keep)
    rr, cc, p = rr + r0, cc + c0, p[:, keep]
    quadrants = np.stack([(rr <= row) & (cc <= col), (rr <= row) & (cc >= col), (rr >= row) & (cc <= col),
                          (rr >= row) & (cc >= col)]).astype(np.float64)  # (4, N)
    n = quadrants.sum(axis=1)
    if n.max() < 6:
        return np.full(3, np.nan)
    weights = quadrants / np.maximum(n, 1)[:, None]
    mean = weights @ p.T  # (4, 3)
    cov = np.einsum("qn,in,jn->qij", weights, p, p) - mean[:, :, None] * mean[:, None, :]
    values, vectors = np.linalg.eigh(cov)
    values[:, 0][n < 6] = np.inf
    best = vectors[np.argmin(values[:, 0]), :, 0]
    return -best if best @ rays[:, row, col] > 0 else best


def grasp_of(mask: np.ndarray, sel: np.ndarray, inliers: np.ndarray, step: int, rays: np.ndarray, z: np.ndarray,
             x0: int, y0: int) -> Grasp:
    """The grasp of a mask crop at image offset (x0, y0); ``rays`` and ``z`` as for ``face_normal``."""
    row, col, reach = grasp_pixel(mask, inliers, step)
    normal = face_normal(rays, z, sel, row, col, reach)
    point = rays[:, row, col].astype(np.float64) * float(z[row, col])
    return Grasp(np.array([col + x0, row + y0], dtype=np.float64), point, normal)
