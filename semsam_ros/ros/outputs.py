"""One frame's Output -> every message the node publishes for it. The node and ``semsam bag`` both call
``build_outputs``, so a recorded bag and a live robot give the same messages for the same frame."""
from __future__ import annotations

from typing import Any, Callable

from semsam_ros.ros.cloud import cloud_message
from semsam_ros.ros.convert import label_array, segments_to_detections
from semsam_ros.ros.frame_processor import Output
from semsam_ros.ros.images import label_image, rgb_to_image
from semsam_ros.ros.markers import marker_array
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.params import NodeParams

OUTPUT_TYPES: dict[str, str] = {
    "segments": "semsam_ros/msg/SegmentArray",
    "overlay": "sensor_msgs/msg/Image",
    "label_image": "sensor_msgs/msg/Image",
    "markers": "visualization_msgs/msg/MarkerArray",
    "points": "sensor_msgs/msg/PointCloud2",
    "detections": "vision_msgs/msg/Detection2DArray",
}
"""Each per-frame output (``~/<name>`` on the node, ``<image>/<name>`` in a bag) and its message type."""
NEEDS_3D = ("markers", "points")


def overlay_captions(output: Output, semantics: bool) -> list[str] | None:
    """Each mask's level with its label and label score (with semantics) or IoU score, prefixed "T<track id>" when
    it is tracked; None when there is neither semantics nor a tracked mask (the overlay's own captions)."""
    from semsam_ros.viz.render import level_caption

    if not semantics and all(s.track_id < 0 for s in output.segments):
        return None
    captions = []
    for s in output.segments:
        caption = f"L{s.level} {s.label} {s.label_score:.2f}" if semantics else level_caption(s)
        captions.append(f"T{s.track_id} {caption}" if s.track_id >= 0 else caption)
    return captions


def build_outputs(types: MessageTypes, output: Output, params: NodeParams, wanted: Callable[[str], bool],
                  semantics: bool) -> dict[str, Any]:
    """The messages of ``output`` by output name: ``segments`` always, each other one when ``wanted(name)`` (the
    3D ones also need 3D results). Every message carries the frame's header."""
    from semsam_ros.geometry import segments_cloud
    from semsam_ros.viz.render import render_overlay

    header, rgb = output.message.header, output.frame.rgb
    messages: dict[str, Any] = {"segments": output.message}
    if wanted("overlay"):
        points = [xy for p in output.prompts for xy in p.points]
        boxes = [box for p in output.prompts for box in p.boxes]
        overlay = render_overlay(rgb, output.segments, points=points, boxes=boxes, alpha=params.overlay_alpha,
                                 captions=overlay_captions(output, semantics))
        messages["overlay"] = rgb_to_image(types, overlay, header)
    if wanted("label_image"):
        labels = label_array(output.segments, rgb.shape[:2], params.label_image_level)
        messages["label_image"] = label_image(types, labels, header)
    if output.results3d is not None and wanted("markers"):
        messages["markers"] = marker_array(types, header, output.segments, output.results3d)
    if output.results3d is not None and wanted("points"):
        messages["points"] = cloud_message(types, header, segments_cloud(output.segments, output.results3d))
    if wanted("detections"):
        messages["detections"] = segments_to_detections(types, output.segments, header, output.results3d)
    return messages
