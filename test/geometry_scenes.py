"""Synthetic depth scenes of exactly known geometry, ray cast in numpy (test helper, no code under test used).

Rays are (x, y, 1) per pixel in the camera optical frame, so a hit at ray parameter t has depth z = t.
Distorted cameras get their pixel rays by fixed-point undistortion (OpenCV's scheme), independent of the
Newton solver in semsam_ros.geometry.camera.
"""
from __future__ import annotations

import numpy as np

W, H = 320, 240
K = np.array([[300.0, 0.0, 160.0], [0.0, 300.0, 120.0], [0.0, 0.0, 1.0]])


def pixel_rays(k: np.ndarray = K, width: int = W, height: int = H, d: np.ndarray | None = None,
               model: str = "plumb_bob") -> np.ndarray:
    """(H, W, 3) ray (x, y, 1) through each pixel centre of a camera with distortion ``d``."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    xd = (u - k[0, 2]) / k[0, 0]
    yd = (v - k[1, 2]) / k[1, 1]
    x, y = xd.copy(), yd.copy()
    if d is not None and model == "plumb_bob":
        k1, k2, p1, p2, k3 = d
        for _ in range(200):
            r2 = x * x + y * y
            radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
            x = (xd - (2 * p1 * x * y + p2 * (r2 + 2 * x * x))) / radial
            y = (yd - (p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)) / radial
    elif d is not None and model == "equidistant":
        theta_d = np.hypot(xd, yd)
        theta = theta_d.copy()
        for _ in range(200):
            t2 = theta * theta
            theta = theta_d / (1 + d[0] * t2 + d[1] * t2**2 + d[2] * t2**3 + d[3] * t2**4)
        scale = np.where(theta_d > 0, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
        x, y = xd * scale, yd * scale
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def hit_plane(rays: np.ndarray, normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Depth where each ray meets the plane through ``point`` with ``normal``; inf when it misses."""
    denom = rays @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(np.abs(denom) > 1e-12, (point @ normal) / denom, np.inf)
    return np.where(t > 0, t, np.inf)


def hit_rectangle(rays: np.ndarray, center: np.ndarray, u: np.ndarray, v: np.ndarray, half_u: float,
                  half_v: float) -> np.ndarray:
    """Depth of a rectangle centred at ``center`` with unit edge directions u, v and half sizes; inf on a miss."""
    t = hit_plane(rays, np.cross(u, v), center)
    with np.errstate(invalid="ignore"):
        p = rays * t[..., None] - center
        inside = (np.abs(p @ u) <= half_u) & (np.abs(p @ v) <= half_v)
    return np.where(inside, t, np.inf)


def hit_box(rays: np.ndarray, center: np.ndarray, rot: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Depth of an oriented box (columns of ``rot`` = its axes, ``half`` = half extents); inf on a miss."""
    o = rot.T @ (-center)
    d = rays @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=-1)
    far = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((near <= far) & (near > 0), near, np.inf)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix."""
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def compose(*depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit among several shapes: (depth with 0 where nothing is hit, label = index of the shape or -1)."""
    stack = np.stack(depths)
    label = np.argmin(stack, axis=0)
    depth = np.min(stack, axis=0)
    label[~np.isfinite(depth)] = -1
    return np.where(np.isfinite(depth), depth, 0.0), label


MUG_CENTER = np.array([0.0, 0.0, 0.5])  # cylinder axis along y (the camera looks at the mug's side)
MUG_RADIUS, MUG_HEIGHT = 0.04, 0.10
HANDLE_CENTER = MUG_CENTER + np.array([MUG_RADIUS, 0.0, 0.0])  # torus ring in the x-y plane, sticking out at +x
HANDLE_R, HANDLE_r = 0.03, 0.007
WALL_Z = 0.8


def render_mug(rays: np.ndarray, iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Sphere-trace a capped cylinder "mug" with a torus "handle" in front of a wall at z = WALL_Z.

    Returns (depth, label) with label 0 = body, 1 = handle, 2 = wall.
    """
    dirs = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    flat = dirs.reshape(-1, 3)

    def sdfs(p: np.ndarray) -> np.ndarray:
        q = p - MUG_CENTER
        radial = np.hypot(q[:, 0], q[:, 2]) - MUG_RADIUS
        axial = np.abs(q[:, 1]) - MUG_HEIGHT / 2
        body = np.minimum(np.maximum(radial, axial), 0) + np.hypot(np.maximum(radial, 0), np.maximum(axial, 0))
        h = p - HANDLE_CENTER
        handle = np.hypot(np.hypot(h[:, 0], h[:, 1]) - HANDLE_R, h[:, 2]) - HANDLE_r
        wall = WALL_Z - p[:, 2]
        return np.stack([body, handle, wall], axis=1)

    t = np.zeros(len(flat))
    active = np.arange(len(flat))
    for _ in range(iterations):
        d = sdfs(flat[active] * t[active, None]).min(axis=1)
        t[active] += d
        active = active[d > 1e-9]
        if active.size == 0:
            break
    points = flat * t[:, None]
    dist = sdfs(points)
    label = np.argmin(dist, axis=1)
    hit = dist.min(axis=1) < 1e-6
    depth = np.where(hit, points[:, 2], 0.0)
    return depth.reshape(rays.shape[:2]), np.where(hit, label, -1).reshape(rays.shape[:2])


def hit_cylinder(rays: np.ndarray, base: np.ndarray, axis: np.ndarray, radius: float, length: float) -> np.ndarray:
    """Depth of a capped cylinder from ``base`` (centre of one cap) along the unit ``axis``; inf on a miss."""
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    o = -np.asarray(base, dtype=np.float64)
    da, oa = rays @ a, o @ a
    d_perp, o_perp = rays - da[..., None] * a, o - oa * a
    qa, qb, qc = (d_perp * d_perp).sum(-1), 2 * (d_perp @ o_perp), o_perp @ o_perp - radius**2
    with np.errstate(divide="ignore", invalid="ignore"):
        side = (-qb - np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
        along = oa + side * da
        side = np.where((along >= 0) & (along <= length) & (side > 0), side, np.inf)
        hits = [side]
        for s in (0.0, length):
            t = (s - oa) / da
            r2 = ((o_perp + t[..., None] * d_perp) ** 2).sum(-1)
            hits.append(np.where((r2 <= radius**2) & (t > 0), t, np.inf))
    t = np.nan_to_num(np.min(hits, axis=0), nan=np.inf)
    return np.where(t < 1e3, t, np.inf)  # rays (nearly) along the axis meet the side "at infinity"


def hit_annulus(rays: np.ndarray, center: np.ndarray, normal: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Depth of a flat ring (a handle seen face-on) between radii ``inner`` and ``outer``; inf on a miss."""
    t = hit_plane(rays, normal, center)
    with np.errstate(invalid="ignore"):
        r = np.linalg.norm(rays * t[..., None] - center, axis=-1)
    return np.where((r >= inner) & (r <= outer), t, np.inf)


def table_frame(elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, forward, up) of a table seen from ``elevation_deg`` above its plane, in the optical frame."""
    e = np.radians(elevation_deg)
    up = np.array([0.0, -np.cos(e), -np.sin(e)])
    forward = np.array([0.0, -np.sin(e), np.cos(e)])
    return np.cross(forward, up), forward, up


BOX_HALF = np.array([0.06, 0.035, 0.0375])  # a 12 x 7 x 7.5 cm box
CAN_RADIUS, CAN_HEIGHT = 0.04, 0.12  # an upright can


def tabletop(rays: np.ndarray, shape: str, elevation: float, distance: float, turn: float = 30.0,
             half: np.ndarray = BOX_HALF) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (float32 m) and mask of a box of half-sizes ``half`` (turned ``turn`` degrees on the table) or a
    can, centred on the optical axis at ``distance``, on a table seen from ``elevation`` degrees above its plane;
    and the object's true axes (box: its edges; can: its axis in every column)."""
    right, forward, up = table_frame(elevation)
    centre = np.array([0.0, 0.0, distance])
    if shape == "box":
        axes = np.column_stack([right, forward, up]) @ rotation([0.0, 0.0, 1.0], np.radians(turn))
        base, obj = centre - half[2] * up, hit_box(rays, centre, axes, half)
    else:
        axes = np.column_stack([up, up, up])
        base = centre - CAN_HEIGHT / 2 * up
        obj = hit_cylinder(rays, base, up, CAN_RADIUS, CAN_HEIGHT)
    depth, label = compose(obj, hit_plane(rays, up, base))
    return depth.astype(np.float32), label == 0, axes


def line_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two lines (directions, sign ignored) in degrees."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.degrees(np.arccos(min(1.0, abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b)))))
