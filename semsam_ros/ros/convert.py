"""Segments <-> semsam_ros messages, and Prompt messages -> plain requests; shared by the node and the bag tools.

Only attributes of the incoming messages are read, and outgoing ones are built through ``MessageTypes``, so every
function serves rclpy and rosbags messages alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from semsam_ros.limits import InputRejected
from semsam_ros.types import LEVELS, Segment, Segment3D
from semsam_ros.ros.images import image_to_array, mono_to_image
from semsam_ros.ros.msgtypes import MessageTypes

@dataclass
class PromptRequest:
    """A Prompt message as plain Python: pixel points (P, 2) xy and boxes (B, 4) XYXY."""

    prompt_id: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    levels: tuple[int, ...] = ()  # empty: all six
    text: str = ""
    sticky: bool = False
    track: bool = False  # start tracks (one per point and box) instead of being answered once
    stamp_ns: int = 0  # 0: the newest frame
    frame_id: str = ""
    camera: str = ""  # the camera whose image the pixels belong to ('' the only or first one)

    @property
    def is_empty(self) -> bool:
        """No point and no box (a sticky prompt of this id is then removed)."""
        return len(self.points) == 0 and len(self.boxes) == 0


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header with the given stamp (ns) and frame."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    stamp = types.make("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)
    return types.make("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)


def copy_header(types: MessageTypes, header: Any) -> Any:
    """An exact copy of ``header`` (stamp and frame_id) as a message of ``types``."""
    return make_header(types, stamp_to_ns(header.stamp), header.frame_id)


def _vector(types: MessageTypes, name: str, values: Sequence[float], keys: str) -> Any:
    return types.make(name, **{k: float(v) for k, v in zip(keys, values)})


def _box_pose(types: MessageTypes, result3d: Segment3D | None) -> Any:
    """The oriented box of a valid 3D result as a geometry_msgs/Pose; the identity otherwise."""
    valid = result3d is not None and bool(result3d.valid)
    return types.make(
        "geometry_msgs/msg/Pose",
        position=_vector(types, "geometry_msgs/msg/Point", result3d.box_center if valid else (0, 0, 0), "xyz"),
        orientation=_vector(
            types, "geometry_msgs/msg/Quaternion", result3d.orientation if valid else (0, 0, 0, 1), "xyzw"
        ),
    )


def _segment_msg(types: MessageTypes, seg: Segment, header: Any, result3d: Segment3D | None) -> Any:
    x0, y0, x1, y1 = (int(v) for v in seg.bbox)
    crop = np.asarray(seg.mask[y0:y1, x0:x1], dtype=bool).view(np.uint8) * np.uint8(255)
    has_3d = result3d is not None and bool(result3d.valid)

    def vector3(name: str, kind: str = "Vector3") -> Any:
        return _vector(types, f"geometry_msgs/msg/{kind}", getattr(result3d, name) if has_3d else (0, 0, 0), "xyz")

    return types.make(
        "semsam_ros/msg/Segment",
        id=int(seg.id),
        prompt_id=int(seg.prompt_id),
        track_id=int(seg.track_id),
        track_state=int(seg.track_state),
        level=int(seg.level),
        kind=int(seg.kind),
        iou_score=float(seg.iou_score),
        stability_score=float(seg.stability_score),
        label=seg.label,
        label_score=float(seg.label_score),
        top_labels=[label for label, _ in seg.top_labels],
        top_label_scores=types.float_array([score for _, score in seg.top_labels], "float32"),
        parent_id=int(seg.parent_id),
        child_ids=types.float_array(seg.child_ids, "int32"),  # a numeric array field of any dtype
        bbox=types.make(
            "sensor_msgs/msg/RegionOfInterest", x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0,
            do_rectify=False,
        ),
        mask=mono_to_image(types, crop, header),  # 0x0 for an empty mask
        area=int(seg.area),
        centroid_x=float(seg.centroid[0]),
        centroid_y=float(seg.centroid[1]),
        has_3d=has_3d,
        pose=_box_pose(types, result3d),
        size=vector3("size"),
        centroid=vector3("position", "Point"),
        normal=vector3("normal"),
        axis=vector3("axis"),
        grasp_point=vector3("grasp_point", "Point"),
        grasp_normal=vector3("grasp_normal"),
        grasp_pixel_x=float(result3d.grasp_pixel[0]) if has_3d else float("nan"),
        grasp_pixel_y=float(result3d.grasp_pixel[1]) if has_3d else float("nan"),
        # known whenever depth was measured, valid or not (why a mask has no 3D)
        point_count=0 if result3d is None else int(result3d.point_count),
        valid_depth_ratio=0.0 if result3d is None else float(result3d.valid_ratio),
    )


def segments_to_msg(
    types: MessageTypes,
    segments: Sequence[Segment],
    header: Any,
    image_size: tuple[int, int],
    model_id: str,
    results3d: Sequence[Segment3D | None] | None = None,
    *,
    encode_ms: float = 0.0,
    decode_ms: float = 0.0,
    postprocess_ms: float = 0.0,
    total_ms: float = 0.0,
) -> Any:
    """semsam_ros/SegmentArray of ``segments`` of an image of ``image_size`` (H, W).

    ``header`` is copied exactly into the array and every mask image. ``results3d`` (one entry per segment, or
    None) fills the 3D fields; a missing or invalid entry gives ``has_3d`` false.
    """
    height, width = (int(v) for v in image_size)
    if results3d is not None and len(results3d) != len(segments):
        raise ValueError(f"{len(results3d)} 3D results for {len(segments)} segments")
    header = copy_header(types, header)
    msgs = []
    for i, seg in enumerate(segments):
        if seg.mask.shape != (height, width):
            raise ValueError(f"segment {seg.id}: mask shape {seg.mask.shape} differs from the image {(height, width)}")
        msgs.append(_segment_msg(types, seg, header, None if results3d is None else results3d[i]))
    return types.make(
        "semsam_ros/msg/SegmentArray",
        header=header,
        height=height,
        width=width,
        model_id=model_id,
        segments=msgs,
        encode_ms=float(encode_ms),
        decode_ms=float(decode_ms),
        postprocess_ms=float(postprocess_ms),
        total_ms=float(total_ms),
    )


def msg_to_segments(msg: Any, image_size: tuple[int, int] | None = None) -> list[Segment]:
    """Segments of a SegmentArray with full-size bool masks (image size from the message unless given)."""
    height, width = (int(msg.height), int(msg.width)) if image_size is None else image_size
    segments = []
    for s in msg.segments:
        x0, y0 = int(s.bbox.x_offset), int(s.bbox.y_offset)
        x1, y1 = x0 + int(s.bbox.width), y0 + int(s.bbox.height)
        mask = np.zeros((height, width), dtype=bool)
        if s.mask.width and s.mask.height:
            crop = image_to_array(s.mask)
            if crop.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"segment {s.id}: mask is {crop.shape[::-1]} pixels but its bbox {x1 - x0}x{y1 - y0}")
            mask[y0:y1, x0:x1] = crop > 0
        segments.append(
            Segment(
                mask=mask,
                level=int(s.level),
                iou_score=float(s.iou_score),
                area=int(s.area),
                bbox=(x0, y0, x1, y1),
                centroid=(float(s.centroid_x), float(s.centroid_y)),
                id=int(s.id),
                prompt_id=int(s.prompt_id),
                track_id=int(s.track_id),
                track_state=int(s.track_state),
                stability_score=float(s.stability_score),
                kind=int(s.kind),
                label=s.label,
                label_score=float(s.label_score),
                top_labels=[(str(lb), float(sc)) for lb, sc in zip(s.top_labels, s.top_label_scores)],
                parent_id=int(s.parent_id),
                child_ids=[int(c) for c in s.child_ids],
            )
        )
    return segments


def msg_to_3d(msg: Any) -> list[Any]:
    """The 3D fields of every segment of a SegmentArray as ``geometry.Mask3D`` records (``points`` None).

    A segment without 3D gives ``valid`` False with NaN geometry (its point_count and valid ratio kept), as
    ``geometry.mask_to_3d`` reports it; ``marker_array`` and a grasp planner's code take either.
    """
    from semsam_ros.geometry.mask3d import Mask3D

    def xyz(v: Any) -> np.ndarray:
        return np.array([v.x, v.y, v.z], dtype=np.float64)

    out = []
    for s in msg.segments:
        nan3 = np.full(3, np.nan)
        q = s.pose.orientation
        valid = bool(s.has_3d)
        out.append(Mask3D(
            valid=valid,
            position=xyz(s.centroid) if valid else nan3,
            orientation=np.array([q.x, q.y, q.z, q.w], dtype=np.float64) if valid else np.full(4, np.nan),
            size=xyz(s.size) if valid else nan3.copy(),
            box_center=xyz(s.pose.position) if valid else nan3.copy(),
            normal=xyz(s.normal) if valid else nan3.copy(),
            axis=xyz(s.axis) if valid else nan3.copy(),
            grasp_point=xyz(s.grasp_point) if valid else nan3.copy(),
            grasp_normal=xyz(s.grasp_normal) if valid else nan3.copy(),
            grasp_pixel=np.array([s.grasp_pixel_x, s.grasp_pixel_y], dtype=np.float64) if valid else np.full(2, np.nan),
            point_count=int(s.point_count),
            valid_ratio=float(s.valid_depth_ratio),
        ))
    return out


def prompt_from_msg(msg: Any) -> PromptRequest:
    """PromptRequest of a semsam_ros/Prompt; InputRejected ("bad_prompt") on a negative id, a level outside 1..6,
    a non-finite point or box, or fields that are not numbers."""
    try:
        prompt_id = int(msg.prompt_id)
        levels = tuple(int(v) for v in msg.levels)
        boxes = [(b.x_offset, b.y_offset, b.x_offset + b.width, b.y_offset + b.height) for b in msg.boxes]
        points = np.array([(p.x, p.y) for p in msg.points], dtype=np.float64).reshape(-1, 2)
        box_array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputRejected(f"malformed prompt: {exc}", "bad_prompt") from None
    if prompt_id < 0:
        raise InputRejected(f"prompt_id must be >= 0 (-1 marks automatic segments), got {msg.prompt_id}", "bad_prompt")
    if any(level not in LEVELS for level in levels):
        raise InputRejected(f"prompt {prompt_id}: levels must lie in 1..6, got {list(levels)}", "bad_prompt")
    if not (np.isfinite(points).all() and np.isfinite(box_array).all()):
        raise InputRejected(f"prompt {prompt_id}: points and boxes must be finite numbers", "bad_prompt")
    return PromptRequest(
        prompt_id=prompt_id,
        points=points,
        boxes=box_array,
        levels=tuple(sorted(set(levels))),
        text=str(msg.text),
        sticky=bool(msg.sticky),
        track=bool(msg.track),
        stamp_ns=stamp_to_ns(msg.header.stamp),
        frame_id=msg.header.frame_id,
        camera=msg.camera,
    )


def prompt_to_msg(types: MessageTypes, prompt: PromptRequest) -> Any:
    """semsam_ros/Prompt of a PromptRequest (box corners rounded to whole pixels)."""
    boxes = []
    for x0, y0, x1, y1 in np.rint(prompt.boxes).astype(int):
        boxes.append(
            types.make(
                "sensor_msgs/msg/RegionOfInterest", x_offset=int(x0), y_offset=int(y0), width=int(x1 - x0),
                height=int(y1 - y0), do_rectify=False,
            )
        )
    points = [types.make("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0) for x, y in prompt.points]
    return types.make(
        "semsam_ros/msg/Prompt",
        header=make_header(types, prompt.stamp_ns, prompt.frame_id),
        prompt_id=int(prompt.prompt_id),
        points=points,
        boxes=boxes,
        levels=types.byte_array(np.array(prompt.levels, dtype=np.uint8)),
        text=prompt.text,
        sticky=bool(prompt.sticky),
        track=bool(prompt.track),
        camera=prompt.camera,
    )


def transform_matrix(transform: Any) -> np.ndarray:
    """4x4 homogeneous matrix of a geometry_msgs/Transform (translation + unit quaternion rotation)."""
    from semsam_ros.geometry.mask3d import quaternion_to_matrix

    q, t = transform.rotation, transform.translation
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix([q.x, q.y, q.z, q.w])
    matrix[:3, 3] = (t.x, t.y, t.z)
    return matrix


def transform_point(transform: Any, point: Sequence[float]) -> np.ndarray:
    """Apply a geometry_msgs/Transform (translation + unit quaternion rotation) to a 3D point."""
    matrix = transform_matrix(transform)
    return matrix[:3, :3] @ np.asarray(point, dtype=np.float64) + matrix[:3, 3]


def segments_to_detections(
    types: MessageTypes, segments: Sequence[Segment], header: Any, results3d: Sequence[Segment3D | None] | None = None
) -> Any:
    """vision_msgs/Detection2DArray mirror of a SegmentArray (vision_msgs 4.x, as in Humble and Jazzy).

    One detection per segment: ``id`` = segment id, the bbox, and one hypothesis per top label (the label alone
    when there are none), with the segment's 3D box pose (as ``Segment.pose``) when it has one.
    """
    header = copy_header(types, header)
    detections = []
    for i, seg in enumerate(segments):
        pose = _box_pose(types, None if results3d is None else results3d[i])
        with_pose = types.make("geometry_msgs/msg/PoseWithCovariance", pose=pose,
                               covariance=types.float_array(np.zeros(36)))
        hypotheses = [
            types.make(
                "vision_msgs/msg/ObjectHypothesisWithPose",
                hypothesis=types.make("vision_msgs/msg/ObjectHypothesis", class_id=label, score=float(score)),
                pose=with_pose,
            )
            for label, score in (seg.top_labels or [(seg.label, seg.label_score)])
        ]
        x0, y0, x1, y1 = seg.bbox
        center = types.make(
            "vision_msgs/msg/Pose2D",
            position=types.make("vision_msgs/msg/Point2D", x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0),
            theta=0.0,
        )
        bbox = types.make("vision_msgs/msg/BoundingBox2D", center=center, size_x=float(x1 - x0),
                          size_y=float(y1 - y0))
        detections.append(types.make("vision_msgs/msg/Detection2D", header=header, results=hypotheses, bbox=bbox,
                                     id=str(seg.id)))
    return types.make("vision_msgs/msg/Detection2DArray", header=header, detections=detections)


def label_info(types: MessageTypes, header: Any, class_names: Sequence[str], threshold: float) -> Any:
    """vision_msgs/LabelInfo mapping class ids 0..N-1 to ``class_names``."""
    class_map = [types.make("vision_msgs/msg/VisionClass", class_id=i, class_name=name)
                 for i, name in enumerate(class_names)]
    return types.make("vision_msgs/msg/LabelInfo", header=copy_header(types, header), class_map=class_map,
                      threshold=float(threshold))


def label_array(segments: Sequence[Segment], image_size: tuple[int, int], level: int) -> np.ndarray:
    """HxW uint16 labels of the segments of one level: ``id + 1`` inside a mask, 0 elsewhere.

    Where masks overlap, the smaller one wins (larger masks are painted first).
    """
    labels = np.zeros(image_size, dtype=np.uint16)
    for seg in sorted((s for s in segments if s.level == level), key=lambda s: -s.area):
        if not 0 <= seg.id < 65535:
            raise ValueError(f"segment id {seg.id} does not fit a 16UC1 label image")
        labels[seg.mask] = seg.id + 1
    return labels
