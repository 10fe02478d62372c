"""Where a track should be now: the image motion between two frames (phase correlation on a downscaled grey
frame, pure numpy FFT), a mask's most interior point, and a 3D anchor in a fixed frame re-projected into a new
camera pose."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

MOTION_SIDE = 128  # long side of the grey frame the image motion is measured on, pixels
MIN_PEAK = 0.03  # a phase-correlation peak below this is noise: no motion is reported
INTERIOR_SIDE = 32  # long side of the grid the most interior point is searched on


class MotionEstimator:
    """Whole-image translation between consecutive frames (the camera's pan, a jerk of many pixels)."""

    def __init__(self, side: int = MOTION_SIDE) -> None:
        self.side = side
        self._spectrum: np.ndarray | None = None
        self._window = np.zeros((0, 0), np.float32)

    def reset(self) -> None:
        self._spectrum = None

    def update(self, rgb: np.ndarray) -> tuple[float, float]:
        """(dx, dy) in pixels by which the content of ``rgb`` moved since the previous frame given; (0, 0) for the
        first frame, after a size change, or when the correlation has no clear peak."""
        step = max(1, -(-max(rgb.shape[:2]) // self.side))
        small = rgb[::step, ::step]
        if small.ndim == 3:  # the channels' sum, one channel at a time (a strided astype of all three is slow)
            grey = small[..., 0].astype(np.float32)
            for channel in range(1, small.shape[2]):
                grey += small[..., channel]
        else:
            grey = small.astype(np.float32)
        grey -= grey.mean()
        if self._window.shape != grey.shape:
            self._window = np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1])).astype(np.float32)
        grey *= self._window
        spectrum = np.fft.rfft2(grey)
        previous, self._spectrum = self._spectrum, spectrum
        if previous is None or previous.shape != spectrum.shape:
            return 0.0, 0.0
        cross = spectrum * np.conj(previous)
        cross /= np.maximum(np.abs(cross), 1e-9)
        surface = np.fft.irfft2(cross, s=grey.shape)
        row, col = np.unravel_index(int(np.argmax(surface)), surface.shape)
        if surface[row, col] < MIN_PEAK:
            return 0.0, 0.0
        dy = _refine(surface[:, col], row)
        dx = _refine(surface[row, :], col)
        h, w = surface.shape
        dy = dy - h if dy > h / 2 else dy
        dx = dx - w if dx > w / 2 else dx
        return float(dx * step), float(dy * step)


def _refine(line: np.ndarray, peak: int) -> float:
    """Sub-pixel peak position along a (circular) line by a parabola through the peak and its neighbours."""
    left, centre, right = line[peak - 1], line[peak], line[(peak + 1) % line.size]
    curvature = left - 2 * centre + right
    return peak + (0.5 * (left - right) / curvature if curvature < 0 else 0.0)


def interior_point(crop: np.ndarray, centroid: tuple[float, float]) -> tuple[float, float]:
    """(x, y) within a non-empty bool mask crop of a pixel well inside it: its ``centroid`` (crop coordinates) when
    the centroid and four pixels a quarter radius around it are inside (a convex blob), else its most interior
    pixel (inside a ring, never in its hole)."""
    cx, cy = int(round(centroid[0])), int(round(centroid[1]))
    reach = max(2, int(0.25 * np.sqrt(np.count_nonzero(crop) / np.pi)))
    probes = [(cx, cy), (cx - reach, cy), (cx + reach, cy), (cx, cy - reach), (cx, cy + reach)]
    if all(0 <= x < crop.shape[1] and 0 <= y < crop.shape[0] and crop[y, x] for x, y in probes):
        return float(cx), float(cy)
    step = max(1, -(-max(crop.shape) // INTERIOR_SIDE))
    inside = ndimage.distance_transform_edt(np.pad(crop[::step, ::step], 1))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(inside), inside.shape)
    return float(col * step), float(row * step)


def anchor_from_depth(pixel: tuple[float, float], depth_m: np.ndarray, camera: Any, pose: np.ndarray
                      ) -> np.ndarray | None:
    """The 3D point (fixed frame) seen at ``pixel``: median valid depth of a 5x5 window there, back-projected
    through ``camera`` (geometry.CameraModel) and moved by ``pose`` (4x4 camera -> fixed frame). None without
    valid depth."""
    u, v = int(round(pixel[0])), int(round(pixel[1]))
    window = depth_m[max(v - 2, 0): v + 3, max(u - 2, 0): u + 3]
    valid = window[np.isfinite(window) & (window > 0)]
    if valid.size == 0:
        return None
    xd, yd, _ = np.linalg.solve(camera.k, [pixel[0], pixel[1], 1.0])
    x, y, ok = camera.undistort(np.array([xd]), np.array([yd]))
    if not ok[0]:
        return None
    point = np.array([x[0], y[0], 1.0]) * float(np.median(valid))
    return pose[:3, :3] @ point + pose[:3, 3]


def project_anchor(anchor: np.ndarray, camera: Any, pose: np.ndarray) -> tuple[float, float] | None:
    """Pixel (x, y) of a fixed-frame point in the camera at ``pose`` (4x4 camera -> fixed); None when behind it."""
    point = pose[:3, :3].T @ (anchor - pose[:3, 3])
    if point[2] <= 0:
        return None
    u, v = camera.project(point)[0]
    return float(u), float(v)
