"""A small ROS-free TF buffer for offline use (``semsam bag --track`` reading ``/tf`` and ``/tf_static``): transforms
stored by child frame with their stamps, a frame's pose in another looked up through the tree at a time, each
edge interpolated between the stamps around it (linear translation, slerp rotation)."""
from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

DEFAULT_TOLERANCE_NS = 100_000_000  # a lookup this far outside an edge's stamps takes the nearest one


class _Edge(NamedTuple):
    parent: str
    stamps: list[int]
    translations: list[np.ndarray]
    rotations: list[np.ndarray]  # quaternions x, y, z, w


class TransformBuffer:
    """Transforms parent -> child (the child's pose in its parent, as a geometry_msgs/TransformStamped says) by
    child frame, each with its stamps (static ones without). ``lookup(target, source, stamp_ns)`` is the 4x4 pose
    of ``source`` in ``target`` (it maps ``source`` coordinates to ``target`` ones), as tf2's
    ``lookup_transform(target, source, stamp)``; None when the frames are not connected or an edge has no stamp
    within ``tolerance_ns`` of the time asked (no extrapolation beyond it)."""

    def __init__(self, tolerance_ns: int = DEFAULT_TOLERANCE_NS) -> None:
        self.tolerance_ns = tolerance_ns
        self._edges: dict[str, _Edge] = {}
        self._static: set[str] = set()

    def add(self, parent: str, child: str, stamp_ns: int, translation: Iterable[float], rotation: Iterable[float],
            static: bool = False) -> None:
        """One transform: ``child``'s pose in ``parent`` at ``stamp_ns`` (``rotation`` a quaternion x, y, z, w).
        A static one holds at every time; a frame keeps the parent it was first given."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        quaternion = np.asarray(list(rotation), dtype=np.float64)
        norm = np.linalg.norm(quaternion)
        if parent == child or not np.isfinite(norm) or norm == 0:
            return
        edge = self._edges.get(child)
        if edge is None or static:  # a static transform replaces what the frame had
            edge = self._edges[child] = _Edge(parent, [], [], [])
            if static:
                self._static.add(child)
        elif edge.parent != parent or child in self._static:
            return
        at = bisect.bisect_right(edge.stamps, stamp_ns)
        edge.stamps.insert(at, int(stamp_ns))
        edge.translations.insert(at, np.asarray(list(translation), dtype=np.float64))
        edge.rotations.insert(at, quaternion / norm)

    def add_message(self, msg: Any, static: bool = False) -> None:
        """Every transform of a tf2_msgs/TFMessage (deserialised by rosbags)."""
        for t in msg.transforms:
            tr, q = t.transform.translation, t.transform.rotation
            stamp = int(t.header.stamp.sec) * 1_000_000_000 + int(t.header.stamp.nanosec)
            self.add(t.header.frame_id, t.child_frame_id, stamp, (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w), static)

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray | None:
        """4x4 pose of ``source`` in ``target`` at ``stamp_ns``; None when TF cannot tell."""
        target, source = target.lstrip("/"), source.lstrip("/")
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            return None
        source_in_common = self._compose(up_source[:up_source.index(common)], stamp_ns)
        target_in_common = self._compose(up_target[:up_target.index(common)], stamp_ns)
        if source_in_common is None or target_in_common is None:
            return None
        return np.linalg.inv(target_in_common) @ source_in_common

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root."""
        chain = [frame]
        while chain[-1] in self._edges and len(chain) <= len(self._edges):
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _compose(self, frames: list[str], stamp_ns: int) -> np.ndarray | None:
        """Pose of ``frames[0]`` in the parent of ``frames[-1]`` (identity for none)."""
        pose = np.eye(4)
        for frame in frames:
            edge = self._edge(frame, stamp_ns)
            if edge is None:
                return None
            pose = edge @ pose
        return pose

    def _edge(self, child: str, stamp_ns: int) -> np.ndarray | None:
        """4x4 pose of ``child`` in its parent at ``stamp_ns``."""
        edge = self._edges[child]
        stamps = edge.stamps
        if child in self._static:
            k = w = 0
        else:
            after = bisect.bisect_left(stamps, stamp_ns)
            if after < len(stamps) and stamps[after] == stamp_ns or after in (0, len(stamps)):
                k = min(after, len(stamps) - 1)
                if abs(stamps[k] - stamp_ns) > self.tolerance_ns:
                    return None
                w = 0.0
            else:
                k, w = after - 1, (stamp_ns - stamps[after - 1]) / (stamps[after] - stamps[after - 1])
        pose = np.eye(4)
        if w == 0:
            pose[:3, :3] = Rotation.from_quat(edge.rotations[k]).as_matrix()
            pose[:3, 3] = edge.translations[k]
            return pose
        pair = Rotation.from_quat([edge.rotations[k], edge.rotations[k + 1]])
        pose[:3, :3] = (pair[0] * Rotation.from_rotvec(w * (pair[0].inv() * pair[1]).as_rotvec())).as_matrix()
        pose[:3, 3] = (1 - w) * edge.translations[k] + w * edge.translations[k + 1]
        return pose
