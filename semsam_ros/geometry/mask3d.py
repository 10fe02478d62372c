"""A mask plus registered depth -> the mask's 3D pose, extent, surface normal and principal axis.

All outputs are in metres in the camera optical frame (x right, y down, z forward) unless ``transform`` moved
them to another frame. See docs/geometry.md for the method and what a grasp planner gets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from semsam_ros.geometry.camera import CameraModel
from semsam_ros.inference.segments import mask_bbox

DEFAULT_MIN_POINTS = 30
DEFAULT_MAX_POINTS = 1024
DEFAULT_DEPTH_JUMP = 0.05
DEFAULT_KEEP_FRACTION = 0.25
_NORMAL_FRACTION = 0.1  # share of the inliers nearest the centroid that the normal is fitted to
_NORMAL_MIN, _NORMAL_MAX = 20, 200
_NAN3 = np.full(3, np.nan)
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


@dataclass
class Mask3D:
    """3D description of one mask; every array is NaN when ``valid`` is False ("no 3D").

    position: robust centroid, the median of the inlier points along each box axis (on flat visible surfaces).
    orientation: quaternion (x, y, z, w) of the oriented box; its columns are the principal axes, x the longest
      (x = ``axis``), z the least-spread direction (pointing towards the camera).
    size: box extents along its own x, y, z; box_center: the box centre (differs from ``position`` for
      asymmetric shapes).
    normal: unit surface normal at the centroid, pointing towards the camera.
    axis: unit principal axis (a line; its sign is fixed so that its largest component is positive).
    point_count: valid-depth pixels inside the mask; valid_ratio: point_count / mask area.
    points: (N, 3) float32 inlier points at full resolution when asked for, else None.
    """

    valid: bool
    position: np.ndarray
    orientation: np.ndarray
    size: np.ndarray
    box_center: np.ndarray
    normal: np.ndarray
    axis: np.ndarray
    point_count: int
    valid_ratio: float
    points: np.ndarray | None = None

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rotation matrix of ``orientation`` (columns = box axes)."""
        return quaternion_to_matrix(self.orientation)


def mask_to_3d(
    mask: np.ndarray,
    depth_m: np.ndarray,
    camera: CameraModel,
    *,
    bbox: Sequence[int] | None = None,
    min_points: int = DEFAULT_MIN_POINTS,
    max_points: int | None = DEFAULT_MAX_POINTS,
    depth_jump: float = DEFAULT_DEPTH_JUMP,
    keep_fraction: float = DEFAULT_KEEP_FRACTION,
    return_points: bool = False,
) -> Mask3D:
    """3D of one mask from depth in metres registered to it (``depth_to_meters``: invalid is NaN or <= 0).

    bbox: the mask's pixel XYXY box with exclusive max (``Segment.bbox``); computed when None.
    min_points: fewer valid depth pixels than this gives "no 3D".
    max_points: statistics use a regular pixel grid of about this many points (None: every pixel).
    depth_jump: outlier rejection. Pixels are linked to their grid neighbours when their depths differ by at
      most ``depth_jump`` (relative, per pixel of spacing); only linked regions with at least ``keep_fraction``
      of the points of the largest one are kept. This drops mask bleed onto the background, flying pixels and
      spikes while keeping surfaces seen at grazing angles.
    return_points: also return the inlier points at full resolution (for point clouds).
    """
    mask = np.asarray(mask, dtype=bool)
    depth_m = np.asarray(depth_m)
    if mask.shape != depth_m.shape or mask.shape != (camera.height, camera.width):
        raise ValueError(
            f"mask {mask.shape[::-1]}, depth {depth_m.shape[::-1]} and camera ({camera.width}, {camera.height}) "
            "must have the same width and height: depth must be registered to the image, nothing is resized"
        )
    x0, y0, x1, y1 = mask_bbox(mask) if bbox is None else (int(b) for b in bbox)
    m = mask[y0:y1, x0:x1]
    z = depth_m[y0:y1, x0:x1]
    area = int(np.count_nonzero(m))
    if area == 0:
        return _no_3d(0, 0.0)
    sel = m & (z > 0) & (z < np.inf)  # NaN fails both
    if camera.ray_valid is not None:
        sel &= camera.ray_valid[y0:y1, x0:x1]
    count = int(np.count_nonzero(sel))
    ratio = count / area
    if count < max(min_points, 4):
        return _no_3d(count, ratio)
    step = 1 if max_points is None else max(1, math.ceil(math.sqrt(count / max_points)))
    grid = 1 if return_points else step
    jump = depth_jump * grid
    inliers = _surface_inliers(m[::grid, ::grid], sel[::grid, ::grid], z[::grid, ::grid], jump, keep_fraction,
                               holes=count < area)
    rays = camera.rays[:, y0:y1, x0:x1]
    points = extent_points = None
    if return_points:
        points = (rays[:, inliers] * z[inliers]).T.copy()
        extent_points = points.T
        inliers = inliers[::step, ::step]
    elif step > 1:
        r, c = _boundary_pixels(sel, z, inliers, step, depth_jump * step)
        extent_points = rays[:, r, c] * z[r, c]
    p = rays[:, ::step, ::step][:, inliers] * z[::step, ::step][inliers]
    if p.shape[1] < 4:
        return _no_3d(count, ratio)
    return _fit(p, extent_points, count, ratio, points)


def segments_to_3d(
    segments: Sequence[Any], depth_m: np.ndarray, camera: CameraModel, **options: Any
) -> list[Mask3D]:
    """``mask_to_3d`` for each Segment (uses its ``mask`` and ``bbox``); options as for ``mask_to_3d``."""
    return [mask_to_3d(s.mask, depth_m, camera, bbox=s.bbox, **options) for s in segments]


def transform(m: Mask3D, t: np.ndarray) -> Mask3D:
    """The same Mask3D expressed in another frame; ``t`` (4x4) maps camera-frame points into that frame."""
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (4, 4):
        raise ValueError(f"transform must be a 4x4 matrix, got shape {t.shape}")
    r, trans = t[:3, :3], t[:3, 3]
    if not (np.allclose(r.T @ r, np.eye(3), atol=1e-6) and np.linalg.det(r) > 0 and
            np.allclose(t[3], (0, 0, 0, 1))):
        raise ValueError("transform must be rigid: orthonormal rotation with det +1 and last row (0, 0, 0, 1)")
    if not m.valid:
        return m
    points = None if m.points is None else (m.points @ r.T.astype(np.float32) + trans.astype(np.float32))
    return replace(
        m,
        position=r @ m.position + trans,
        box_center=r @ m.box_center + trans,
        orientation=matrix_to_quaternion(r @ m.rotation),
        normal=r @ m.normal,
        axis=r @ m.axis,
        points=points,
    )


def _no_3d(count: int, ratio: float) -> Mask3D:
    nan3 = _NAN3.copy()
    return Mask3D(False, nan3, np.full(4, np.nan), nan3.copy(), nan3.copy(), nan3.copy(), nan3.copy(), count, ratio)


def _surface_inliers(
    mask: np.ndarray, valid: np.ndarray, z: np.ndarray, jump: float, keep_fraction: float, holes: bool
) -> np.ndarray:
    """Valid pixels of a grid in its large depth-continuous regions (4-neighbours linked if |dz| <= jump * z).

    Pixels sit at even positions of a twice-as-fine image, links between them at odd ones. A mask pixel without
    depth (``holes``) takes the depth of the last valid pixel to its left in the row, so holes bridge rather than
    cut a surface; regions are sized by their valid pixels only.
    """
    h, w = valid.shape
    if holes:
        last = np.where(valid, np.arange(w), 0)
        np.maximum.accumulate(last, axis=1, out=last)
        z = z[np.arange(h)[:, None], last]
    links = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)
    links[::2, ::2] = mask
    with np.errstate(invalid="ignore"):
        links[::2, 1::2] = np.abs(z[:, 1:] - z[:, :-1]) <= jump * np.minimum(z[:, 1:], z[:, :-1])
        links[1::2, ::2] = np.abs(z[1:] - z[:-1]) <= jump * np.minimum(z[1:], z[:-1])
    labels, n = ndimage.label(links, structure=_FOUR_NEIGHBOURS)
    pixel_labels = labels[::2, ::2]
    sizes = np.bincount(pixel_labels[valid], minlength=n + 1)
    sizes[0] = 0
    return (sizes >= max(keep_fraction * sizes.max(), 1))[pixel_labels] & valid


def _boundary_pixels(
    sel: np.ndarray, z: np.ndarray, inliers: np.ndarray, step: int, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) in ``sel`` of the valid pixels up to step - 1 beyond the outermost inliers of every row and
    column of the step-``step`` grid, kept when depth-continuous with that inlier (|dz| <= tolerance * z).

    The grid misses up to step - 1 pixels at each side of a mask; these pixels restore the extents.
    """
    h, w = sel.shape
    gh, gw = inliers.shape
    grow = np.flatnonzero(inliers.any(axis=1))
    gcol = np.flatnonzero(inliers.any(axis=0))
    left = inliers[grow].argmax(axis=1)
    right = gw - 1 - inliers[grow, ::-1].argmax(axis=1)
    top = inliers[:, gcol].argmax(axis=0)
    bottom = gh - 1 - inliers[::-1, gcol].argmax(axis=0)
    # outermost inliers (node_r, node_c) and the step - 1 pixels beyond each, clipped to the crop
    node_r = np.concatenate([grow, grow, top, bottom]) * step
    node_c = np.concatenate([left, right, gcol, gcol]) * step
    n_r, n_c = grow.size, gcol.size
    k = np.arange(1, step)
    dr = np.zeros((node_r.size, step - 1), dtype=np.int64)
    dc = np.zeros_like(dr)
    dc[:n_r], dc[n_r : 2 * n_r] = -k, k
    dr[2 * n_r : 2 * n_r + n_c], dr[2 * n_r + n_c :] = -k, k
    rows = np.clip(node_r[:, None] + dr, 0, h - 1)
    cols = np.clip(node_c[:, None] + dc, 0, w - 1)
    zn = z[node_r, node_c][:, None]
    with np.errstate(invalid="ignore"):
        keep = sel[rows, cols] & (np.abs(z[rows, cols] - zn) <= tolerance * zn)
    return rows[keep], cols[keep]


def _median(a: np.ndarray) -> np.ndarray:
    """Per-row (upper) median of a (3, N) array."""
    k = a.shape[1] // 2
    return np.partition(a, k, axis=1)[:, k]


def _principal_axes(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (3,), centred points and eigenvectors (columns, largest variance first) of (3, N) points."""
    mean = p.sum(axis=1) / p.shape[1]
    centred = p - mean[:, None]
    _, vecs = np.linalg.eigh((centred @ centred.T).astype(np.float64))
    return mean.astype(np.float64), centred, vecs[:, ::-1]


def _fit(p: np.ndarray, extent_points: np.ndarray | None, count: int, ratio: float,
         points: np.ndarray | None) -> Mask3D:
    """Box, centroid, normal and axis of (3, N) inlier points; the box also spans ``extent_points`` (3, M)."""
    mean, centred, axes = _principal_axes(p)
    e0 = axes[:, 0] if axes[np.argmax(np.abs(axes[:, 0])), 0] > 0 else -axes[:, 0]
    e2 = -axes[:, 2] if axes[:, 2] @ mean > 0 else axes[:, 2]  # towards the camera
    rot = np.array([e0, _cross(e2, e0), e2]).T
    rot_t = rot.T.astype(p.dtype)
    q = rot_t @ centred
    centroid = mean + rot @ _median(q)  # median along the box axes: on the surface of flat parts
    if extent_points is not None and extent_points.shape[1]:
        q = np.concatenate([q, rot_t @ (extent_points - mean[:, None].astype(p.dtype))], axis=1)
    lo, hi = q.min(axis=1).astype(np.float64), q.max(axis=1).astype(np.float64)

    d = p - centroid[:, None].astype(p.dtype)
    d2 = np.einsum("ij,ij->j", d, d)
    k = min(p.shape[1], max(_NORMAL_MIN, min(_NORMAL_MAX, int(p.shape[1] * _NORMAL_FRACTION))))
    near = p[:, np.argpartition(d2, k - 1)[:k]] if k < p.shape[1] else p
    near_mean, _, near_axes = _principal_axes(near)
    normal = -near_axes[:, 2] if near_axes[:, 2] @ near_mean > 0 else near_axes[:, 2]
    return Mask3D(
        valid=True,
        position=centroid,
        orientation=matrix_to_quaternion(rot),
        size=hi - lo,
        box_center=mean + rot @ ((lo + hi) / 2),
        normal=normal,
        axis=e0,
        point_count=count,
        valid_ratio=ratio,
        points=points,
    )


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross is slow for single vectors)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix."""
    r = np.asarray(r, dtype=np.float64)
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    out = np.array(q)
    out /= np.linalg.norm(out)
    return -out if out[3] < 0 else out


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
