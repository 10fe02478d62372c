"""The semsam_ros lifecycle node: ROS topics, services, parameters and diagnostics around a ``Scheduler``.

The only module of the package that imports rclpy (nothing imports it but the node script and launch files).
Transitions: configure loads the weights and warms up (a checkpoint that does not load fails it with the
reason), activate subscribes and starts the worker, deactivate stops both and frees GPU memory, cleanup drops the
model. ``autostart`` (default true) configures and activates at start. Several cameras (parameter ``cameras``):
one model, each camera's inputs and outputs as ``ros.cameras`` names them; ``cameras`` is read at start.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import fields
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from message_filters import ApproximateTimeSynchronizer, Subscriber
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from tf2_ros import Buffer, TransformException, TransformListener
from visualization_msgs.msg import MarkerArray

from semsam_ros.geometry import CameraModel, project_point
from semsam_ros.msg import Prompt, SegmentArray
from semsam_ros.ros.cameras import CAMERA_FIELDS, CameraParams, build_cameras, camera_defaults
from semsam_ros.ros import services
from semsam_ros.ros.convert import (
    PromptRequest,
    label_info,
    prompt_from_msg,
    stamp_to_ns,
    transform_matrix,
    transform_point,
)
from semsam_ros.ros.frame_processor import Output
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.outputs import build_outputs
from semsam_ros.ros.params import RUNTIME_PARAMS, NodeParams
from semsam_ros.ros.pipeline import ModelPipeline, free_gpu_memory, load_predictor
from semsam_ros.ros.scheduler import Scheduler
from semsam_ros.srv import Segment as SegmentService
from semsam_ros.srv import SetVocabulary, Track, Untrack

try:  # optional: the Detection2DArray mirror and LabelInfo are published only when vision_msgs is installed
    from vision_msgs.msg import Detection2DArray, LabelInfo
except ImportError:
    Detection2DArray = LabelInfo = None

CLICK_PROMPT_ID = 1000  # Segment.prompt_id of masks prompted by clicks (RViz /clicked_point, rqt_image_view)
TF_TIMEOUT_S = 0.2
WORKER_POLL_S = 0.1
LABEL_INFO, DIAGNOSTICS = "~/label_info", "/diagnostics"  # node-wide outputs (one vocabulary for all cameras)


class SemsamNode(LifecycleNode):
    """Semantic-SAM segmentation of a camera stream, prompted by topics, services and clicks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("semsam", **kwargs)
        defaults = NodeParams()
        for f in fields(NodeParams):
            default, descriptor = getattr(defaults, f.name), ParameterDescriptor(description=f.metadata["doc"])
            if default == []:  # an empty list would be typed as a byte array: these are lists of names
                self.declare_parameter(f.name, Parameter.Type.STRING_ARRAY, descriptor)
                if self.get_parameter_or(f.name).type_ == Parameter.Type.NOT_SET:  # not in the parameter file
                    self.set_parameters([Parameter(f.name, Parameter.Type.STRING_ARRAY, [])])
            else:
                self.declare_parameter(f.name, default, descriptor)
        transport = self.get_parameter("image_transport").value
        for name in self.get_parameter("cameras").value:
            camera = camera_defaults(name, transport)
            for key in CAMERA_FIELDS:
                self.declare_parameter(f"{name}.{key}", getattr(camera, key))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._types = MessageTypes.from_rclpy()
        self._inputs = MutuallyExclusiveCallbackGroup()
        self._reentrant = ReentrantCallbackGroup()  # services and clicks wait (on the worker, on TF)
        self._core: Scheduler | None = None
        self._hardware_id = ""
        self._outputs: dict[str, Any] = {}
        self._service_handles: list[Any] = []
        self._input_subs: list[Any] = []
        self._syncs: list[ApproximateTimeSynchronizer] = []
        self._camera_info: dict[str, CameraInfo] = {}
        self._tf_buffer: Buffer | None = None
        self._tf_listener: TransformListener | None = None
        self._diagnostics_timer: Any = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False

    # --- parameters -------------------------------------------------------------------------------------------

    def _params(self, overrides: dict[str, Any] | None = None) -> NodeParams:
        values = {f.name: _plain(self.get_parameter(f.name).value) for f in fields(NodeParams)}
        values.update(overrides or {})
        return NodeParams.from_dict(values)

    def _cameras(self, params: NodeParams) -> list[CameraParams]:
        values = {f"{c}.{k}": self.get_parameter(f"{c}.{k}").value for c in params.cameras for k in CAMERA_FIELDS}
        return build_cameras(list(params.cameras), values, params.image_transport)

    def _on_set_parameters(self, changes: list[Any]) -> SetParametersResult:
        names = {f.name for f in fields(NodeParams)}
        ours = {p.name: _plain(p.value) for p in changes if p.name in names}
        try:
            candidate = self._params(ours)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        reasons = candidate.validate()
        if reasons:
            return SetParametersResult(successful=False, reason="; ".join(reasons))
        if self._core is not None:
            try:
                vocabulary_changed = self._core.update_params(candidate)
            except ValueError as exc:  # a vocabulary file that does not load
                return SetParametersResult(successful=False, reason=str(exc))
            if vocabulary_changed:
                self.get_logger().info(self._core.vocabulary_summary(True))
                if self._active and LABEL_INFO in self._outputs:
                    self._publish_label_info()
            later = sorted(set(ours) - RUNTIME_PARAMS)
            if later:
                self.get_logger().info(f"{', '.join(later)} will apply at the next configure/activate")
        return SetParametersResult(successful=True)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self._params()
        reasons = params.validate()
        if reasons:
            self.get_logger().error(f"configure failed: {'; '.join(reasons)}")
            return TransitionCallbackReturn.FAILURE
        try:
            cameras = self._cameras(params)
            predictor, model_id = load_predictor(params)
            wanted_points = lambda: any(self._wanted(c.output("points")) for c in cameras)  # noqa: E731
            pipeline = ModelPipeline(params, str(predictor.device), wanted_points)
        except Exception as exc:  # noqa: BLE001  (any load failure fails the transition with its reason)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._core = Scheduler(params, predictor, self._types, pipeline, model_id=model_id,
                               log=self.get_logger().warning, cameras=cameras, camera_pose=self._camera_pose)
        self._hardware_id = f"{params.backend}/{params.precision} on {predictor.device}"
        self._create_outputs()
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)
        self.get_logger().info(f"configured: {model_id} ({self._hardware_id}), mode {params.mode}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self._params()
        self._subscribe(params)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="semsam_worker", daemon=True)
        self._worker.start()
        self._active = True
        result = super().on_activate(state)
        if LABEL_INFO in self._outputs:  # latched; lifecycle publishers publish only once active
            self._publish_label_info()
        for cam in self._core.cameras:
            depth = f", depth {self.resolve_topic_name(cam.depth)}" if params.use_depth else ""
            self.get_logger().info(
                f"activated{' ' + cam.name if cam.name else ''}: images on {self.resolve_topic_name(cam.image_topic)}"
                f"{depth}, results on {self.resolve_topic_name(cam.output('segments'))}")
        self.get_logger().info(f"prompts on {self.resolve_topic_name('~/prompt')}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info("deactivated: inputs unsubscribed, worker stopped, buffered frames dropped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("cleaned up: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self.get_logger().info(f"shut down from state {state.label}")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self.get_logger().error(f"error in state {state.label}: everything stopped and released")
        return TransitionCallbackReturn.SUCCESS

    def teardown(self) -> None:
        """Stop everything and drop the model, whatever the state (shutdown, error, process exit)."""
        self._deactivate()
        self._cleanup()

    def _deactivate(self) -> None:
        self._active = False
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs, self._syncs = [], []
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._core is not None:
            self._core.release()
        free_gpu_memory()

    def _cleanup(self) -> None:
        for name, pub in self._outputs.items():
            if name == DIAGNOSTICS:
                self.destroy_publisher(pub)
            else:
                self.destroy_lifecycle_publisher(pub)
        self._outputs = {}
        for service in self._service_handles:
            self.destroy_service(service)
        self._service_handles = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._tf_listener is not None:
            self._tf_listener.unregister()
            self._tf_listener = self._tf_buffer = None
        self._core = None
        gc.collect()
        free_gpu_memory()

    # --- wiring -----------------------------------------------------------------------------------------------

    def _create_outputs(self) -> None:
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        outputs = {"segments": SegmentArray, "overlay": Image, "label_image": Image, "markers": MarkerArray,
                   "points": PointCloud2, "detections": Detection2DArray}
        self._outputs = {}
        if Detection2DArray is None:
            del outputs["detections"]
        else:
            self._outputs[LABEL_INFO] = self.create_lifecycle_publisher(LabelInfo, LABEL_INFO, latched)
        for cam in self._core.cameras:  # keyed by topic: ~/segments, or ~/<camera>/segments
            self._outputs.update({cam.output(name): self.create_lifecycle_publisher(cls, cam.output(name), reliable)
                                  for name, cls in outputs.items()})
        self._outputs[DIAGNOSTICS] = self.create_publisher(DiagnosticArray, DIAGNOSTICS, reliable)
        def answer(function: Any) -> Any:  # a ros.services answer as an rclpy service callback
            return lambda request, response: function(self._core, request, response)

        group = self._inputs
        self._service_handles = [
            self.create_service(SegmentService, "~/segment", self._on_segment, callback_group=self._reentrant),
            self.create_service(Trigger, "~/clear_prompts", answer(services.clear_prompts), callback_group=group),
            self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary, callback_group=group),
            self.create_service(Track, "~/track", answer(services.track), callback_group=group),
            self.create_service(Untrack, "~/untrack", answer(services.untrack), callback_group=group),
        ]
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics, callback_group=self._inputs)

    def _subscribe(self, params: NodeParams) -> None:
        sensor = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=params.input_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT if params.input_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for cam in self._core.cameras:
            self._subscribe_camera(cam, params, sensor, reliable)
        self._input_subs += [
            self.create_subscription(Prompt, "~/prompt", self._on_prompt, reliable, callback_group=self._inputs),
            self.create_subscription(PointStamped, "/clicked_point", self._on_clicked_point, reliable,
                                     callback_group=self._reentrant),
        ]

    def _subscribe_camera(self, cam: CameraParams, params: NodeParams, sensor: QoSProfile,
                          reliable: QoSProfile) -> None:
        """One camera's image (+ depth and camera_info, synchronised, with ``use_depth``) and image clicks."""
        image_type = CompressedImage if cam.image_transport == "compressed" else Image
        group = self._inputs
        if params.use_depth:
            filters = [Subscriber(self, image_type, cam.image_topic, qos_profile=sensor, callback_group=group),
                       Subscriber(self, Image, cam.depth, qos_profile=sensor, callback_group=group),
                       Subscriber(self, CameraInfo, cam.camera_info, qos_profile=sensor, callback_group=group)]
            sync = ApproximateTimeSynchronizer(filters, queue_size=10, slop=params.sync_slop)
            sync.registerCallback(lambda image, depth, info: self._on_synced(cam.name, image, depth, info))
            self._syncs.append(sync)
            self._input_subs += [f.sub for f in filters]
        else:
            self._input_subs += [
                self.create_subscription(image_type, cam.image_topic,
                                         lambda msg: self._core.submit_frame(msg, camera=cam.name), sensor,
                                         callback_group=group),
                self.create_subscription(CameraInfo, cam.camera_info, lambda msg: self._on_camera_info(cam.name, msg),
                                         sensor, callback_group=group),
            ]
        self._input_subs.append(self.create_subscription(
            Point, self.resolve_topic_name(cam.image) + "_mouse_left", lambda m: self._on_mouse_click(cam.name, m),
            reliable, callback_group=group))

    # --- inputs -----------------------------------------------------------------------------------------------

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        self._camera_info[camera] = msg

    def _on_synced(self, camera: str, image: Image | CompressedImage, depth: Image, info: CameraInfo) -> None:
        self._camera_info[camera] = info
        self._core.submit_frame(image, depth, info, camera=camera)

    def _on_prompt(self, msg: Prompt) -> None:
        try:
            self._core.submit_prompt(prompt_from_msg(msg))
        except ValueError as exc:
            self._core.errors.report("prompt/invalid", f"prompt ignored: {exc}")

    def _on_mouse_click(self, camera: str, msg: Point) -> None:
        self._core.submit_prompt(PromptRequest(prompt_id=CLICK_PROMPT_ID, points=np.array([[msg.x, msg.y]]),
                                               camera=camera))

    def _on_clicked_point(self, msg: PointStamped) -> None:
        """An RViz click: TF to each camera's frame at its stamp, projected with its K; it prompts the first camera
        (in ``cameras`` order) whose image the point projects into."""
        if not self._camera_info:
            self._core.errors.report("click/no_camera_info", "clicked point ignored: no camera_info received yet")
            return
        error: Exception | None = None
        for camera, info in [(c.name, self._camera_info.get(c.name)) for c in self._core.cameras]:
            if info is None:
                continue
            try:
                transform = self._tf_buffer.lookup_transform(
                    info.header.frame_id, msg.header.frame_id, Time.from_msg(msg.header.stamp),
                    timeout=Duration(seconds=TF_TIMEOUT_S),
                )
                point = transform_point(transform.transform, (msg.point.x, msg.point.y, msg.point.z))
                camera_model = CameraModel.from_camera_info(info, max_pixels=self._core.params.max_image_pixels)
                u, v = project_point(point, camera_model)
            except Exception as exc:  # noqa: BLE001  (no transform, off this image, a hostile CameraInfo, MemoryError)
                error = exc
                continue
            self._core.submit_prompt(PromptRequest(
                prompt_id=CLICK_PROMPT_ID, points=np.array([[u, v]]), stamp_ns=stamp_to_ns(msg.header.stamp),
                frame_id=info.header.frame_id, camera=camera,
            ))
            return
        cause = getattr(error, "cause", None)
        self._core.errors.report(f"click/{type(error).__name__}" + (f"/{cause}" if cause else ""),
                                 f"clicked point ignored: {error}")

    def _on_segment(self, request: Any, response: Any) -> Any:
        return services.segment(self._core, request, response, self._active)

    def _on_set_vocabulary(self, request: Any, response: Any) -> Any:
        return services.set_vocabulary(self._core, request, response, self._set_vocabulary_parameters)

    def _camera_pose(self, camera_frame: str, stamp_ns: int) -> np.ndarray | None:
        """4x4 pose of ``camera_frame`` in ``track_frame`` at ``stamp_ns`` from TF (called by the worker); None
        when TF cannot tell (counted and logged)."""
        try:
            t = self._tf_buffer.lookup_transform(self._core.params.track_frame, camera_frame,
                                                 Time(nanoseconds=stamp_ns), timeout=Duration(seconds=TF_TIMEOUT_S))
        except TransformException as exc:
            self._core.errors.report(f"track/{type(exc).__name__}", f"no camera pose for tracking: {exc}")
            return None
        return transform_matrix(t.transform)

    def _set_vocabulary_parameters(self, changes: dict[str, list[str]]) -> str | None:
        """``~/set_vocabulary`` changes the vocabulary through the parameters; the refusal reason, or None."""
        result = self.set_parameters_atomically([Parameter(n, Parameter.Type.STRING_ARRAY, v)
                                                 for n, v in changes.items()])
        return None if result.successful else result.reason

    # --- outputs ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._core.wait_for_work(WORKER_POLL_S):
                continue
            for output in self._core.step():
                try:
                    self._publish(output)
                except Exception as exc:  # noqa: BLE001  (a rendering failure must not stop the worker)
                    self._core.errors.report(f"publish/{type(exc).__name__}", f"publishing failed: {exc}")

    def _wanted(self, topic: str) -> bool:
        """Whether output ``topic`` exists and someone subscribes to it (optional outputs are built only then)."""
        pub = self._outputs.get(topic)
        return pub is not None and pub.get_subscription_count() > 0

    def _publish(self, out: Output) -> None:
        """Every output of ``out`` that exists and has a subscriber, on its camera's topics (built by
        ``ros.outputs``, as in the bag)."""
        core = self._core
        cam = next(c for c in core.cameras if c.name == out.frame.camera)
        wanted = lambda name: self._wanted(cam.output(name))  # noqa: E731
        for name, message in build_outputs(self._types, out, core.params, wanted, core.pipeline.semantics).items():
            self._outputs[cam.output(name)].publish(message)

    def _publish_label_info(self) -> None:
        names = self._core.class_names()
        labeller = self._core.pipeline.labeller
        threshold = labeller.min_score if labeller is not None else 0.0
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id="")
        self._outputs[LABEL_INFO].publish(label_info(self._types, header, names, threshold))

    def _publish_diagnostics(self) -> None:
        if self._core is None:
            return
        level, summary, values = self._core.diagnostics()
        values.update(backend=self._hardware_id, state="active" if self._active else "inactive")
        status = DiagnosticStatus(
            level=bytes([level]), name=f"{self.get_name()}: segmentation", message=summary,
            hardware_id=self._hardware_id, values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id="")
        self._outputs[DIAGNOSTICS].publish(DiagnosticArray(header=header, status=[status]))


def _plain(value: Any) -> Any:
    """A parameter value as NodeParams holds it (arrays as lists)."""
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run semsam_ros semsam_node``."""
    rclpy.init(args=args)
    node = SemsamNode()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.teardown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()

