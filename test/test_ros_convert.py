"""Segments <-> SegmentArray and Prompt conversion, with rosbags types and with rclpy-like plain objects."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.types import KIND_PART, make_segment  # noqa: E402
from semsam_ros.ros.convert import (  # noqa: E402
    PromptRequest,
    copy_header,
    label_array,
    make_header,
    msg_to_segments,
    prompt_from_msg,
    prompt_to_msg,
    label_info,
    segments_to_detections,
    segments_to_msg,
    stamp_to_ns,
    transform_point,
)
from semsam_ros.ros.msgtypes import MessageTypes  # noqa: E402
from semsam_ros.ros.typestore import make_typestore  # noqa: E402

H, W = 6, 8


@dataclass
class Fake3D:
    valid: bool
    position: tuple = (0.1, 0.2, 1.5)
    orientation: tuple = (0.0, 0.0, 0.7071068, 0.7071068)
    size: tuple = (0.3, 0.2, 0.1)
    box_center: tuple = (0.11, 0.19, 1.55)
    normal: tuple = (0.0, 0.0, -1.0)
    axis: tuple = (0.0, 1.0, 0.0)
    grasp_point: tuple = (0.12, 0.21, 1.49)
    grasp_normal: tuple = (0.0, -0.6, -0.8)
    grasp_pixel: tuple = (3.0, 2.0)
    point_count: int = 42
    valid_ratio: float = 0.75


@pytest.fixture(scope="module")
def store():
    return make_typestore("humble")


@pytest.fixture(scope="module")
def types(store):
    return MessageTypes.from_typestore(store)


def rclpy_like_types() -> MessageTypes:
    """Message classes that behave like rclpy's: keyword construction, plain attributes, array.array bytes."""
    return MessageTypes(lambda name: (lambda **fields: SimpleNamespace(__msgtype__=name, **fields)), "rclpy")


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def sample_segments():
    ring = box_mask(1, 1, 6, 5)
    ring[2:4, 2:5] = False
    return [
        make_segment(ring, 2, 1.1, id=0, prompt_id=3, stability_score=0.95, kind=1, label="mug", label_score=0.8,
                     top_labels=[("mug", 0.8), ("cup", 0.15)], child_ids=[1]),
        make_segment(box_mask(2, 2, 5, 4), 5, 0.7, id=1, prompt_id=3, kind=KIND_PART, label="handle",
                     label_score=0.6, parent_id=0),
        make_segment(np.zeros((H, W), bool), 6, 0.2, id=2),
    ]


def cdr(store, msg):
    name = msg.__msgtype__
    return store.deserialize_cdr(store.serialize_cdr(msg, name), name)


def test_segment_array_content(store, types):
    header = make_header(types, 1_700_000_000_123_456_789, "camera_optical")
    segs = sample_segments()
    msg = cdr(store, segments_to_msg(types, segs, header, (H, W), "swint-abababababab",
                                     [Fake3D(True), Fake3D(False), None], encode_ms=12.5, total_ms=20.0))
    assert stamp_to_ns(msg.header.stamp) == 1_700_000_000_123_456_789 and msg.header.frame_id == "camera_optical"
    assert (msg.height, msg.width, msg.model_id) == (H, W, "swint-abababababab")
    assert msg.encode_ms == 12.5 and msg.total_ms == 20.0 and msg.decode_ms == 0.0
    ring, handle, empty = msg.segments
    assert (ring.bbox.x_offset, ring.bbox.y_offset, ring.bbox.width, ring.bbox.height) == (1, 1, 5, 4)
    assert ring.mask.encoding == "mono8" and (ring.mask.height, ring.mask.width, ring.mask.step) == (4, 5, 5)
    crop = ring.mask.data.reshape(4, 5)
    np.testing.assert_array_equal(crop, np.where(segs[0].mask[1:5, 1:6], 255, 0))
    assert ring.mask.header.frame_id == "camera_optical"
    assert (ring.id, ring.prompt_id, ring.level, ring.kind, ring.area) == (0, 3, 2, 1, segs[0].area)
    assert ring.iou_score == pytest.approx(1.1) and ring.stability_score == pytest.approx(0.95)
    assert list(ring.top_labels) == ["mug", "cup"] and list(ring.top_label_scores) == pytest.approx([0.8, 0.15])
    assert list(ring.child_ids) == [1] and handle.parent_id == 0 and handle.kind == KIND_PART
    assert (ring.centroid_x, ring.centroid_y) == pytest.approx(segs[0].centroid)
    assert ring.has_3d and ring.point_count == 42 and ring.valid_depth_ratio == 0.75
    assert (ring.pose.position.x, ring.pose.position.y, ring.pose.position.z) == (0.11, 0.19, 1.55)  # box centre
    assert ring.pose.orientation.w == pytest.approx(0.7071068) and ring.size.x == pytest.approx(0.3)
    assert (ring.centroid.x, ring.centroid.y, ring.centroid.z) == (0.1, 0.2, 1.5)
    assert (ring.normal.z, ring.axis.y) == (-1.0, 1.0)
    assert (ring.grasp_point.x, ring.grasp_normal.y, ring.grasp_pixel_x, ring.grasp_pixel_y) == (0.12, -0.6, 3.0, 2.0)
    # no 3D: geometry zero, the depth statistics still tell why
    assert not handle.has_3d and handle.point_count == 42 and handle.valid_depth_ratio == 0.75
    assert handle.pose.orientation.w == 1.0 and handle.pose.position.z == 0.0 and handle.centroid.z == 0.0
    assert (handle.normal.z, handle.axis.y, handle.size.x, handle.grasp_point.z) == (0.0, 0.0, 0.0, 0.0)
    assert np.isnan(handle.grasp_pixel_x) and np.isnan(handle.grasp_pixel_y)
    assert empty.point_count == 0 and empty.valid_depth_ratio == 0.0  # no 3D result at all
    assert not empty.has_3d and (empty.mask.width, empty.mask.height, empty.bbox.width) == (0, 0, 0)
    assert np.isnan(empty.centroid_x) and np.isnan(empty.stability_score)


def test_round_trip_rebuilds_full_masks(store, types):
    segs = sample_segments()
    back = msg_to_segments(cdr(store, segments_to_msg(types, segs, make_header(types, 5, "c"), (H, W), "m")))
    assert len(back) == len(segs)
    for a, b in zip(segs, back):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.bbox, a.area, a.level, a.id, a.prompt_id, a.kind, a.label) == (
            b.bbox, b.area, b.level, b.id, b.prompt_id, b.kind, b.label)
        assert [lb for lb, _ in a.top_labels] == [lb for lb, _ in b.top_labels] and a.child_ids == b.child_ids
        assert a.parent_id == b.parent_id


def test_3d_fields_round_trip_through_cdr(store, types):
    from semsam_ros.geometry import CameraModel, segments_to_3d
    from semsam_ros.ros.convert import msg_to_3d

    camera = CameraModel([[10.0, 0, W / 2], [0, 10.0, H / 2], [0, 0, 1]], W, H)
    ys, xs = np.mgrid[:H, :W]
    depth = (1.0 + 0.02 * xs + 0.01 * ys).astype(np.float32)  # a tilted plane
    segs = [make_segment(box_mask(0, 0, 8, 6), 1, 0.9, id=0), make_segment(box_mask(1, 1, 3, 2), 4, 0.9, id=1)]
    results = segments_to_3d(segs, depth, camera, min_points=4)
    assert results[0].valid and not results[1].valid
    msg = cdr(store, segments_to_msg(types, segs, make_header(types, 1, "cam"), (H, W), "m", results))
    back = msg_to_3d(msg)
    a, b = results[0], back[0]
    assert b.valid and (b.point_count, b.valid_ratio) == (a.point_count, pytest.approx(a.valid_ratio))
    for name in ("position", "box_center", "size", "normal", "axis", "orientation", "grasp_point", "grasp_normal",
                 "grasp_pixel"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-12, err_msg=name)
    seg = msg.segments[0]
    assert seg.centroid.z == a.position[2] and seg.pose.position.z == a.box_center[2]
    assert np.linalg.norm([seg.normal.x, seg.normal.y, seg.normal.z]) == pytest.approx(1.0)
    assert np.dot([seg.normal.x, seg.normal.y, seg.normal.z], a.position) < 0  # towards the camera
    assert not back[1].valid and np.isnan(back[1].position).all() and back[1].point_count == results[1].point_count


def test_rclpy_like_messages():
    types = rclpy_like_types()
    header = SimpleNamespace(stamp=SimpleNamespace(sec=7, nanosec=9), frame_id="cam")
    msg = segments_to_msg(types, sample_segments(), header, (H, W), "m")
    assert msg.header is not header and msg.header.stamp.sec == 7 and msg.header.frame_id == "cam"
    ring = msg.segments[0]
    assert ring.child_ids == [1] and isinstance(ring.top_label_scores, list)
    back = msg_to_segments(msg)
    np.testing.assert_array_equal(back[0].mask, sample_segments()[0].mask)


def test_message_with_a_name_field(store, types):
    field = cdr(store, types.make("sensor_msgs/msg/PointField", name="x", offset=0, datatype=7, count=1))
    assert (field.name, field.datatype) == ("x", 7)


def test_shape_and_count_mismatches(types):
    header = make_header(types, 0, "")
    with pytest.raises(ValueError, match="differs from the image"):
        segments_to_msg(types, sample_segments(), header, (H + 1, W), "m")
    with pytest.raises(ValueError, match="2 3D results for 3 segments"):
        segments_to_msg(types, sample_segments(), header, (H, W), "m", [None, None])


def test_header_copy(types):
    original = make_header(types, 12_000_000_001, "base")
    copy = copy_header(types, original)
    assert copy is not original and stamp_to_ns(copy.stamp) == 12_000_000_001 and copy.frame_id == "base"


def test_prompt_round_trip(store, types):
    request = PromptRequest(
        prompt_id=4, points=np.array([[10.5, 20.25], [3, 4]]), boxes=np.array([[1, 2, 30, 40]]), levels=(6, 3),
        text="handle", sticky=True, stamp_ns=2_000_000_005, frame_id="cam",
    )
    back = prompt_from_msg(cdr(store, prompt_to_msg(types, request)))
    np.testing.assert_array_equal(back.points, request.points)
    np.testing.assert_array_equal(back.boxes, request.boxes)
    assert (back.prompt_id, back.levels, back.text, back.sticky, back.stamp_ns, back.frame_id) == (
        4, (3, 6), "handle", True, 2_000_000_005, "cam")
    assert not back.is_empty and PromptRequest(prompt_id=1).is_empty


def test_prompt_from_rclpy_like_message():
    msg = SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam"), prompt_id=0,
        points=[SimpleNamespace(x=1.0, y=2.0, z=9.0)], boxes=[], levels=bytes([1, 1, 2]), text="", sticky=False,
        track=True,
        camera="wrist",
    )
    request = prompt_from_msg(msg)
    assert request.points.tolist() == [[1.0, 2.0]] and request.boxes.shape == (0, 4) and request.levels == (1, 2)
    assert request.stamp_ns == 1_000_000_002 and request.track is True and request.camera == "wrist"


@pytest.mark.parametrize("field, value, match", [("prompt_id", -1, "prompt_id must be >= 0"),
                                                 ("levels", bytes([0, 7]), "levels must lie in 1..6")])
def test_bad_prompts(field, value, match):
    msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id=""),
                          prompt_id=0, points=[], boxes=[], levels=b"", text="", sticky=False, camera="")
    setattr(msg, field, value)
    with pytest.raises(ValueError, match=match):
        prompt_from_msg(msg)


def test_label_array_paints_smaller_masks_on_top():
    big = make_segment(box_mask(0, 0, 8, 6), 3, 0.9, id=4)
    small = make_segment(box_mask(2, 2, 4, 4), 3, 0.9, id=9)
    other_level = make_segment(box_mask(5, 0, 8, 2), 4, 0.9, id=1)
    labels = label_array([small, big, other_level], (H, W), level=3)
    assert labels.dtype == np.uint16
    expected = np.full((H, W), 5, np.uint16)
    expected[2:4, 2:4] = 10
    np.testing.assert_array_equal(labels, expected)
    assert not label_array([other_level], (H, W), level=3).any()


def test_transform_point():
    half = np.sqrt(0.5)
    transform = SimpleNamespace(  # 90 degrees about z, then a shift
        translation=SimpleNamespace(x=1.0, y=2.0, z=3.0), rotation=SimpleNamespace(x=0.0, y=0.0, z=half, w=half)
    )
    np.testing.assert_allclose(transform_point(transform, [1.0, 0.0, 0.5]), [1.0, 3.0, 3.5], atol=1e-12)


# vision_msgs 4.x (Humble, Jazzy) is not in the rosbags stores: register its definitions for these tests.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    "VisionClass": "uint16 class_id\nstring class_name\n",
    "LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}


@pytest.fixture(scope="module")
def vision_store():
    from rosbags.typesys import get_types_from_msg

    store = make_typestore("jazzy")
    for name, text in VISION_MSGS.items():
        store.register(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    return store


def test_detection_mirror(vision_store):
    types = MessageTypes.from_typestore(vision_store)
    segs = sample_segments()
    msg = cdr(vision_store, segments_to_detections(types, segs, make_header(types, 9, "cam"),
                                                   [Fake3D(True), None, Fake3D(False)]))
    assert msg.header.frame_id == "cam" and len(msg.detections) == 3
    ring, handle, empty = msg.detections
    assert ring.id == "0" and [h.hypothesis.class_id for h in ring.results] == ["mug", "cup"]
    assert ring.results[0].hypothesis.score == pytest.approx(0.8) and ring.results[0].pose.pose.position.z == 1.55
    assert (ring.bbox.center.position.x, ring.bbox.center.position.y, ring.bbox.size_x, ring.bbox.size_y) == (
        3.5, 3.0, 5.0, 4.0)
    assert [h.hypothesis.class_id for h in handle.results] == ["handle"]
    assert handle.results[0].pose.pose.orientation.w == 1
    assert empty.results[0].hypothesis.class_id == "unknown" and empty.bbox.size_x == 0


def test_label_info(vision_store):
    types = MessageTypes.from_typestore(vision_store)
    msg = cdr(vision_store, label_info(types, make_header(types, 0, "cam"), ["unknown", "mug", "handle"], 0.3))
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "unknown"), (1, "mug"), (2, "handle")]
    assert msg.threshold == pytest.approx(0.3)
