"""launch_testing: the real node with a tiny random checkpoint, fed images and prompts over ROS 2.

Run with `colcon test --packages-select semsam_ros` (or `launch_test test/test_node_launch.py`) in a sourced ROS 2
workspace; skipped where rclpy or launch_testing is absent.
"""
from __future__ import annotations

import importlib.util
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs a ROS 2 runtime (rclpy): source /opt/ros/<distro>/setup.bash")
pytest.importorskip("launch_testing", reason="needs launch_testing (ROS 2 package launch_testing)")

import launch  # noqa: E402
import launch_ros.actions  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from geometry_msgs.msg import Point  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from semsam_ros.msg import Prompt, SegmentArray  # noqa: E402
from semsam_ros.ros.convert import make_header, msg_to_segments, stamp_to_ns  # noqa: E402
from semsam_ros.ros.images import rgb_to_image  # noqa: E402
from semsam_ros.ros.msgtypes import MessageTypes  # noqa: E402
from semsam_ros.srv import Segment as SegmentService  # noqa: E402
from semsam_ros.srv import SetVocabulary  # noqa: E402

H, W = 96, 128
INPUT_SIZE = 96  # the image is used as is (short side == input_size)
POINT = (30.0, 20.0)
PROMPT_ID = 7
TIMEOUT_S = 90.0
CHECKPOINT = Path(tempfile.mkdtemp(prefix="semsam_launch_")) / "tiny.pth"
SEMANTICS = importlib.util.find_spec("transformers") is not None  # labels from a tiny random CLIP when possible


def make_image() -> np.ndarray:
    ys, xs = np.mgrid[:H, :W]
    return np.dstack([xs * 4, ys * 5, ((xs // 8 + ys // 8) % 2) * 255]).astype(np.uint8)


@pytest.mark.launch_test
def generate_test_description():
    from semsam_ros.testing import make_tiny_checkpoint

    make_tiny_checkpoint(CHECKPOINT)
    semantics = {}
    if SEMANTICS:
        from semsam_ros.semantics.testing import make_tiny_clip

        semantics = {"semantics": True, "clip_model": str(make_tiny_clip(CHECKPOINT.parent / "clip"))}
    node = launch_ros.actions.Node(
        package="semsam_ros",
        executable="semsam_node",
        name="semsam",
        output="screen",
        parameters=[{"checkpoint": str(CHECKPOINT), "device": "cpu", "input_size": INPUT_SIZE,
                     "min_region_area": 0, "buffer_size": 4, **semantics}],
        remappings=[("image", "/test/image"), ("camera_info", "/test/camera_info")],
    )
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"semsam": node}


class TestSemsamNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.types = MessageTypes.from_rclpy()

    @classmethod
    def tearDownClass(cls) -> None:
        rclpy.shutdown()

    def setUp(self) -> None:
        self.node = rclpy.create_node("semsam_launch_test")
        self.images = self.node.create_publisher(Image, "/test/image", 10)
        self.prompts = self.node.create_publisher(Prompt, "/semsam/prompt", 10)
        self.received: dict[str, list] = {"segments": [], "overlay": [], "label_image": []}
        for name, cls in (("segments", SegmentArray), ("overlay", Image), ("label_image", Image)):
            self.node.create_subscription(cls, f"/semsam/{name}", self.received[name].append, 10)
        self.stamps: list[int] = []

    def tearDown(self) -> None:
        self.node.destroy_node()

    def publish_frame(self, encoding: str = "rgb8") -> None:
        stamp_ns = time.time_ns()
        msg = rgb_to_image(self.types, make_image(), make_header(self.types, stamp_ns, "test_cam"))
        msg.encoding = encoding
        self.images.publish(msg)
        self.stamps.append(stamp_ns)

    def publish_prompt(self) -> None:
        prompt = Prompt()
        prompt.prompt_id = PROMPT_ID
        prompt.points = [Point(x=POINT[0], y=POINT[1], z=0.0)]
        self.prompts.publish(prompt)

    def spin_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        next_frame = 0.0
        while not condition():
            self.assertLess(time.monotonic(), deadline, f"timed out waiting for {what}")
            if time.monotonic() >= next_frame:
                self.publish_frame()
                self.publish_prompt()
                next_frame = time.monotonic() + 0.5
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def expected_segments(self):
        """The same prompt through the Python API."""
        import semsam_ros
        from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt

        predictor = semsam_ros.Predictor(semsam_ros.load_model(CHECKPOINT), device="cpu", short_side=INPUT_SIZE)
        predictor.set_image(make_image())
        pred = predictor.predict(points=np.array([POINT]))
        params = PostprocessParams(iou_threshold=0.5, dedupe_iou=0.95, hole_area=0, island_area=0)
        return postprocess_prompt(pred.mask_logits[0], pred.iou_scores[0], params, prompt_id=PROMPT_ID, point=POINT)

    def test_prompt_gives_the_python_api_masks(self) -> None:
        self.spin_until(lambda: self.received["segments"], "a SegmentArray")
        msg = self.received["segments"][0]
        self.assertEqual(msg.header.frame_id, "test_cam")
        self.assertIn(stamp_to_ns(msg.header.stamp), self.stamps)
        self.assertEqual((msg.height, msg.width), (H, W))
        self.assertTrue(msg.model_id.startswith("tiny-"), msg.model_id)
        got = sorted(msg_to_segments(msg), key=lambda s: s.level)
        expected = sorted(self.expected_segments(), key=lambda s: s.level)
        self.assertEqual([s.level for s in got], [s.level for s in expected])
        for a, b in zip(got, expected):
            self.assertEqual(a.prompt_id, PROMPT_ID)
            np.testing.assert_array_equal(a.mask, b.mask)

    def test_overlay_and_label_image(self) -> None:
        self.spin_until(lambda: self.received["overlay"] and self.received["label_image"], "overlay and labels")
        overlay, labels = self.received["overlay"][0], self.received["label_image"][0]
        self.assertEqual((overlay.encoding, overlay.height, overlay.width), ("rgb8", H, W))
        self.assertEqual((labels.encoding, labels.height, labels.width), ("16UC1", H, W))

    def test_segment_service_with_an_image(self) -> None:
        client = self.node.create_client(SegmentService, "/semsam/segment")
        self.assertTrue(client.wait_for_service(timeout_sec=TIMEOUT_S))
        request = SegmentService.Request()
        request.prompt.prompt_id = 3
        request.prompt.points = [Point(x=POINT[0], y=POINT[1], z=0.0)]
        request.image = rgb_to_image(self.types, make_image(), make_header(self.types, 123_000_000_456, "srv_cam"))
        future = client.call_async(request)
        deadline = time.monotonic() + TIMEOUT_S
        while not future.done():
            self.assertLess(time.monotonic(), deadline, "timed out waiting for ~/segment")
            rclpy.spin_once(self.node, timeout_sec=0.05)
        response = future.result()
        self.assertTrue(response.success, response.message)
        self.assertEqual(response.result.header.frame_id, "srv_cam")
        self.assertEqual(stamp_to_ns(response.result.header.stamp), 123_000_000_456)
        self.assertTrue(all(s.prompt_id == 3 for s in response.result.segments))

    def call(self, client, request):
        self.assertTrue(client.wait_for_service(timeout_sec=TIMEOUT_S))
        future = client.call_async(request)
        deadline = time.monotonic() + TIMEOUT_S
        while not future.done():
            self.assertLess(time.monotonic(), deadline, "timed out waiting for a service reply")
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return future.result()

    def test_set_vocabulary_service(self) -> None:
        client = self.node.create_client(SetVocabulary, "/semsam/set_vocabulary")
        response = self.call(client, SetVocabulary.Request(parts=["knob", "spout"]))
        if not SEMANTICS:
            self.assertFalse(response.success)
            self.assertIn("semantics is off", response.message)
            return
        self.assertTrue(response.success, response.message)
        self.assertTrue(response.message.startswith("vocabulary changed"), response.message)
        self.assertEqual(list(response.parts), ["knob", "spout"])
        self.assertGreater(len(response.objects), 10)  # the shipped objects are kept
        again = self.call(client, SetVocabulary.Request())  # both empty: a query
        self.assertTrue(again.success and again.message.startswith("vocabulary unchanged"), again.message)
        self.assertEqual(list(again.parts), ["knob", "spout"])

    def test_bad_encoding_does_not_kill_the_node(self) -> None:
        for _ in range(3):
            self.publish_frame(encoding="bayer_rggb8")
            rclpy.spin_once(self.node, timeout_sec=0.05)
        self.received["segments"].clear()
        self.spin_until(lambda: self.received["segments"], "a SegmentArray after bad frames")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
