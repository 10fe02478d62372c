"""A mask plus registered depth -> the mask's 3D pose, extent, surface normal and principal axis.

All outputs are in metres in the camera optical frame (x right, y down, z forward) unless ``transform`` moved
them to another frame. See docs/geometry.md for the method and what a grasp planner gets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from semsam_ros.geometry.camera import CameraModel
from semsam_ros.geometry.grasp import Grasp, grasp_of
from semsam_ros.geometry.inliers import boundary_pixels, full_resolution_inliers, surface_inliers
from semsam_ros.types import mask_bbox

DEFAULT_MIN_POINTS = 30
DEFAULT_MAX_POINTS = 1024
DEFAULT_DEPTH_JUMP = 0.05
DEFAULT_KEEP_FRACTION = 0.25
_NORMAL_FRACTION = 0.1  # share of the inliers nearest the centroid that the normal is fitted to
_NORMAL_MIN, _NORMAL_MAX = 20, 200
_NAN3 = np.full(3, np.nan)


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
    grasp_point: a point on the object: the 3D point of ``grasp_pixel``, the most interior inlier pixel of the
      mask; grasp_normal: unit normal of the face it lies on, towards the camera; grasp_pixel: its (x, y).
    points: (N, 3) float32 inlier points at full resolution when asked for, else None; asking for them changes
      nothing else.
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
    grasp_point: np.ndarray = field(default_factory=lambda: _NAN3.copy())
    grasp_normal: np.ndarray = field(default_factory=lambda: _NAN3.copy())
    grasp_pixel: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
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
    """3D of one mask from depth in metres registered to it (``depth_to_meters``: invalid is NaN, inf or <= 0).

    bbox: the mask's pixel XYXY box with exclusive max (``Segment.bbox``); computed when None.
    min_points: fewer valid depth pixels than this gives "no 3D".
    max_points: statistics use a regular pixel grid of about this many points (None: every pixel).
    depth_jump: outlier rejection (``geometry.inliers``). Pixels are linked to their grid neighbours when their
      depths differ by at most ``depth_jump`` (relative, per pixel of spacing) or when the step between them
      continues the surface's steps on one side; only linked regions with at least ``keep_fraction`` of the
      points of the largest one are kept. This drops mask bleed onto the background, flying pixels and spikes
      while keeping surfaces seen at grazing angles.
    return_points: also return the inlier points at full resolution (for point clouds); every other field is
      the same either way.
    """
    options = _Options(min_points, max_points, depth_jump, keep_fraction, return_points)
    return _masks_to_3d([mask], [bbox], depth_m, camera, options)[0]


def segments_to_3d(
    segments: Sequence[Any], depth_m: np.ndarray, camera: CameraModel, **options: Any
) -> list[Mask3D]:
    """``mask_to_3d`` for each Segment (its ``mask`` and ``bbox``), the fits batched; same keyword options."""
    return _masks_to_3d([s.mask for s in segments], [s.bbox for s in segments], depth_m, camera, _Options(**options))


class _Options(NamedTuple):
    min_points: int = DEFAULT_MIN_POINTS
    max_points: int | None = DEFAULT_MAX_POINTS
    depth_jump: float = DEFAULT_DEPTH_JUMP
    keep_fraction: float = DEFAULT_KEEP_FRACTION
    return_points: bool = False


class _Sample(NamedTuple):
    """Inlier points of one mask: grid sample (3, N), extra extent points (3, M), counts, grasp, full-res points."""

    p: np.ndarray
    extent: np.ndarray
    count: int
    ratio: float
    grasp: Grasp
    points: np.ndarray | None


def _masks_to_3d(
    masks: Sequence[np.ndarray], bboxes: Sequence[Sequence[int] | None], depth_m: np.ndarray,
    camera: CameraModel, options: _Options,
) -> list[Mask3D]:
    """Sample every mask, then fit all samples at once (the per-mask numpy call overhead dominates)."""
    depth_m = np.asarray(depth_m)
    if depth_m.dtype.kind != "f":
        raise ValueError(f"depth_m must be floating-point metres, got {depth_m.dtype}: convert with depth_to_meters")
    if depth_m.shape != (camera.height, camera.width):
        raise ValueError(
            f"depth {depth_m.shape[::-1]} and camera ({camera.width}, {camera.height}) must have the same size: "
            "depth must be registered to the image, nothing is resized"
        )
    depth_m = np.ascontiguousarray(depth_m)
    samples = [_sample(np.asarray(m, dtype=bool), b, depth_m, camera, options) for m, b in zip(masks, bboxes)]
    fitted = iter(_fit_batch([s for s in samples if isinstance(s, _Sample)]))
    return [next(fitted) if isinstance(s, _Sample) else s for s in samples]


def _sample(
    mask: np.ndarray, bbox: Sequence[int] | None, depth_m: np.ndarray, camera: CameraModel, options: _Options
) -> _Sample | Mask3D:
    """The inlier points of one mask, or its "no 3D" result."""
    if mask.shape != depth_m.shape:
        raise ValueError(
            f"mask {mask.shape[::-1]} and depth {depth_m.shape[::-1]} must have the same size: depth must be "
            "registered to the image, nothing is resized"
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
    if count < max(options.min_points, 4):
        return _no_3d(count, ratio)
    step = 1 if options.max_points is None else max(1, math.ceil(math.sqrt(count / options.max_points)))
    inliers = surface_inliers(m[::step, ::step], sel[::step, ::step], z[::step, ::step],
                              options.depth_jump * step, options.keep_fraction, holes=count < area)
    width = camera.width
    rows, cols = np.nonzero(inliers)
    if rows.size < 4:
        return _no_3d(count, ratio)
    flat = (rows * step + y0) * width + (cols * step + x0)  # image pixel indices of the inliers
    if step > 1:  # inliers on the step grid; the boundary pixels restore the extents it misses
        extent = _gather(camera, depth_m, boundary_pixels(sel, depth_m, x0, y0, inliers, step,
                                                           options.depth_jump * step))
    else:
        extent = np.zeros((3, 0), np.float32)
    rays = camera.rays[:, y0:y1, x0:x1]
    grasp = grasp_of(m, sel, inliers, step, rays, z, x0, y0)
    points = None
    if options.return_points:  # never used for the statistics: they do not depend on it
        full = full_resolution_inliers(sel, z, inliers, step, options.depth_jump * step * math.sqrt(2))
        points = (rays[:, full] * z[full]).T.copy()
    return _Sample(_gather(camera, depth_m, flat), extent, count, ratio, grasp, points)


def _gather(camera: CameraModel, depth_m: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """(3, N) camera-frame points of image pixels given by flat index."""
    return np.take(camera.rays.reshape(3, -1), flat, axis=1) * np.take(depth_m, flat)


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
        grasp_point=r @ m.grasp_point + trans,
        grasp_normal=r @ m.grasp_normal,
        points=points,
    )


def _no_3d(count: int, ratio: float) -> Mask3D:
    nan3 = _NAN3.copy()
    return Mask3D(False, nan3, np.full(4, np.nan), nan3.copy(), nan3.copy(), nan3.copy(), nan3.copy(), count, ratio)


def _median(a: np.ndarray) -> np.ndarray:
    """Per-row (upper) median of a (3, N) array."""
    k = a.shape[1] // 2
    return np.partition(a, k, axis=1)[:, k]


def _group_moments(p: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (G, 3) and covariance eigenvectors (G, 3, 3; columns, smallest variance first) of the column groups
    p[:, bounds[2g]:bounds[2g + 1]] of a (3, N) float64 array whose last column is padding."""
    n = (bounds[1::2] - bounds[::2])[:, None]
    mean = np.add.reduceat(p, bounds, axis=1)[:, ::2].T / n
    second = np.add.reduceat((p[:, None] * p[None]).reshape(9, -1), bounds, axis=1)[:, ::2].T / n
    cov = second.reshape(-1, 3, 3) - mean[:, :, None] * mean[:, None, :]
    return mean, np.linalg.eigh(cov)[1]


def _fit_batch(samples: Sequence[_Sample]) -> list[Mask3D]:
    """Box, centroid, normal and axis of each sample's (3, N) inliers; boxes also span the extent points."""
    if not samples:
        return []
    count = len(samples)
    sizes = np.array([s.p.shape[1] for s in samples])
    lengths = sizes + np.array([s.extent.shape[1] for s in samples])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    pad = np.zeros((3, 1), dtype=np.float32)
    cat = np.concatenate([a for s in samples for a in (s.p, s.extent)] + [pad], axis=1)  # [p0 e0 p1 e1 ... 0]
    p_ends = np.cumsum(sizes)
    p_cat = np.concatenate([s.p for s in samples] + [pad], axis=1).astype(np.float64)
    mean, vecs = _group_moments(p_cat, np.column_stack([p_ends - sizes, p_ends]).ravel())
    e0, e2 = vecs[:, :, 2], vecs[:, :, 0]
    e0 = np.where(e0[np.arange(count), np.abs(e0).argmax(axis=1)][:, None] < 0, -e0, e0)  # largest > 0
    e2 = np.where(np.einsum("gi,gi->g", e2, mean)[:, None] > 0, -e2, e2)  # box z towards the camera
    e1 = e2[:, [1, 2, 0]] * e0[:, [2, 0, 1]] - e2[:, [2, 0, 1]] * e0[:, [1, 2, 0]]  # e2 x e0
    rot = np.stack([e0, e1, e2], axis=2)  # (G, 3, 3), columns = box axes
    rot_t = rot.transpose(0, 2, 1).astype(np.float32)

    q = np.empty_like(cat)  # box coordinates, sample by sample
    q_median = np.empty((count, 3), dtype=np.float32)
    near_groups = []
    for g, s in enumerate(samples):
        qg = np.matmul(rot_t[g], cat[:, starts[g] : ends[g]], out=q[:, starts[g] : ends[g]])
        q_median[g] = _median(qg[:, : sizes[g]])
        d = qg[:, : sizes[g]] - q_median[g][:, None]
        k = min(sizes[g], max(_NORMAL_MIN, min(_NORMAL_MAX, int(sizes[g] * _NORMAL_FRACTION))))
        near_groups.append(s.p[:, np.argpartition(np.einsum("ij,ij->j", d, d), k - 1)[:k]] if k < sizes[g] else s.p)
    lo = np.minimum.reduceat(q[:, :-1], starts, axis=1).T.astype(np.float64)
    hi = np.maximum.reduceat(q[:, :-1], starts, axis=1).T.astype(np.float64)
    near_sizes = np.array([a.shape[1] for a in near_groups])
    near_ends = np.cumsum(near_sizes)
    near = np.concatenate(near_groups + [pad], axis=1).astype(np.float64)
    near_mean, near_vecs = _group_moments(near, np.column_stack([near_ends - near_sizes, near_ends]).ravel())
    normals = near_vecs[:, :, 0]
    normals = np.where(np.einsum("gi,gi->g", normals, near_mean)[:, None] > 0, -normals, normals)
    positions = np.einsum("gij,gj->gi", rot, q_median)  # median along the box axes: on flat surfaces
    centers = np.einsum("gij,gj->gi", rot, (lo + hi) / 2)
    orientations = _quaternions(rot)
    return [
        Mask3D(
            valid=True,
            position=positions[g],
            orientation=orientations[g],
            size=hi[g] - lo[g],
            box_center=centers[g],
            normal=normals[g],
            axis=e0[g],
            point_count=s.count,
            valid_ratio=s.ratio,
            grasp_point=s.grasp.point,
            grasp_normal=s.grasp.normal,
            grasp_pixel=s.grasp.pixel,
            points=s.points,
        )
        for g, s in enumerate(samples)
    ]


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix."""
    return _quaternions(np.asarray(r, dtype=np.float64)[None])[0]


def _quaternions(r: np.ndarray) -> np.ndarray:
    """(G, 4) quaternions (x, y, z, w), w >= 0, of (G, 3, 3) rotations."""
    q = Rotation.from_matrix(r).as_quat()
    return np.where(q[:, 3:] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w) (normalised first)."""
    return Rotation.from_quat(np.asarray(q, dtype=np.float64)).as_matrix()
