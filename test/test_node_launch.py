"""launch_testing: the real node with a tiny random checkpoint, driven over ROS 2 on its documented names.

In a sourced ROS 2 workspace where semsam_ros is built (`colcon build --packages-select semsam_ros`), from any
directory: `colcon test --packages-select semsam_ros`, `launch_test <path>/test/test_node_launch.py`, or
`python3 -m pytest <path>/test/test_node_launch.py` (Humble needs pytest < 8 for launch tests: docs/ros.md).
Skipped where rclpy or launch_testing is absent.
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
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from semsam_ros.msg import Prompt, SegmentArray  # noqa: E402
from semsam_ros.ros.convert import make_header, msg_to_segments, stamp_to_ns  # noqa: E402
from semsam_ros.ros.images import rgb_to_image  # noqa: E402
from semsam_ros.ros.msgtypes import MessageTypes  # noqa: E402
from semsam_ros.srv import Segment as SegmentService  # noqa: E402
from semsam_ros.srv import SetVocabulary  # noqa: E402

NODE = "/semsam"  # the node's name: its topics and services are /semsam/<name> (docs/ros.md)
H, W = 96, 128
SHORT_SIDE = 96  # the image is used as is (its short side equals the node's input_size)
SCORE_THRESHOLD = -1.0  # the tiny random model's IoU scores lie near 0: keep every mask
POINT = (30.0, 20.0)
TIMEOUT_S = 90.0
CHECKPOINT = Path(tempfile.mkdtemp(prefix="semsam_launch_")) / "tiny.pth"
SEMANTICS = importlib.util.find_spec("transformers") is not None  # labels from a tiny random CLIP when possible


def make_image(seed: int = 0) -> np.ndarray:
    ys, xs = np.mgrid[:H, :W]
    return np.dstack([xs * 2 + seed, ys * 3, ((xs // 8 + ys // 8) % 2) * 255]).astype(np.uint8)


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
        parameters=[{"checkpoint": str(CHECKPOINT), "device": "cpu", "input_size": SHORT_SIDE,
                     "score_threshold": SCORE_THRESHOLD, "min_region_area": 0, "buffer_size": 4, **semantics}],
        remappings=[("image", "/test/image"), ("camera_info", "/test/camera_info")],
    )
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"semsam": node}


def python_api_segments(image: np.ndarray, prompt_id: int) -> list:
    """The same point prompt through the Python API with the node's thresholds."""
    import semsam_ros
    from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt

    predictor = semsam_ros.Predictor(semsam_ros.load_model(CHECKPOINT), device="cpu", short_side=SHORT_SIDE)
    predictor.set_image(image)
    pred = predictor.predict(points=np.array([POINT]))
    params = PostprocessParams(iou_threshold=SCORE_THRESHOLD, hole_area=0, island_area=0, keep_best_when_none=False)
    return postprocess_prompt(pred.mask_logits[0], pred.iou_scores[0], params, prompt_id=prompt_id, point=POINT)


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
        self.prompts = self.node.create_publisher(Prompt, f"{NODE}/prompt", 10)
        self.received: dict[str, list] = {"segments": [], "overlay": [], "label_image": []}
        for name, cls in (("segments", SegmentArray), ("overlay", Image), ("label_image", Image)):
            self.node.create_subscription(cls, f"{NODE}/{name}", self.received[name].append, 10)
        self.stamps: list[int] = []  # the stamps of the frames this test published

    def tearDown(self) -> None:
        self.node.destroy_node()

    # --- helpers --------------------------------------------------------------------------------------------------

    def publish_frame(self, encoding: str = "rgb8", image: np.ndarray | None = None) -> int:
        stamp_ns = time.time_ns()
        msg = rgb_to_image(self.types, make_image() if image is None else image,
                           make_header(self.types, stamp_ns, "test_cam"))
        msg.encoding = encoding
        self.images.publish(msg)
        self.stamps.append(stamp_ns)
        return stamp_ns

    def publish_prompt(self, prompt_id: int, stamp_ns: int) -> None:
        """A point prompt stamped on a frame of ours, so that it is answered on that frame."""
        prompt = Prompt()
        prompt.header.stamp.sec, prompt.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        prompt.prompt_id = prompt_id
        prompt.points = [Point(x=POINT[0], y=POINT[1], z=0.0)]
        self.prompts.publish(prompt)

    def answers(self, prompt_id: int) -> list:
        """The SegmentArrays that answer ``prompt_id`` on a frame this test published."""
        return [m for m in self.received["segments"]
                if stamp_to_ns(m.header.stamp) in self.stamps and any(s.prompt_id == prompt_id for s in m.segments)]

    def spin_until(self, condition, prompt_id: int | None = None, timeout: float = TIMEOUT_S) -> bool:
        """Spin (publishing a frame, and ``prompt_id`` stamped on it, every 0.5 s) until ``condition()``; False on
        timeout."""
        deadline = time.monotonic() + timeout
        next_frame = 0.0
        while not condition():
            if time.monotonic() >= deadline:
                return False
            if prompt_id is not None and time.monotonic() >= next_frame:
                self.publish_prompt(prompt_id, self.publish_frame())
                next_frame = time.monotonic() + 0.5
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return True

    def call(self, client, request):
        self.assertTrue(client.wait_for_service(timeout_sec=TIMEOUT_S), f"no service {client.srv_name}")
        future = client.call_async(request)
        self.assertTrue(self.spin_until(future.done), f"timed out waiting for {client.srv_name}")
        return future.result()

    def lifecycle(self, transition_id: int) -> int:
        """Trigger a transition; returns the state id after it."""
        change = self.node.create_client(ChangeState, f"{NODE}/change_state")
        result = self.call(change, ChangeState.Request(transition=Transition(id=transition_id)))
        self.assertTrue(result.success, f"transition {transition_id} failed")
        return self.call(self.node.create_client(GetState, f"{NODE}/get_state"), GetState.Request()).current_state.id

    def assert_python_api_masks(self, msg, image: np.ndarray, prompt_id: int) -> None:
        got = sorted((s for s in msg_to_segments(msg) if s.prompt_id == prompt_id), key=lambda s: s.level)
        expected = sorted(python_api_segments(image, prompt_id), key=lambda s: s.level)
        self.assertEqual([s.level for s in got], [s.level for s in expected])
        self.assertGreater(len(got), 0)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.mask, b.mask)
            self.assertAlmostEqual(a.iou_score, b.iou_score, places=5)

    # --- tests ----------------------------------------------------------------------------------------------------

    def test_prompt_topic_gives_the_python_api_masks(self) -> None:
        self.assertTrue(self.spin_until(lambda: self.answers(11), prompt_id=11), "no answer on /semsam/prompt")
        msg = self.answers(11)[0]
        self.assertEqual(msg.header.frame_id, "test_cam")
        self.assertEqual((msg.height, msg.width), (H, W))
        import semsam_ros

        self.assertEqual(msg.model_id, semsam_ros.load_model(CHECKPOINT).model_id)
        self.assert_python_api_masks(msg, make_image(), 11)

    def test_overlay_and_label_image(self) -> None:
        def both() -> bool:
            ours = [m for m in self.received["overlay"] + self.received["label_image"]
                    if stamp_to_ns(m.header.stamp) in self.stamps]
            return {m.encoding for m in ours} >= {"rgb8", "16UC1"}

        self.assertTrue(self.spin_until(both, prompt_id=12), "no overlay and label image")
        for msg in self.received["overlay"] + self.received["label_image"]:
            self.assertEqual((msg.height, msg.width, msg.header.frame_id), (H, W, "test_cam"))

    def test_segment_service_with_its_own_image(self) -> None:
        client = self.node.create_client(SegmentService, f"{NODE}/segment")
        image = make_image(seed=40)
        request = SegmentService.Request()
        request.prompt.prompt_id = 13
        request.prompt.points = [Point(x=POINT[0], y=POINT[1], z=0.0)]
        request.image = rgb_to_image(self.types, image, make_header(self.types, 123_000_000_456, "srv_cam"))
        response = self.call(client, request)
        self.assertTrue(response.success, response.message)
        self.assertEqual(response.result.header.frame_id, "srv_cam")
        self.assertEqual(stamp_to_ns(response.result.header.stamp), 123_000_000_456)
        self.assert_python_api_masks(response.result, image, 13)

        empty = SegmentService.Request()  # no point, box or text: refused, never segmented
        empty.image = request.image
        refused = self.call(client, empty)
        self.assertFalse(refused.success)
        self.assertIn("no point, box or text", refused.message)

    def test_set_vocabulary_service(self) -> None:
        client = self.node.create_client(SetVocabulary, f"{NODE}/set_vocabulary")
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
            self.publish_prompt(14, self.publish_frame(encoding="bayer_rggb8"))
            rclpy.spin_once(self.node, timeout_sec=0.05)
        self.assertTrue(self.spin_until(lambda: self.answers(15), prompt_id=15), "no answer after bad frames")
        self.assertEqual(self.answers(14), [])  # prompts stamped on undecodable frames are not answered

    def test_lifecycle_deactivate_then_activate(self) -> None:
        self.assertEqual(self.lifecycle(Transition.TRANSITION_DEACTIVATE), State.PRIMARY_STATE_INACTIVE)
        try:
            self.assertFalse(self.spin_until(lambda: self.answers(16), prompt_id=16, timeout=3.0),
                             "an inactive node answered a prompt")
        finally:
            self.assertEqual(self.lifecycle(Transition.TRANSITION_ACTIVATE), State.PRIMARY_STATE_ACTIVE)
        self.assertTrue(self.spin_until(lambda: self.answers(17), prompt_id=17), "no answer after activate")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
