"""PointCloud2 and MarkerArray of segments with 3D, checked by CDR round trips through rosbags; the palette."""
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

import geometry_scenes as gs
from semsam_ros.geometry import (CLOUD_DTYPE, CameraModel, depth_to_meters, pack_rgb, segments_cloud,
                                 segments_to_3d)
from semsam_ros.viz.palette import segment_color, segment_colors
from semsam_ros.types import make_segment
from semsam_ros.ros.cloud import cloud_message
from semsam_ros.ros.markers import marker_array
from semsam_ros.ros.msgtypes import MessageTypes

TS = get_typestore(Stores.ROS2_HUMBLE)
TYPES = MessageTypes.from_typestore(TS)
NUMPY_OF_DATATYPE = {2: "u1", 4: "<u2", 6: "<u4", 7: "<f4", 8: "<f8"}


def round_trip(msg):
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def header(frame="camera_color_optical_frame"):
    return TYPES.make("std_msgs/msg/Header", stamp=TYPES.make("builtin_interfaces/msg/Time", sec=12, nanosec=5),
                      frame_id=frame)


@pytest.fixture(scope="module")
def mug_segments():
    """Body (id 4, level 3), handle (id 7, level 5) and a mask without depth (id 9): results with points."""
    depth, label = gs.render_mug(gs.pixel_rays())
    depth_m = depth_to_meters(depth.astype(np.float32))
    blind = np.zeros_like(label, dtype=bool)
    blind[:3, :3] = True
    depth_m[:3, :3] = np.nan
    segs = [make_segment(label == 0, 3, 0.95, id=4, label="mug"),
            make_segment(label == 1, 5, 0.9, id=7, label="handle"),
            make_segment(blind, 6, 0.5, id=9)]
    results = segments_to_3d(segs, depth_m, CameraModel(gs.K, gs.W, gs.H), return_points=True)
    assert [r.valid for r in results] == [True, True, False]
    return segs, results


# -- palette ----------------------------------------------------------------------------------------------------

def test_palette_is_deterministic_and_distinct():
    colors = segment_colors(np.arange(16)).astype(int)
    assert colors.dtype == np.int64 and segment_colors(np.arange(3)).dtype == np.uint8
    np.testing.assert_array_equal(colors, segment_colors(np.arange(16)))
    assert segment_color(5) == tuple(colors[5]) and all(isinstance(c, int) for c in segment_color(5))
    dist = np.sqrt(((colors[:, None] - colors[None]) ** 2).sum(-1)) + np.eye(16) * 1e9
    assert dist.min() > 40  # any two of the first 16 ids differ clearly
    assert segment_color(0) == (242, 36, 36)


def test_pack_rgb_bit_pattern():
    packed = pack_rgb(np.array([[255, 0, 0], [1, 2, 3]], dtype=np.uint8))
    assert packed.dtype == np.float32
    np.testing.assert_array_equal(packed.view(np.uint32), [0xFF0000, 0x010203])


# -- PointCloud2 ------------------------------------------------------------------------------------------------

def decode(msg):
    """Structured array of a deserialised PointCloud2, built from its own field descriptions."""
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [NUMPY_OF_DATATYPE[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=dtype)


def test_point_cloud_layout_and_content(mug_segments):
    segs, results = mug_segments
    cloud = segments_cloud(segs, results)
    assert cloud.dtype == CLOUD_DTYPE and CLOUD_DTYPE.itemsize == 24
    msg = round_trip(cloud_message(TYPES, header(), cloud))
    assert msg.header.frame_id == "camera_color_optical_frame" and msg.header.stamp.sec == 12
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1), ("segment_id", 16, 6, 1),
        ("level", 20, 2, 1)]
    n_body, n_handle = len(results[0].points), len(results[1].points)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n_body + n_handle, 24, 24 * (n_body + n_handle))
    assert msg.is_dense and not msg.is_bigendian
    points = decode(msg)
    np.testing.assert_array_equal(points["segment_id"], [4] * n_body + [7] * n_handle)
    np.testing.assert_array_equal(points["level"], [3] * n_body + [5] * n_handle)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
    np.testing.assert_array_equal(xyz, np.concatenate([results[0].points, results[1].points]))
    rgb = points["rgb"].view(np.uint32)
    r, g, b = (rgb[0] >> 16) & 0xFF, (rgb[0] >> 8) & 0xFF, rgb[0] & 0xFF
    assert (r, g, b) == segment_color(4)
    assert ((rgb[-1] >> 16) & 0xFF, (rgb[-1] >> 8) & 0xFF, rgb[-1] & 0xFF) == segment_color(7)
    # the body's points lie on the cylinder: the cloud carries real geometry
    radial = np.hypot(xyz[:n_body, 0] - gs.MUG_CENTER[0], xyz[:n_body, 2] - gs.MUG_CENTER[2])
    np.testing.assert_allclose(radial, gs.MUG_RADIUS, atol=1e-5)


def test_point_cloud_edge_cases(mug_segments):
    segs, results = mug_segments
    empty = round_trip(cloud_message(TYPES, header(), segments_cloud(segs[2:], results[2:])))
    assert (empty.width, len(empty.data), len(empty.fields)) == (0, 0, 6)
    from dataclasses import replace

    with pytest.raises(ValueError, match="return_points"):
        segments_cloud(segs[:1], [replace(results[0], points=None)])
    with pytest.raises(ValueError):
        segments_cloud(segs, results[:2])
    with pytest.raises(ValueError):
        cloud_message(TYPES, header(), np.zeros(3, dtype=np.float32))


# -- MarkerArray ------------------------------------------------------------------------------------------------

def test_marker_array(mug_segments):
    segs, results = mug_segments
    msg = round_trip(marker_array(TYPES, header(), segs, results, lifetime_s=0.25))
    markers = msg.markers
    assert markers[0].action == 3 and markers[0].ns == ""  # DELETEALL first
    assert len(markers) == 1 + 5 * 2  # the mask without depth gets no markers
    by_key = {(m.ns, m.id): m for m in markers[1:]}
    kinds = ("box", "centroid", "label", "axis", "grasp")
    assert set(by_key) == {(f"semsam/{kind}", i) for kind in kinds for i in (4, 7)}
    for seg, res in zip(segs[:2], results[:2]):
        box, sphere = by_key["semsam/box", seg.id], by_key["semsam/centroid", seg.id]
        text, arrow = by_key["semsam/label", seg.id], by_key["semsam/axis", seg.id]
        assert (box.type, sphere.type, text.type, arrow.type) == (1, 2, 9, 0)
        for m in (box, sphere, text, arrow):
            assert m.action == 0 and m.header.frame_id == "camera_color_optical_frame"
            assert (m.lifetime.sec, m.lifetime.nanosec) == (0, 250_000_000)
            np.testing.assert_allclose([m.color.r, m.color.g, m.color.b], np.array(segment_color(seg.id)) / 255)
        p, q = box.pose.position, box.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], res.box_center)
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], res.orientation)
        np.testing.assert_allclose([box.scale.x, box.scale.y, box.scale.z], np.maximum(res.size, 0.002))
        assert 0 < box.color.a < 1 and text.color.a == 1.0
        s = sphere.pose.position
        np.testing.assert_allclose([s.x, s.y, s.z], res.position)
        assert text.text == f"{seg.label} #{seg.id}" and text.pose.position.y < res.box_center[1]  # lifted up (-y)
        start, end = arrow.points
        np.testing.assert_allclose([start.x, start.y, start.z], res.position)
        direction = np.array([end.x - start.x, end.y - start.y, end.z - start.z])
        np.testing.assert_allclose(direction / np.linalg.norm(direction), res.axis, atol=1e-12)
        assert np.linalg.norm(direction) == pytest.approx(max(res.size[0] / 2, 0.02))
        approach_from, approach_to = by_key["semsam/grasp", seg.id].points  # towards the grasp point, against the normal
        np.testing.assert_allclose([approach_to.x, approach_to.y, approach_to.z], res.grasp_point, atol=1e-12)
        approach = np.array([approach_to.x - approach_from.x, approach_to.y - approach_from.y,
                             approach_to.z - approach_from.z])
        np.testing.assert_allclose(approach / np.linalg.norm(approach), -res.grasp_normal, atol=1e-9)
    body_box = by_key["semsam/box", 4]
    np.testing.assert_allclose(body_box.scale.x, gs.MUG_HEIGHT, atol=0.002)  # the body's box: 10 cm tall


def test_marker_array_with_nothing_only_clears():
    msg = round_trip(marker_array(TYPES, header("map"), [], [], up=(0, 0, 1)))
    assert len(msg.markers) == 1 and msg.markers[0].action == 3 and msg.markers[0].header.frame_id == "map"
