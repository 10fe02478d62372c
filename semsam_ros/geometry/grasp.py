"""Points on the object and one-face normals: the most interior inlier pixel of each mask (the grasp point) and
a plane fit that stays on one face (the grasp normal and the normal at the robust centroid)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from semsam_ros.geometry.grids import SampleGrids

MIN_HALF_WINDOW, MAX_HALF_WINDOW = 2, 12  # pixels of the one-sided windows the normal is fitted to
WINDOW_SAMPLES = 4  # a half window samples at most this many pixels each way (every pixel up to 4, then strided)
CENTRED_RESIDUAL = 2.0  # the centred window is on one face unless its residual is this many times the best one's
_RESIDUAL_FLOOR = 1e-10  # m^2: residuals below (10 um)^2 are noise-free, all alike
_OFFSETS = np.arange(-WINDOW_SAMPLES, WINDOW_SAMPLES + 1)
_DR, _DC = np.repeat(_OFFSETS, _OFFSETS.size), np.tile(_OFFSETS, _OFFSETS.size)  # window samples, row-major
_PRODUCTS = (np.array([0, 1, 2, 0, 0, 1]), np.array([0, 1, 2, 1, 2, 2]))  # the 6 entries of a symmetric 3x3
_SYMMETRIC = np.array([[0, 3, 4], [3, 1, 5], [4, 5, 2]])  # their places in the matrix
_ROW_PAIRS = (np.array([0, 0, 1]), np.array([1, 2, 2]))
_NEXT, _AFTER = np.array([1, 2, 0]), np.array([2, 0, 1])  # cross product: (a x b)_i = a_j b_k - a_k b_j
_QUADRANTS = np.stack([(_DR <= 0) & (_DC <= 0), (_DR <= 0) & (_DC >= 0), (_DR >= 0) & (_DC <= 0),
                       (_DR >= 0) & (_DC >= 0)])  # (4, window): the windows with the pixel at a corner


def _window_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per half-size h (MIN_HALF_WINDOW..MAX_HALF_WINDOW): the row and column offsets of the window samples
    (every ceil(h / WINDOW_SAMPLES) pixels), and which samples each of the five windows holds (the four corner
    windows of half-size h, then the centred one of half-size h // 2)."""
    half = np.arange(MIN_HALF_WINDOW, MAX_HALF_WINDOW + 1)[:, None]
    stride = -(-half // WINDOW_SAMPLES)
    dr, dc = _DR * stride, _DC * stride
    inside = (np.abs(dr) <= half) & (np.abs(dc) <= half)
    centred = (np.abs(dr) <= half // 2) & (np.abs(dc) <= half // 2)
    return dr, dc, np.concatenate([inside[:, None] & _QUADRANTS, centred[:, None]], axis=1)


_WINDOW_DR, _WINDOW_DC, _WINDOWS = _window_templates()  # (halves, window), (halves, window), (halves, 5, window)


def first_per_group(values: np.ndarray, group: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Index of the first smallest value of each group of consecutive elements (groups start at ``starts``)."""
    hit = np.flatnonzero(values == np.take(np.minimum.reduceat(values, starts), group))
    return hit[np.concatenate(([True], group[hit[1:]] != group[hit[:-1]]))]


def interior_pixels(
    grids: SampleGrids, rows: np.ndarray, cols: np.ndarray, group: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index (into ``rows``, ``cols``) of the most interior inlier of each grid, and every inlier's distance to
    its mask's outside in image pixels.

    ``rows``, ``cols`` are the canvas positions of the inliers, grouped by grid (``group``, starting at
    ``starts``). The distance is the chessboard distance on a twice-coarser grid whose cells are inside when all
    four of their grid pixels are (padding rows and columns stay outside, so no distance crosses grids): a tenth of
    the cost of the exact Euclidean transform on the grid, within about one grid step (and a factor sqrt(2) along
    diagonals) of it. Among the inliers at most two grid steps less interior than
    the best, the one nearest the mask's mean grid pixel wins (a plateau, e.g. a strip's midline, gives its
    middle, not its end).
    """
    mask = grids.mask
    h, w = mask.shape
    coarse = np.ones(((h + 1) // 2, (w + 1) // 2), dtype=bool)
    for dr in (0, 1):
        for dc in (0, 1):
            part = mask[dr::2, dc::2]
            coarse[: part.shape[0], : part.shape[1]] &= part
            coarse[part.shape[0] :] = False  # odd sizes: the missing row or column is outside
            coarse[:, part.shape[1] :] = False
    sizes = np.diff(np.append(starts, rows.size))
    step = np.repeat(grids.steps, sizes)
    distance = ndimage.distance_transform_cdt(coarse, metric="chessboard")
    depth = (2.0 * np.take(distance, (rows >> 1) * distance.shape[1] + (cols >> 1)) + 0.5) * step
    near = depth >= np.repeat(np.maximum.reduceat(depth, starts), sizes) - 2 * step
    mask_index = np.flatnonzero(mask)  # grouped by grid: a grid's rows end at the next grid's
    bounds = np.searchsorted(mask_index, grids.offsets * w)
    mask_rows = mask_index // w
    n = np.diff(np.append(bounds, mask_index.size))
    mean_r = np.add.reduceat(mask_rows, bounds) / n
    mean_c = np.add.reduceat(mask_index - mask_rows * w, bounds) / n
    d2 = (rows - np.repeat(mean_r, sizes)) ** 2 + (cols - np.repeat(mean_c, sizes)) ** 2
    return first_per_group(np.where(near, d2, np.inf), group, starts), depth


def face_normals(
    grids: SampleGrids, rays: np.ndarray, depth: np.ndarray, flat: np.ndarray, group: np.ndarray, reach: np.ndarray,
) -> np.ndarray:
    """(K, 3) unit normals at image pixels ``flat`` of masks ``group``, each from a plane fit on one face.

    ``rays`` (3, H * W) and ``depth`` are flat images. Planes are fitted to the mask's
    valid pixels (in its crop) of the four square windows that have the pixel at a corner (half-size h from
    ``reach``, its distance to the mask's outside; sampled every ceil(h / ``WINDOW_SAMPLES``) pixels, so every
    window costs the same) and of the window of half-size h / 2 centred on it. The corner
    window with the smallest mean squared residual is on one face; the centred one (the normal at the pixel
    itself, not beside it: curved surfaces) is taken unless its residual is more than ``CENTRED_RESIDUAL`` times
    that, i.e. unless it straddles an edge. Oriented towards the camera; NaN when no window has 6 points.
    """
    width = grids.width
    half = np.clip(np.floor(reach / math.sqrt(2)).astype(np.intp), MIN_HALF_WINDOW, MAX_HALF_WINDOW)
    template = half - MIN_HALF_WINDOW  # its windows: the same number of samples whatever their size
    row, col = flat // width, flat % width
    r, c = row[:, None] + np.take(_WINDOW_DR, template, axis=0), col[:, None] + np.take(_WINDOW_DC, template, axis=0)
    keep = (r >= np.take(grids.y0, group)[:, None]) & (r < np.take(grids.y1, group)[:, None])
    keep &= (c >= np.take(grids.x0, group)[:, None]) & (c < np.take(grids.x1, group)[:, None])
    r, c = np.where(keep, r, row[:, None]), np.where(keep, c, col[:, None])  # outside the crop: the pixel itself
    window = r * width + c
    keep &= grids.in_mask(r, c, group[:, None])
    centre = np.take(rays, flat, axis=1).astype(np.float64) * np.take(depth, flat)
    p = np.take(rays, window, axis=1) * np.take(depth, window)  # (3, K, window)
    p = np.where(keep, p - centre[:, :, None], 0.0).transpose(1, 2, 0)  # (K, window, 3), about the pixel
    weights = (keep[:, None, :] & np.take(_WINDOWS, template, axis=0)).astype(np.float64)  # (K, 5, window)
    n = weights.sum(axis=2)
    weights /= np.maximum(n, 1)[:, :, None]
    mean = weights @ p
    second = weights @ (p[:, :, _PRODUCTS[0]] * p[:, :, _PRODUCTS[1]])  # (K, 5, 6): xx, yy, zz, xy, xz, yz
    second -= mean[..., _PRODUCTS[0]] * mean[..., _PRODUCTS[1]]
    smallest = _smallest_eigenvalues(second)
    residual = np.where(n < 6, np.inf, smallest)  # (K, 5): four corner windows, then centred
    best = np.argmin(residual[:, :4], axis=1)
    k = np.arange(flat.size)
    best[residual[:, 4] <= CENTRED_RESIDUAL * residual[k, best] + _RESIDUAL_FLOOR] = 4
    normal = _smallest_eigenvectors(second[k, best], smallest[k, best])
    normal[n.max(axis=1) < 6] = np.nan
    return np.where((np.einsum("ki,ik->k", normal, centre) > 0)[:, None], -normal, normal)


def _smallest_eigenvalues(m: np.ndarray) -> np.ndarray:
    """Smallest eigenvalue of symmetric 3x3 matrices given as (..., 6) entries xx, yy, zz, xy, xz, yz, in closed
    form (the trigonometric solution of the characteristic cubic; numpy.linalg costs ~1 us a matrix)."""
    xx, yy, zz, xy, xz, yz = (m[..., i] for i in range(6))
    q = (xx + yy + zz) / 3
    a, b, c = xx - q, yy - q, zz - q
    off = xy * xy + xz * xz + yz * yz
    p = np.sqrt((a * a + b * b + c * c + 2 * off) / 6)
    det = a * (b * c - yz * yz) - xy * (xy * c - yz * xz) + xz * (xy * yz - b * xz)
    half = np.clip(det / (2 * np.where(p > 0, p, 1.0) ** 3), -1.0, 1.0)
    return q + 2 * p * np.cos(np.arccos(half) / 3 + 2 * np.pi / 3)


def _smallest_eigenvectors(m: np.ndarray, smallest: np.ndarray) -> np.ndarray:
    """(K, 3) unit eigenvectors of the (K, 6) symmetric matrices (as in ``_smallest_eigenvalues``) for their
    eigenvalues ``smallest`` (K,): the longest of the cross products of two rows of m - smallest * I, which are
    all along it (numpy.linalg.eigh costs ~1 us a matrix). Where no two rows span a plane (a double eigenvalue,
    e.g. points on a line) the direction is not defined and numpy.linalg.eigh picks one."""
    rows = m[:, _SYMMETRIC] - smallest[:, None, None] * np.eye(3)
    a, b = rows[:, _ROW_PAIRS[0]], rows[:, _ROW_PAIRS[1]]  # (K, 3 pairs, 3): rows 0 and 1, 0 and 2, 1 and 2
    crosses = a[..., _NEXT] * b[..., _AFTER] - a[..., _AFTER] * b[..., _NEXT]
    norms = np.einsum("kpi,kpi->kp", crosses, crosses)
    pick = norms.argmax(axis=1)
    k = np.arange(m.shape[0])
    vectors, norm = crosses[k, pick], np.sqrt(norms[k, pick])
    degenerate = norm <= 1e-6 * np.einsum("kij,kij->k", rows, rows)
    if degenerate.any():
        vectors[degenerate] = np.linalg.eigh(m[degenerate][:, _SYMMETRIC])[1][:, :, 0]
        norm[degenerate] = 1.0
    return vectors / norm[:, None]
