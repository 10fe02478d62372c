"""A mask plus registered depth -> the 3D box, centroid, surface normal and grasp point of what it shows.

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
from semsam_ros.geometry.frame import box_frames, cross_rows, sample_normals
from semsam_ros.geometry.grasp import face_normals, first_per_group, interior_pixels
from semsam_ros.geometry.grids import stack_grids
from semsam_ros.geometry.inliers import boundary_pixels, full_resolution_inliers, surface_inliers
from semsam_ros.types import mask_bbox

DEFAULT_MIN_POINTS = 30
DEFAULT_MAX_POINTS = 1024
DEFAULT_DEPTH_JUMP = 0.05
DEFAULT_KEEP_FRACTION = 0.25
MIN_EXTENT = 0.001  # m, added to each extent when comparing box volumes (flat parts have none across)
PRINCIPAL_VOLUME = 0.8  # the points' principal axes make the box when its volume is below this share of the other
_NAN3 = np.full(3, np.nan)


@dataclass
class Mask3D:
    """3D description of one mask; every array is NaN when ``valid`` is False ("no 3D").

    position: robust centroid, the median of the inlier points along each of their principal axes (on flat
      visible surfaces).
    orientation: quaternion (x, y, z, w) of the oriented box (the object's box: its axes follow the faces, see
      ``geometry.frame``); its columns are the box axes ordered by extent, x the longest (x = ``axis``), z the
      shortest (pointing towards the camera).
    size: box extents along its own x, y, z; box_center: the box centre (differs from ``position`` for
      asymmetric shapes).
    normal: unit surface normal at the centroid, pointing towards the camera.
    axis: unit axis of the box's longest side (a line; its sign is fixed so that its largest component is positive).
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
    return _masks_to_3d([mask], [bbox], [None], depth_m, camera, options)[0]


def segments_to_3d(
    segments: Sequence[Any], depth_m: np.ndarray, camera: CameraModel, **options: Any
) -> list[Mask3D]:
    """``mask_to_3d`` for each Segment (its ``mask``, ``bbox`` and ``area``), the fits batched; same keyword
    options."""
    return _masks_to_3d([s.mask for s in segments], [s.bbox for s in segments], [s.area for s in segments], depth_m,
                        camera, _Options(**options))


class _Options(NamedTuple):
    min_points: int = DEFAULT_MIN_POINTS
    max_points: int | None = DEFAULT_MAX_POINTS
    depth_jump: float = DEFAULT_DEPTH_JUMP
    keep_fraction: float = DEFAULT_KEEP_FRACTION
    return_points: bool = False


def _masks_to_3d(
    masks: Sequence[np.ndarray], bboxes: Sequence[Sequence[int] | None], areas: Sequence[int | None],
    depth_m: np.ndarray, camera: CameraModel, options: _Options,
) -> list[Mask3D]:
    """Crop and count every mask, then sample, reject outliers and fit all of them at once (per-mask numpy calls
    would dominate: the grids share one canvas, the fits one batch)."""
    depth_m = np.asarray(depth_m)
    if depth_m.dtype.kind != "f":
        raise ValueError(f"depth_m must be floating-point metres, got {depth_m.dtype}: convert with depth_to_meters")
    if depth_m.shape != (camera.height, camera.width):
        raise ValueError(
            f"depth {depth_m.shape[::-1]} and camera ({camera.width}, {camera.height}) must have the same size: "
            "depth must be registered to the image, nothing is resized"
        )
    depth_m = np.ascontiguousarray(depth_m)
    valid = depth_m > 0
    valid &= depth_m < np.inf  # NaN fails both
    if camera.ray_valid is not None:
        valid &= camera.ray_valid
    results: list[Mask3D | None] = [None] * len(masks)
    chosen: list[tuple[int, np.ndarray, tuple[int, int, int, int], int, np.ndarray, int, float]] = []
    for i, (mask, bbox, area) in enumerate(zip(masks, bboxes, areas)):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth_m.shape:
            raise ValueError(
                f"mask {mask.shape[::-1]} and depth {depth_m.shape[::-1]} must have the same size: depth must be "
                "registered to the image, nothing is resized"
            )
        x0, y0, x1, y1 = mask_bbox(mask) if bbox is None else (int(b) for b in bbox)
        m = mask[y0:y1, x0:x1]
        area = int(np.count_nonzero(m)) if area is None else int(area)
        if area == 0:
            results[i] = _no_3d(0, 0.0)
            continue
        sel = m & valid[y0:y1, x0:x1]
        count = int(np.count_nonzero(sel))
        if count < max(options.min_points, 4):
            results[i] = _no_3d(count, count / area)
            continue
        step = 1 if options.max_points is None else max(1, math.ceil(math.sqrt(count / options.max_points)))
        chosen.append((i, mask, (x0, y0, x1, y1), step, sel, count, count / area))
    while chosen:
        fitted = _describe(chosen, depth_m, camera, options)
        if all(f is not None for f in fitted):
            for c, f in zip(chosen, fitted):
                results[c[0]] = f
            break
        for c, f in zip(chosen, fitted):  # too few inliers: no 3D; the others do not depend on them
            if f is None:
                results[c[0]] = _no_3d(c[5], c[6])
        chosen = [c for c, f in zip(chosen, fitted) if f is not None]
    return results  # type: ignore[return-value]


def _describe(chosen: Sequence[tuple], depth_m: np.ndarray, camera: CameraModel,
              options: _Options) -> list[Mask3D | None]:
    """The 3D of each chosen mask (``_masks_to_3d``), None where fewer than 4 inliers remain."""
    count = len(chosen)
    grids = stack_grids([c[1] for c in chosen], [c[2] for c in chosen], [c[3] for c in chosen],
                        [c[4] for c in chosen], depth_m)
    jump = options.depth_jump * grids.steps
    inliers = surface_inliers(grids.mask, grids.valid, grids.z, np.where(grids.row_group >= 0, jump[grids.row_group],
                              1.0), options.keep_fraction, grids.row_group, count)
    canvas_height, canvas_width = inliers.shape
    canvas_index = np.flatnonzero(inliers)  # grouped by grid, each in its own row-major order
    rows = canvas_index // canvas_width
    cols = canvas_index - rows * canvas_width
    # a grid's rows end at the next grid's
    sizes = np.diff(np.searchsorted(canvas_index, np.append(grids.offsets, canvas_height) * canvas_width))
    if sizes.min() < 4:
        return [None if n < 4 else _NOT_DONE for n in sizes]
    group = np.repeat(np.arange(count), sizes)
    starts = np.cumsum(sizes) - sizes
    width = grids.width
    flat = np.take(grids.row_image, rows) * width + np.repeat(grids.x0 - grids.steps, sizes) + \
        cols * np.repeat(grids.steps, sizes)
    depth = depth_m.reshape(-1)
    rays = camera.rays.reshape(3, -1)
    p = np.take(rays, flat, axis=1) * np.take(depth, flat)  # the inliers on the step grids
    if grids.steps.max() > 1:  # the boundary pixels restore the extents the grids miss
        extent, extent_group = boundary_pixels(inliers, grids, depth, jump)
    else:
        extent, extent_group = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    e = np.take(rays, extent, axis=1) * np.take(depth, extent)
    grasp, interior = interior_pixels(grids, rows, cols, group, starts)

    pad = np.zeros((3, 1), dtype=np.float64)
    mean, covariance = _group_moments(np.concatenate([p, pad], axis=1, dtype=np.float64),
                                      np.column_stack([starts, starts + sizes]).ravel())
    principal = np.linalg.eigh(covariance)[1][:, :, ::-1]  # the points' principal axes, largest spread first
    principal_t = principal.transpose(0, 2, 1).astype(np.float32)
    q3_principal = _in_frames(principal_t, p, range(count), starts, sizes, np.empty((3, p.shape[1]), np.float32))
    q_median = np.stack([_median(q3_principal[:, start : start + size]) for start, size in zip(starts, sizes)])
    d = q3_principal - np.repeat(q_median.T, sizes, axis=1)
    nearest = first_per_group(np.einsum("ij,ij->j", d, d), group, starts)  # the inlier nearest the centroid
    targets = np.concatenate([grasp, nearest])  # the grasp pixel, then the centroid's, of every mask
    pixels = np.take(flat, targets)
    normals = face_normals(grids, rays, depth, pixels, np.tile(np.arange(count), 2), np.take(interior, targets))
    grasp_pixels, grasp_normals = pixels[:count], normals[:count]
    first = np.where(np.isnan(grasp_normals), principal[:, :, 2], grasp_normals)  # the grasp point's face normal
    surface, outline = box_frames(first, p, sample_normals(p, canvas_index, inliers.shape), mean, covariance, sizes,
                                  starts)
    candidates = np.stack([surface, outline, principal], axis=1)  # (G, 3 candidates, 3, 3)
    candidates_t = candidates.transpose(0, 1, 3, 2).reshape(count, 9, 3).astype(np.float32)
    q = np.empty((9, p.shape[1]), dtype=np.float32)  # the points in each candidate frame
    q[6:] = q3_principal
    _in_frames(candidates_t[:, :6], p, range(count), starts, sizes, q[:6])
    lo = np.minimum.reduceat(q, starts, axis=1).T.astype(np.float64)
    hi = np.maximum.reduceat(q, starts, axis=1).T.astype(np.float64)
    if extent.size:
        ext_sizes = np.bincount(extent_group, minlength=count)  # extent_group is sorted
        ext_groups = np.flatnonzero(ext_sizes)
        ext_sizes = np.take(ext_sizes, ext_groups)
        ext_starts = np.cumsum(ext_sizes) - ext_sizes
        qe = _in_frames(candidates_t, e, ext_groups, ext_starts, ext_sizes, np.empty((9, extent.size), np.float32))
        lo[ext_groups] = np.minimum(lo[ext_groups], np.minimum.reduceat(qe, ext_starts, axis=1).T)
        hi[ext_groups] = np.maximum(hi[ext_groups], np.maximum.reduceat(qe, ext_starts, axis=1).T)
    # of the two surface frames the one with the smaller box; the points' principal axes when their box is much
    # smaller still (curved parts whose normals do not form a right-angled frame)
    volume = np.prod((hi - lo).reshape(count, 3, 3) + MIN_EXTENT, axis=2)
    pick = (volume[:, 1] < volume[:, 0]).astype(np.intp)
    pick = np.where(volume[:, 2] < PRINCIPAL_VOLUME * volume[np.arange(count), pick], 2, pick)
    frames = candidates[np.arange(count), pick]
    box = 3 * pick[:, None] + np.arange(3)
    lo, hi = np.take_along_axis(lo, box, axis=1), np.take_along_axis(hi, box, axis=1)
    grasp_points = np.take(rays, grasp_pixels, axis=1).astype(np.float64).T * \
        np.take(depth, grasp_pixels).astype(np.float64)[:, None]
    positions = np.einsum("gij,gj->gi", principal, q_median)  # median along the principal axes: on flat surfaces
    centers = np.einsum("gij,gj->gi", frames, (lo + hi) / 2)
    rot, size = _box_axes(frames, hi - lo, mean)
    orientations = _quaternions(rot)
    grasp_xy = np.stack([grasp_pixels % width, grasp_pixels // width], axis=1).astype(np.float64)
    axes = rot[:, :, 0].copy()
    out = []
    per_mask = zip(positions, orientations, size, centers, normals[count:], axes, grasp_points, grasp_normals,
                   grasp_xy)
    for g, ((_, _, (x0, y0, x1, y1), step, sel, n, ratio), fields) in enumerate(zip(chosen, per_mask)):
        points = None
        if options.return_points:  # never used for the statistics: they do not depend on it
            z = depth_m[y0:y1, x0:x1]
            full = full_resolution_inliers(sel, z, grids.grid(inliers, g), step,
                                           options.depth_jump * step * math.sqrt(2))
            points = (camera.rays[:, y0:y1, x0:x1][:, full] * z[full]).T.copy()
        position, orientation, box_size, center, normal, axis, grasp_point, grasp_normal, grasp_pixel = fields
        out.append(Mask3D(valid=True, position=position, orientation=orientation, size=box_size, box_center=center,
                          normal=normal, axis=axis, point_count=n, valid_ratio=ratio, grasp_point=grasp_point,
                          grasp_normal=grasp_normal, grasp_pixel=grasp_pixel, points=points))
    return out


_NOT_DONE = object()  # a mask with enough inliers, described when the canvas is rebuilt without the others


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


def _in_frames(frames_t: np.ndarray, points: np.ndarray, groups: Sequence[int], starts: Sequence[int],
               sizes: Sequence[int], out: np.ndarray) -> np.ndarray:
    """``out``, holding each run of columns of ``points`` (3, N) (``sizes[i]`` of them from ``starts[i]``) in the
    frame whose rows are ``frames_t[groups[i]]`` (G, k, 3)."""
    for g, start, size in zip(groups, starts, sizes):
        np.matmul(frames_t[g], points[:, start : start + size], out=out[:, start : start + size])
    return out


def _median(a: np.ndarray) -> np.ndarray:
    """Per-row (upper) median of a (3, N) array."""
    k = a.shape[1] // 2
    return np.partition(a, k, axis=1)[:, k]


def _box_axes(frames: np.ndarray, extent: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box rotations (G, 3, 3) and sizes (G, 3) of ``frames`` with ``extent`` along their columns: columns
    ordered by extent (x the longest), z towards the camera (the points' ``mean`` is in front of it), x's largest
    component positive, y = z x x."""
    order = np.argsort(-extent, axis=1, kind="stable")
    rot = np.take_along_axis(frames, order[:, None, :], axis=2)
    x, z = rot[:, :, 0], rot[:, :, 2]
    x = np.where(np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1) < 0, -x, x)
    z = np.where(np.einsum("gi,gi->g", z, mean)[:, None] > 0, -z, z)
    return np.stack([x, cross_rows(z, x), z], axis=2), np.take_along_axis(extent, order, axis=1)


def _group_moments(p: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (G, 3) and covariance (G, 3, 3) of the column groups p[:, bounds[2g]:bounds[2g + 1]] of a (3, N)
    float64 array whose last column is padding."""
    n = (bounds[1::2] - bounds[::2])[:, None]
    mean = np.add.reduceat(p, bounds, axis=1)[:, ::2].T / n
    second = np.add.reduceat((p[:, None] * p[None]).reshape(9, -1), bounds, axis=1)[:, ::2].T / n
    return mean, second.reshape(-1, 3, 3) - mean[:, :, None] * mean[:, None, :]


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix."""
    return _quaternions(np.asarray(r, dtype=np.float64)[None])[0]


def _quaternions(r: np.ndarray) -> np.ndarray:
    """(G, 4) quaternions (x, y, z, w), w >= 0, of (G, 3, 3) rotations (closed form, vectorised; per matrix the
    numerically best of the four branches, the largest of 1 + trace and 1 + 2 r_ii - trace)."""
    m = r.reshape(-1, 9)
    trace = m[:, 0] + m[:, 4] + m[:, 8]
    big = np.column_stack([1 + 2 * m[:, 0] - trace, 1 + 2 * m[:, 4] - trace, 1 + 2 * m[:, 8] - trace, 1 + trace])
    pick = big.argmax(axis=1)
    a, b, c = m[:, 7] - m[:, 5], m[:, 2] - m[:, 6], m[:, 3] - m[:, 1]  # branch i holds 4 q_i q (w: 1 + trace)
    s01, s02, s12 = m[:, 1] + m[:, 3], m[:, 2] + m[:, 6], m[:, 5] + m[:, 7]  # 4 x y, 4 x z, 4 y z
    branches = np.stack([np.column_stack([big[:, 0], s01, s02, a]), np.column_stack([s01, big[:, 1], s12, b]),
                         np.column_stack([s02, s12, big[:, 2], c]), np.column_stack([a, b, c, big[:, 3]])])
    q = branches[pick, np.arange(m.shape[0])]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, 3:] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w) (normalised first)."""
    return Rotation.from_quat(np.asarray(q, dtype=np.float64)).as_matrix()
