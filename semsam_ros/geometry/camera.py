"""Pinhole camera with lens distortion, as described by sensor_msgs/CameraInfo.

Pixel (u, v) = (column, row); integer coordinates are pixel centres (the ROS/OpenCV convention, so pixel (0, 0)
covers u in [-0.5, 0.5)). Normalised coordinates (x, y) = (X/Z, Y/Z) in the camera optical frame (x right,
y down, z forward). Supported distortion models: ``plumb_bob`` and ``rational_polynomial`` (radial-tangential,
up to 8 coefficients k1 k2 p1 p2 k3 k4 k5 k6) and ``equidistant`` (fisheye, k1..k4). Any other model with
non-zero coefficients is ignored with a warning.

Nothing here works on the whole image unless asked: clicks undistort or project only their own points, the ray map
of every pixel (for 3D) is built once per camera, in row blocks, and :meth:`CameraModel.from_camera_info` returns
the same model for the same CameraInfo content, so its maps are built once per camera, not once per frame.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from semsam_ros.limits import InputRejected, check_pixels
from semsam_ros.types import DEFAULT_MAX_IMAGE_PIXELS

RADTAN_MODELS = ("plumb_bob", "rational_polynomial")
EQUIDISTANT = "equidistant"
_NEWTON_ITERATIONS = 20
_CONVERGED = 1e-9  # residual in normalised units (~1e-6 px at f = 1000 px)
_ROW_BLOCK = 256  # rows undistorted at once when the ray map is built (bounds its temporary memory)
_CACHE_SIZE = 8  # cameras remembered by from_camera_info
_cache: OrderedDict[tuple, CameraModel] = OrderedDict()
_cache_lock = threading.Lock()


class CameraModel:
    """Intrinsics ``k`` (3x3), distortion ``d`` and image size; back-projects pixels and projects points."""

    def __init__(
        self,
        k: Any,
        width: int,
        height: int,
        d: Sequence[float] = (),
        distortion_model: str = "plumb_bob",
    ) -> None:
        self.k = np.asarray(k, dtype=np.float64).ravel()
        if self.k.size != 9:
            raise InputRejected(f"K must have 9 values, got {self.k.size}", "bad_camera_info")
        self.k = self.k.reshape(3, 3)
        if not (np.isfinite(self.k).all() and self.k[0, 0] > 0 and self.k[1, 1] > 0 and self.k[2, 2] == 1.0
                and self.k[1, 0] == 0 and self.k[2, 0] == 0 and self.k[2, 1] == 0):
            raise InputRejected(f"K must be finite, upper triangular with fx, fy > 0 and K[2][2] == 1, got "
                                f"{self.k.tolist()}", "bad_camera_info")
        self.width = int(width)
        self.height = int(height)
        if self.width <= 0 or self.height <= 0:
            raise InputRejected(f"image size must be positive, got {self.width}x{self.height}", "bad_camera_info")
        self.d = np.asarray(d, dtype=np.float64).ravel()
        if not np.isfinite(self.d).all():
            raise InputRejected(f"distortion coefficients must be finite, got {self.d.tolist()}", "bad_camera_info")
        self.distortion_model = distortion_model
        self._coeffs = self._distortion_coefficients()
        self._k_inv = np.linalg.inv(self.k)
        self._rays: np.ndarray | None = None
        self._ray_valid: np.ndarray | None = None
        self._max_radius = float("nan")

    @classmethod
    def from_camera_info(
        cls, msg: Any, rectified: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> "CameraModel":
        """From a sensor_msgs/CameraInfo (any object with k, d, distortion_model, width, height; p if rectified).

        ``rectified=True`` is for images that were already undistorted (``image_rect``): the model is then
        P[:3, :3] without distortion, as image_proc defines it. A camera larger than ``max_pixels`` (no image of
        it would be accepted) or with malformed values is an InputRejected. The same content gives the same
        (cached) model, whose pixel maps are then built only once.
        """
        try:
            width, height, model = int(msg.width), int(msg.height), str(msg.distortion_model)
            matrix = np.asarray(msg.p if rectified else msg.k, dtype=np.float64).ravel()
            d = () if rectified else tuple(np.asarray(msg.d, dtype=np.float64).ravel())
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputRejected(f"malformed CameraInfo: {exc}", "bad_camera_info") from None
        check_pixels(width, height, "camera", max_pixels)
        if rectified:
            if matrix.size != 12:
                raise InputRejected(f"P must have 12 values, got {matrix.size}", "bad_camera_info")
            matrix = matrix.reshape(3, 4)[:, :3].ravel()
        key = (tuple(matrix), d, model, width, height)
        with _cache_lock:
            camera = _cache.get(key)
            if camera is not None:
                _cache.move_to_end(key)
                return camera
        camera = cls(matrix, width, height, d, model)
        with _cache_lock:
            _cache[key] = camera
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return camera

    @property
    def is_distorted(self) -> bool:
        """Whether pixels are undistorted on back-projection (a supported model with a non-zero coefficient)."""
        return self._coeffs is not None

    def _distortion_coefficients(self) -> np.ndarray | None:
        """The coefficients this model applies (8 radtan or 4 equidistant), or None for no distortion."""
        if not np.any(self.d):
            return None
        if self.distortion_model in RADTAN_MODELS:
            coeffs = np.zeros(8)
            coeffs[: min(8, self.d.size)] = self.d[:8]
            if np.any(self.d[8:]):
                warnings.warn(
                    f"{self.distortion_model}: coefficients beyond k6 (thin prism, tilt) are ignored",
                    stacklevel=3,
                )
            return coeffs
        if self.distortion_model == EQUIDISTANT:
            coeffs = np.zeros(4)
            coeffs[: min(4, self.d.size)] = self.d[:4]
            return coeffs
        warnings.warn(
            f"distortion model {self.distortion_model!r} is not supported (plumb_bob, rational_polynomial, "
            "equidistant are): its coefficients are ignored and pixels are treated as undistorted",
            stacklevel=3,
        )
        return None

    # -- normalised coordinates <-> distorted normalised coordinates -------------------------------------------

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distorted normalised coordinates of undistorted ones (identity without distortion)."""
        if self._coeffs is None:
            return x, y
        if self.distortion_model == EQUIDISTANT:
            r = np.hypot(x, y)
            theta = np.arctan(r)
            scale = np.where(r > 1e-12, _equidistant_theta_d(theta, self._coeffs) / np.maximum(r, 1e-12), 1.0)
            return x * scale, y * scale
        return _radtan(x, y, self._coeffs)[:2]

    def undistort(self, xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undistorted normalised coordinates (Newton's method) and whether each one converged to a valid ray."""
        if self._coeffs is None:
            return xd, yd, np.ones(np.shape(xd), dtype=bool)
        if self.distortion_model == EQUIDISTANT:
            return _undistort_equidistant(xd, yd, self._coeffs)
        return _undistort_radtan(xd, yd, self._coeffs)

    # -- pixels <-> rays ---------------------------------------------------------------------------------------

    @property
    def rays(self) -> np.ndarray:
        """(3, H, W) float32 ray (x, y, 1) of every pixel: a pixel with depth z sees the point z * ray."""
        if self._rays is None:
            self._build_rays()
        return self._rays

    @property
    def ray_valid(self) -> np.ndarray | None:
        """(H, W) bool, False where undistortion found no ray (outside the lens model); None when all are valid."""
        if self._rays is None:
            self._build_rays()
        return self._ray_valid

    def pixel_rays(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) rays (x, y, 1) of (N, 2) pixels (u, v), undistorted point by point, and whether each is valid
        (invalid rays are (0, 0, 1)). Costs only the points asked for, not the image."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        ki = self._k_inv
        x, y, ok = self.undistort(ki[0, 0] * uv[:, 0] + ki[0, 1] * uv[:, 1] + ki[0, 2], ki[1, 1] * uv[:, 1] + ki[1, 2])
        ok = ok & np.isfinite(x) & np.isfinite(y)
        return np.stack([np.where(ok, x, 0.0), np.where(ok, y, 0.0), np.ones_like(x)], axis=-1), ok

    def _build_rays(self) -> None:
        rays = np.ones((3, self.height, self.width), dtype=np.float32)
        valid = np.ones((self.height, self.width), dtype=bool)
        u = np.arange(self.width, dtype=np.float64)
        for top in range(0, self.height, _ROW_BLOCK):
            rows = np.arange(top, min(top + _ROW_BLOCK, self.height), dtype=np.float64)
            v, uu = np.meshgrid(rows, u, indexing="ij")
            block, ok = self.pixel_rays(np.stack([uu.ravel(), v.ravel()], axis=-1))
            rays[:2, top : top + rows.size] = block[:, :2].T.reshape(2, rows.size, self.width)
            valid[top : top + rows.size] = ok.reshape(rows.size, self.width)
        self._rays = rays
        self._ray_valid = None if valid.all() else valid

    def _border_radius(self) -> float:
        """Largest normalised radius of a valid ray on the image border (where the field of view ends: a
        distortion that folds over makes the pixels beyond its fold, at the corners, invalid)."""
        w, h = self.width, self.height
        u, v = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
        border = np.concatenate([
            np.stack([u, np.zeros(w)], -1), np.stack([u, np.full(w, h - 1.0)], -1),
            np.stack([np.zeros(h), v], -1), np.stack([np.full(h, w - 1.0), v], -1),
        ])
        if self._coeffs is not None:  # a fold can end inside the image: add its diagonals
            t = np.linspace(0.0, 1.0, max(w, h))
            border = np.concatenate([border, np.stack([t * (w - 1), t * (h - 1)], -1),
                                     np.stack([t * (w - 1), (1 - t) * (h - 1)], -1)])
        rays, ok = self.pixel_rays(border)
        return float(np.hypot(rays[ok, 0], rays[ok, 1]).max()) if ok.any() else 0.0

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) pixel (u, v) of (N, 3) camera-frame points, distortion applied; NaN for z <= 0. No bounds check."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        z = np.where(p[:, 2] > 0, p[:, 2], np.nan)
        xd, yd = self.distort(p[:, 0] / z, p[:, 1] / z)
        k = self.k
        return np.stack([k[0, 0] * xd + k[0, 1] * yd + k[0, 2], k[1, 1] * yd + k[1, 2]], axis=-1)

    @property
    def max_radius(self) -> float:
        """Largest normalised radius sqrt(x^2 + y^2) of a valid pixel ray (the field of view of the image),
        from the border and diagonals only (computed once)."""
        if np.isnan(self._max_radius):
            self._max_radius = self._border_radius()
        return self._max_radius


def project_point(point_xyz: Sequence[float], camera: CameraModel) -> tuple[float, float]:
    """Pixel (u, v) of a point in the camera optical frame; ValueError when behind the camera or off the image.

    A point projects into the image when its pixel rounds to a pixel of it: -0.5 <= u < width - 0.5 (v alike).
    """
    p = np.asarray(point_xyz, dtype=np.float64).ravel()
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise ValueError(f"point must be 3 finite numbers, got {point_xyz!r}")
    if p[2] <= 0:
        raise ValueError(f"point {p.tolist()} is behind the camera (z = {p[2]:.3f} m <= 0 in the optical frame)")
    if np.hypot(p[0], p[1]) / p[2] > camera.max_radius * (1 + 1e-6):
        raise ValueError(f"point {p.tolist()} is outside the camera's field of view")
    u, v = camera.project(p)[0]
    if not (-0.5 <= u < camera.width - 0.5 and -0.5 <= v < camera.height - 0.5):
        raise ValueError(f"point {p.tolist()} projects to ({u:.1f}, {v:.1f}), outside the "
                         f"{camera.width}x{camera.height} image")
    return float(u), float(v)


def _radtan(
    x: np.ndarray, y: np.ndarray, c: np.ndarray, jacobian: bool = False
) -> tuple[np.ndarray, ...]:
    """Radial-tangential (rational) distortion of normalised points; with its 2x2 Jacobian when asked."""
    k1, k2, p1, p2, k3, k4, k5, k6 = c
    r2 = x * x + y * y
    a = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    b = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    radial = a / b
    xy = x * y
    xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
    if not jacobian:
        return xd, yd
    da = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    db = k4 + r2 * (2 * k5 + 3 * k6 * r2)
    dradial = (da * b - a * db) / (b * b)  # d radial / d r2
    j11 = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
    j12 = 2 * xy * dradial + 2 * p1 * x + 2 * p2 * y
    j22 = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
    return xd, yd, j11, j12, j22


def _undistort_radtan(
    xd: np.ndarray, yd: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert ``_radtan`` by Newton's method from x = xd; ok where it converged with a positive Jacobian."""
    x = np.array(xd, dtype=np.float64).ravel()
    y = np.array(yd, dtype=np.float64).ravel()
    txd, tyd = x.copy(), y.copy()
    active = np.arange(x.size)  # pixels still iterating
    for _ in range(_NEWTON_ITERATIONS):
        xa, ya = x[active], y[active]
        fx, fy, j11, j12, j22 = _radtan(xa, ya, c, jacobian=True)
        ex, ey = fx - txd[active], fy - tyd[active]
        moving = np.abs(ex) + np.abs(ey) >= 0.1 * _CONVERGED
        active, ex, ey = active[moving], ex[moving], ey[moving]
        if active.size == 0:
            break
        j11, j12, j22 = j11[moving], j12[moving], j22[moving]
        det = j11 * j22 - j12 * j12
        det = np.where(np.abs(det) > 1e-12, det, 1e-12)
        x[active] = xa[moving] - (j22 * ex - j12 * ey) / det
        y[active] = ya[moving] - (j11 * ey - j12 * ex) / det
    fx, fy, j11, j12, j22 = _radtan(x, y, c, jacobian=True)
    ok = (np.hypot(fx - txd, fy - tyd) < _CONVERGED) & (j11 * j22 - j12 * j12 > 0) & (j11 > 0)
    shape = np.shape(xd)
    return x.reshape(shape), y.reshape(shape), ok.reshape(shape)


def _equidistant_theta_d(theta: np.ndarray, c: np.ndarray) -> np.ndarray:
    t2 = theta * theta
    return theta * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))


def _undistort_equidistant(
    xd: np.ndarray, yd: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert the equidistant model: solve theta_d(theta) by Newton, then x = xd * tan(theta) / theta_d."""
    theta_d = np.hypot(xd, yd)
    theta = theta_d.copy()
    for _ in range(_NEWTON_ITERATIONS):
        t2 = theta * theta
        deriv = 1 + t2 * (3 * c[0] + t2 * (5 * c[1] + t2 * (7 * c[2] + t2 * 9 * c[3])))
        error = _equidistant_theta_d(theta, c) - theta_d
        if np.all(np.abs(error) < 0.1 * _CONVERGED):
            break
        theta -= error / np.where(np.abs(deriv) > 1e-12, deriv, 1e-12)
    t2 = theta * theta
    deriv = 1 + t2 * (3 * c[0] + t2 * (5 * c[1] + t2 * (7 * c[2] + t2 * 9 * c[3])))
    ok = (np.abs(_equidistant_theta_d(theta, c) - theta_d) < _CONVERGED) & (theta >= 0) & (theta < np.pi / 2 - 1e-3)
    ok &= deriv > 0
    small = theta_d < 1e-12
    scale = np.where(small, 1.0, np.tan(np.where(ok, theta, 0.0)) / np.where(small, 1.0, theta_d))
    return xd * scale, yd * scale, ok
