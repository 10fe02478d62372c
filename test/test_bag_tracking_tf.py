"""`semsam bag --track` with depth, camera_info and the bag's /tf: the tracks' 3D anchors follow a moving camera
through a 100 px jump (the TF buffer: chains, interpolation, static transforms)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.bag import BagOptions, process_bag  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, make_header, msg_to_segments  # noqa: E402
from semsam_ros.ros.params import NodeParams  # noqa: E402
from semsam_ros.tracking.tf import TransformBuffer  # noqa: E402
from test_bag import SEC, T0, TYPES, raw_image, read_bag, write_bag  # noqa: E402
from tracking_scenes import camera_sequence, iou  # noqa: E402

CAM, DEPTH, INFO = "/cam/image_raw", "/cam/depth", "/cam/camera_info"
DISC = (220, 60, 60)
PERIOD = SEC // 10
LIFT = 0.5  # base_link is LIFT below the camera: odom -> base_link -> camera_optical must be composed


class ColourOracle:
    """A predictor for bags: the 'embedding' is the frame itself; a prompt on the disc colour gets the disc, any
    other prompt the rest of the image, at every level asked."""

    def encode_batch(self, images):
        return list(images)

    def set_embedding(self, embedding) -> None:
        self.rgb = embedding

    def predict(self, points, boxes, levels=(1, 2, 3, 4, 5, 6)):
        on_disc = np.all(self.rgb == DISC, axis=2)
        prompts = [*np.reshape(points, (-1, 2))]
        logits = np.full((len(prompts), len(levels), *on_disc.shape), -5.0, np.float32)
        for i, (x, y) in enumerate(prompts):
            logits[i][:, on_disc == on_disc[int(round(y)), int(round(x))]] = 5.0
        return SimpleNamespace(mask_logits=logits, iou_scores=np.full(logits.shape[:2], 0.9, np.float32))


def tf_message(stamp_ns: int, parent: str, child: str, xyz, quaternion=(0.0, 0.0, 0.0, 1.0)):
    x, y, z = (float(v) for v in xyz)
    qx, qy, qz, qw = quaternion
    transform = TYPES.make("geometry_msgs/msg/Transform",
                           translation=TYPES.make("geometry_msgs/msg/Vector3", x=x, y=y, z=z),
                           rotation=TYPES.make("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))
    stamped = TYPES.make("geometry_msgs/msg/TransformStamped", header=make_header(TYPES, stamp_ns, parent),
                         child_frame_id=child, transform=transform)
    return TYPES.make("tf2_msgs/msg/TFMessage", transforms=[stamped])


def camera_bag(path, with_tf: bool = True):
    """The camera_sequence as a bag: image, depth (32FC1) and camera_info per frame, /tf odom -> base_link twice
    per frame (20 ms either side of it, so a frame's pose is interpolated) and /tf_static base_link -> camera."""
    frames, poses, truth, camera = camera_sequence()
    h, w = frames[0].rgb.shape[:2]
    messages = []
    if with_tf:
        messages.append(("/tf_static", "tf2_msgs/msg/TFMessage", T0,
                         tf_message(T0, "base_link", "camera_optical", (0.0, 0.0, LIFT))))
    for f, (frame, pose) in enumerate(zip(frames, poses)):
        stamp = T0 + f * PERIOD
        hdr = make_header(TYPES, stamp, "camera_optical")
        messages.append((CAM, "sensor_msgs/msg/Image", stamp, raw_image(hdr, "rgb8", frame.rgb)))
        messages.append((DEPTH, "sensor_msgs/msg/Image", stamp + 1, raw_image(hdr, "32FC1", frame.depth)))
        info = TYPES.make("sensor_msgs/msg/CameraInfo", header=hdr, height=h, width=w, distortion_model="",
                          d=np.zeros(0), k=camera.k.ravel(), r=np.eye(3).ravel(), p=np.zeros(12),
                          binning_x=0, binning_y=0,
                          roi=TYPES.make("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0,
                                         width=0, do_rectify=False))
        messages.append((INFO, "sensor_msgs/msg/CameraInfo", stamp + 2, info))
        if with_tf:
            for dt in (-SEC // 50, SEC // 50):
                xyz = (pose[0, 3], pose[1, 3], pose[2, 3] - LIFT)
                messages.append(("/tf", "tf2_msgs/msg/TFMessage", stamp + dt,
                                 tf_message(stamp + dt, "odom", "base_link", xyz)))
    messages.sort(key=lambda m: m[2])
    return write_bag(path, "sqlite3", messages), truth


def tracked(out) -> list[dict[int, np.ndarray]]:
    return [{s.track_id: s.mask for s in msg_to_segments(msg)} for _, msg, _ in read_bag(out)[f"{CAM}/segments"]]


@pytest.mark.parametrize("with_tf", [True, False])
def test_bag_tf_keeps_a_track_through_a_100_px_camera_jump(tmp_path, with_tf):
    bag, truth = camera_bag(tmp_path / "in", with_tf)
    centre = np.argwhere(truth[0]).mean(axis=0)[::-1]
    params = NodeParams(track_frame="odom")
    options = BagOptions([CAM], prompts={CAM: [PromptRequest(0, np.array([centre]), levels=(3,))]}, track=True,
                         params=params, depth_topics={CAM: DEPTH}, progress=False)
    logs = []
    summary = process_bag(bag, tmp_path / "out", ColourOracle(), options, log=logs.append)
    assert summary.segmented == len(truth) and summary.errors == {}
    got = tracked(tmp_path / "out")
    assert len(got) == len(truth) and all(iou(g[0], t) > 0.95 for g, t in zip(got[:10], truth))
    if with_tf:  # the anchor re-projected through the bag's TF lands on the disc after the jump
        assert all(iou(g[0], t) > 0.95 for g, t in zip(got[10:], truth[10:]))
    else:  # image motion alone follows the wall and loses it
        assert any("no /tf or /tf_static" in line for line in logs)
        assert not any(0 in g and iou(g[0], t) > 0.5 for g, t in zip(got[10:], truth[10:]))


def test_transform_buffer_chains_interpolates_and_refuses_to_extrapolate():
    buffer = TransformBuffer(tolerance_ns=10)
    half_turn_z = (0.0, 0.0, 1.0, 0.0)
    buffer.add("map", "odom", 0, (1.0, 0.0, 0.0), (0, 0, 0, 1), static=True)
    buffer.add("odom", "base", 100, (0.0, 0.0, 0.0), (0, 0, 0, 1))
    buffer.add("odom", "base", 200, (2.0, 0.0, 0.0), half_turn_z)
    buffer.add("/base", "cam", 0, (0.0, 1.0, 0.0), (0, 0, 0, 1), static=True)
    pose = buffer.lookup("map", "cam", 150)  # halfway: x 1 + 1, a quarter turn about z, cam 1 m along base's y
    assert np.allclose(pose[:3, 3], [2.0 - 1.0, 0.0, 0.0]) and np.allclose(pose[:3, :3] @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(buffer.lookup("map", "cam", 205)[:3, 3], [3.0, -1.0, 0.0])  # the last one, within 10 ns
    assert buffer.lookup("map", "cam", 250) is None and buffer.lookup("map", "cam", 50) is None
    assert np.allclose(buffer.lookup("cam", "map", 100), np.linalg.inv(buffer.lookup("map", "cam", 100)))
    assert np.allclose(buffer.lookup("cam", "cam", 7), np.eye(4))
    assert buffer.lookup("map", "elsewhere", 150) is None
