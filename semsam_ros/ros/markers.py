"""visualization_msgs/MarkerArray of segments with 3D, for rclpy and rosbags message classes alike.

Every array starts with a DELETEALL marker (markers of segments gone since the last frame disappear), then for
each segment with 3D: its oriented box (CUBE, namespace ``<ns>/box``), centroid (SPHERE, ``<ns>/centroid``),
label (TEXT_VIEW_FACING, ``<ns>/label``: label, segment id and track id), long axis (ARROW, ``<ns>/axis``)
and grasp (ARROW from the grasp point against its normal, the approach direction, ``<ns>/grasp``), all with
marker id = segment id, coloured ``segment_color(segment.id)`` like the overlay image, with a lifetime so that
they vanish when the node stops publishing.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from semsam_ros.geometry.mask3d import Mask3D
from semsam_ros.viz.palette import segment_color
from semsam_ros.ros.msgtypes import MessageTypes

MARKER = "visualization_msgs/msg/Marker"
ARROW, CUBE, SPHERE, TEXT_VIEW_FACING = 0, 1, 2, 9
ADD, DELETEALL = 0, 3
MIN_SCALE_M = 0.002  # RViz rejects zero scales: flat boxes (one visible face) get this thickness


def marker_array(
    types: MessageTypes,
    header: Any,
    segments: Sequence[Any],
    results: Sequence[Mask3D],
    *,
    ns: str = "semsam",
    lifetime_s: float = 1.0,
    box_alpha: float = 0.4,
    text_height_m: float = 0.03,
    up: Sequence[float] = (0.0, -1.0, 0.0),
) -> Any:
    """MarkerArray for ``segments`` and their Mask3D ``results`` (same order, in the frame of ``header``).

    ``up`` is the direction labels are lifted along: -y in a camera optical frame, +z in a REP-103 frame
    (map, base_link).
    """
    if len(segments) != len(results):
        raise ValueError(f"{len(segments)} segments but {len(results)} 3D results")
    sec = int(lifetime_s)
    lifetime = types.make("builtin_interfaces/msg/Duration", sec=sec, nanosec=int(round((lifetime_s - sec) * 1e9)))
    up_vec = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)

    def marker(ns_: str, id_: int, type_: int, action: int, position: np.ndarray, orientation: Sequence[float],
               scale: Sequence[float], rgba: Sequence[float], points: Sequence[np.ndarray] = (),
               text: str = "") -> Any:
        return types.make(
            MARKER,
            header=header,
            ns=ns_,
            id=int(id_),
            type=type_,
            action=action,
            pose=types.make("geometry_msgs/msg/Pose", position=_point(types, position),
                            orientation=_quaternion(types, orientation)),
            scale=types.make("geometry_msgs/msg/Vector3", x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
            color=types.make("std_msgs/msg/ColorRGBA", r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]),
                             a=float(rgba[3])),
            lifetime=lifetime,
            frame_locked=False,
            points=[_point(types, p) for p in points],
            colors=[],
            texture_resource="",
            texture=types.make("sensor_msgs/msg/CompressedImage", header=header, format="",
                               data=types.byte_array(b"")),
            uv_coordinates=[],
            text=text,
            mesh_resource="",
            mesh_file=types.make("visualization_msgs/msg/MeshFile", filename="", data=types.byte_array(b"")),
            mesh_use_embedded_materials=False,
        )

    zero, identity = np.zeros(3), (0.0, 0.0, 0.0, 1.0)
    markers = [marker("", 0, CUBE, DELETEALL, zero, identity, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0))]
    for seg, m in zip(segments, results):
        if not m.valid:
            continue
        r, g, b = (c / 255.0 for c in segment_color(seg.id))
        largest = float(m.size.max())
        markers.append(marker(f"{ns}/box", seg.id, CUBE, ADD, m.box_center, m.orientation,
                              np.maximum(m.size, MIN_SCALE_M), (r, g, b, box_alpha)))
        diameter = float(np.clip(0.15 * largest, 0.005, 0.03))
        markers.append(marker(f"{ns}/centroid", seg.id, SPHERE, ADD, m.position, identity, (diameter,) * 3,
                              (r, g, b, 1.0)))
        lift = 0.5 * float(np.linalg.norm(m.size)) + text_height_m
        markers.append(marker(f"{ns}/label", seg.id, TEXT_VIEW_FACING, ADD, m.box_center + lift * up_vec,
                              identity, (0.0, 0.0, text_height_m), (r, g, b, 1.0), text=_caption(seg)))
        length = max(0.5 * float(m.size[0]), 0.02)
        shaft = float(np.clip(0.1 * length, 0.002, 0.01))
        markers.append(marker(f"{ns}/axis", seg.id, ARROW, ADD, zero, identity, (shaft, 2 * shaft, 0.25 * length),
                              (r, g, b, 1.0), points=(m.position, m.position + length * m.axis)))
        if np.isfinite(m.grasp_normal).all():
            markers.append(marker(f"{ns}/grasp", seg.id, ARROW, ADD, zero, identity, (shaft, 2 * shaft, 0.25 * length),
                                  (r, g, b, 1.0), points=(m.grasp_point + length * m.grasp_normal, m.grasp_point)))
    return types.make("visualization_msgs/msg/MarkerArray", markers=markers)


def _caption(seg: Any) -> str:
    """"<label> #<segment id>", with " T<track id>" when the segment is tracked."""
    track_id = getattr(seg, "track_id", -1)
    return f"{seg.label} #{seg.id}" + (f" T{track_id}" if track_id >= 0 else "")


def _point(types: MessageTypes, p: Sequence[float]) -> Any:
    return types.make("geometry_msgs/msg/Point", x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _quaternion(types: MessageTypes, q: Sequence[float]) -> Any:
    return types.make("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
