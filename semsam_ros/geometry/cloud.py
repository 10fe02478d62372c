"""The point content of a sensor_msgs/PointCloud2 of segments, as a numpy structured array (no ROS needed).

Each point: x, y, z (float32, metres), rgb (float32 whose bits are 0x00RRGGBB, the packing RViz and PCL read),
segment_id (uint32) and level (uint8), little-endian, 24 bytes per point (3 bytes of zero padding).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from semsam_ros.geometry.mask3d import Mask3D
from semsam_ros.viz.palette import segment_colors

CLOUD_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "segment_id", "level"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "u1"],
    "offsets": [0, 4, 8, 12, 16, 20],
    "itemsize": 24,
})
"""One point of a segments cloud; ``ros.cloud`` turns these fields into sensor_msgs/PointField entries."""


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours -> (N,) float32 whose bit pattern is 0x00RRGGBB."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype("<u4").view("<f4")


def segments_cloud(segments: Sequence[Any], results: Sequence[Mask3D]) -> np.ndarray:
    """Structured array (CLOUD_DTYPE) of the inlier points of every segment with 3D, in the results' frame.

    ``results[i]`` is the Mask3D of ``segments[i]`` (``mask_to_3d(..., return_points=True)``, optionally
    ``transform``-ed); segments without 3D contribute nothing. Colours are ``segment_color(segment.id)``.
    """
    if len(segments) != len(results):
        raise ValueError(f"{len(segments)} segments but {len(results)} 3D results")
    chosen = [(s, r) for s, r in zip(segments, results) if r.valid]
    if any(r.points is None for _, r in chosen):
        raise ValueError("3D results carry no points: compute them with mask_to_3d(..., return_points=True)")
    counts = np.array([len(r.points) for _, r in chosen], dtype=np.int64)
    cloud = np.zeros(int(counts.sum()), dtype=CLOUD_DTYPE)
    if cloud.size == 0:
        return cloud
    xyz = np.concatenate([r.points for _, r in chosen]).astype(np.float32, copy=False)
    ids = np.array([s.id for s, _ in chosen], dtype=np.int64)
    cloud["x"], cloud["y"], cloud["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    cloud["rgb"] = np.repeat(pack_rgb(segment_colors(ids)), counts)
    cloud["segment_id"] = np.repeat(ids, counts)
    cloud["level"] = np.repeat([s.level for s, _ in chosen], counts)
    return cloud
