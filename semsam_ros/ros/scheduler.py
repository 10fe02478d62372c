"""When the node segments what: the frame slot, the buffer of recent frames, stamps, sticky prompts, service
requests, automatic-mode timing and run-time parameter changes, around one ``FrameProcessor``.

Threading model: subscription callbacks only call ``submit_frame`` / ``submit_prompt`` / ``request`` (cheap, no
decoding); one worker thread loops on ``wait_for_work`` + ``step``, which does all decoding and inference. A frame
goes to the worker through a one-frame slot, so the worker always takes the newest frame and a frame replaced
before the worker took it is counted as dropped; it is never processed late. Every received frame also enters a
short buffer; its RGB and image embedding are computed once, on first use, so a stamped prompt is answered on the
buffered frame nearest its stamp without running the encoder twice for one frame.

Several cameras: each has its own slot, buffer, sticky prompts, automatic-mode timing and frame-rate cap; a prompt
goes to the camera it names ('' the first). ``step`` encodes the newest frame of every camera that has work in one
batched encoder call (``FrameProcessor.encode``), then answers each camera's prompts on its own frames.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from semsam_ros.ros.cameras import CameraParams
from semsam_ros.ros.convert import PromptRequest, stamp_to_ns
from semsam_ros.ros.frame_processor import Frame, FrameProcessor, Output, Pipeline, PromptError, make_tracker
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.params import VOCABULARY_PARAMS, NodeParams
from semsam_ros.ros.telemetry import Telemetry
from semsam_ros.tracking import Tracker


def update_sticky(sticky: dict[int, PromptRequest], prompt: PromptRequest) -> bool:
    """Apply a topic prompt to the sticky prompts by id; True when it is to be answered.

    A sticky prompt replaces the sticky prompt of the same id; a prompt with no point, box or text removes it (and
    is not answered); any other prompt leaves them as they are.
    """
    empty = prompt.is_empty and not prompt.text
    if prompt.sticky or empty:
        sticky.pop(prompt.prompt_id, None)
    if prompt.sticky and not empty:
        sticky[prompt.prompt_id] = prompt
    return not empty


def start_tracks(tracker: Tracker, prompt: PromptRequest) -> list[int]:
    """Start one track per point and per box of ``prompt`` (its levels, text and id kept); their ids. ValueError,
    nothing started, without a point or a box, or beyond the tracker's ``max_tracks``."""
    count = len(prompt.points) + len(prompt.boxes)
    if count == 0:
        raise ValueError(f"prompt {prompt.prompt_id}: a track starts from a point or a box (text alone cannot)")
    live = len(tracker.tracks)
    if live + count > tracker.max_tracks:
        raise ValueError(f"prompt {prompt.prompt_id}: {count} new track(s) with {live} live exceed max_tracks "
                         f"{tracker.max_tracks}")
    common = dict(levels=prompt.levels, text=prompt.text, prompt_id=prompt.prompt_id)
    return ([tracker.add(point=xy, **common) for xy in prompt.points]
            + [tracker.add(box=box, **common) for box in prompt.boxes])


@dataclass
class _Job:
    prompts: list[PromptRequest]
    frame: Frame | None = None  # a service request with its own image
    future: Future | None = None  # a service request waiting for its SegmentArray


@dataclass
class _Camera:
    """What the scheduler keeps per camera."""

    params: CameraParams
    buffer: deque[Frame]
    slot: Frame | None = None
    sticky: dict[int, PromptRequest] = field(default_factory=dict)
    next_auto: float = float("-inf")
    last_stamp_ns: int | None = None  # of the last frame the rate cap accepted


@dataclass
class _Work:
    frame: Frame
    prompts: list[PromptRequest] = field(default_factory=list)
    auto: bool = False
    track: bool = False


class Scheduler:
    """Everything the node does between receiving messages and publishing results (all but ROS itself).

    ``cameras``: the cameras served (None: one unnamed camera); their frames share one predictor.
    """

    def __init__(
        self,
        params: NodeParams,
        predictor: Any,
        types: MessageTypes,
        pipeline: Pipeline,
        *,
        model_id: str = "",
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        camera_pose: Callable[[str, int], np.ndarray | None] | None = None,
        cameras: Sequence[CameraParams] | None = None,
    ) -> None:
        """``camera_pose(camera frame, stamp ns)``: the 4x4 camera -> ``track_frame`` pose (TF in the node), or
        None when unknown; it anchors tracks in 3D when ``track_frame`` is set and depth comes with the frames."""
        reasons = params.validate()
        if reasons:
            raise ValueError("; ".join(reasons))
        self.telemetry = Telemetry(log, params.error_log_period, clock)
        self.tracker = make_tracker(params)
        self.processor = FrameProcessor(params, predictor, types, pipeline, self.telemetry, model_id, self.tracker)
        self._camera_pose = camera_pose
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        cameras = list(cameras) if cameras else [CameraParams()]
        if len({c.name for c in cameras}) != len(cameras):
            raise ValueError(f"camera names must be distinct, got {[c.name for c in cameras]}")
        self._cameras = {c.name: _Camera(c, deque(maxlen=params.buffer_size)) for c in cameras}
        self._tracked = next(iter(self._cameras.values()))  # tracks follow the first camera's frames
        self._jobs: list[_Job] = []

    @property
    def cameras(self) -> list[CameraParams]:
        return [cam.params for cam in self._cameras.values()]

    @property
    def params(self) -> NodeParams:
        return self.processor.params

    @property
    def pipeline(self) -> Pipeline:
        return self.processor.pipeline

    @property
    def model_id(self) -> str:
        return self.processor.model_id

    @property
    def errors(self) -> Any:
        """The ErrorLog (callbacks report what they reject through it)."""
        return self.telemetry.errors

    @property
    def counters(self) -> dict[str, int]:
        return self.telemetry.counters

    # --- called from subscription callbacks -------------------------------------------------------------------

    def update_params(self, params: NodeParams) -> bool:
        """Apply new parameter values (ValueError with the reasons when they are invalid, nothing applied then).

        Returns whether the labeller's vocabulary changed (its LabelInfo is then to be republished).
        """
        reasons = params.validate()
        if reasons:
            raise ValueError("; ".join(reasons))
        changed = False
        wanted = tuple(getattr(params, name) for name in VOCABULARY_PARAMS)
        current = tuple(getattr(self.params, name) for name in VOCABULARY_PARAMS)
        if self.pipeline.semantics and wanted != current:
            changed = self.pipeline.set_vocabulary(*wanted)
        with self._lock:
            if params.auto_rate_hz != self.params.auto_rate_hz or params.mode != self.params.mode:
                for cam in self._cameras.values():
                    cam.next_auto = float("-inf")
            self.processor.params = params
            self.errors.period_s = params.error_log_period
        return changed

    def vocabulary_update(self, objects: Sequence[str], parts: Sequence[str]) -> NodeParams:
        """The parameters after a set_vocabulary request: a non-empty list replaces the current object (part)
        names, an empty one keeps them. ValueError when semantics is off or a name is empty."""
        if not self.pipeline.semantics:
            raise ValueError("semantics is off: set the parameter semantics to true (and configure again)")
        params = replace(
            self.params,
            vocabulary_objects=list(objects) if len(objects) else list(self.params.vocabulary_objects),
            vocabulary_parts=list(parts) if len(parts) else list(self.params.vocabulary_parts),
        )
        reasons = params.validate()
        if reasons:
            raise ValueError("; ".join(reasons))
        return params

    def set_vocabulary(self, objects: Sequence[str], parts: Sequence[str]) -> tuple[bool, str]:
        """A set_vocabulary request without ROS parameters (the node goes through its parameters instead):
        (changed, a one-line summary). ValueError when it cannot be applied."""
        changed = self.update_params(self.vocabulary_update(objects, parts))
        return changed, self.vocabulary_summary(changed)

    def vocabulary_names(self) -> tuple[list[str], list[str]]:
        """(object names, part names) of the labeller's vocabulary; empty lists without semantics."""
        return ([], []) if not self.pipeline.semantics else self.pipeline.class_names()

    def class_names(self) -> list[str]:
        """"unknown", then the object and part names of the labeller's vocabulary (LabelInfo class ids 0..N-1)."""
        objects, parts = self.vocabulary_names()
        return ["unknown", *objects, *parts]

    def vocabulary_summary(self, changed: bool) -> str:
        """One line for the service reply and the log."""
        if not self.pipeline.semantics:
            return "no vocabulary (semantics is off)"
        objects, parts = self.vocabulary_names()
        state = "changed" if changed else "unchanged"
        return f"vocabulary {state}: {len(objects)} objects, {len(parts)} parts"

    def submit_frame(self, image: Any, depth: Any | None = None, camera_info: Any | None = None,
                     camera: str = "") -> None:
        """A new frame of ``camera`` ('' the first; messages as received, decoded later by the worker). A frame
        that comes sooner than the camera's ``max_rate_hz`` allows is skipped (counted in ``frames_skipped``)."""
        cam = self._camera(camera)
        frame = Frame(image, stamp_to_ns(image.header.stamp), depth, camera_info, camera=cam.params.name)
        with self._lock:
            self.counters["frames_received"] += 1
            if not cam.params.accepts(frame.stamp_ns, cam.last_stamp_ns):
                self.counters["frames_skipped"] += 1
                return
            cam.last_stamp_ns = frame.stamp_ns
            cam.buffer.append(frame)
            if cam.sticky or self._auto_due(cam) or (self.tracker.tracks and cam is self._tracked):
                if cam.slot is not None:
                    self.counters["frames_dropped"] += 1
                cam.slot = frame
                self._wake.notify()

    def submit_prompt(self, prompt: PromptRequest) -> None:
        """A Prompt from the topic: answered once on the frame nearest its stamp; sticky ones on every new frame.

        A sticky prompt replaces the sticky prompt of the same id on its camera; a prompt with no point, box or text
        removes it. A prompt naming no served camera is rejected.
        A prompt with ``track`` starts tracks instead (refusals are counted and logged).
        """
        if prompt.track:
            with self._lock:
                self.counters["prompts_received"] += 1
            try:
                if prompt.camera and prompt.camera != self._tracked.params.name:
                    raise ValueError(f"prompt {prompt.prompt_id}: tracks follow the first camera "
                                     f"({self._tracked.params.name!r}), not {prompt.camera!r}")
                self.track(prompt)
            except ValueError as exc:
                self.telemetry.report("prompt", PromptError(str(exc), "track"))
            return
        with self._lock:
            self.counters["prompts_received"] += 1
        try:
            cam = self._camera(prompt.camera)
        except PromptError as exc:
            self.telemetry.report("prompt", exc)
            return
        prompt = replace(prompt, camera=cam.params.name)
        with self._lock:
            if update_sticky(cam.sticky, prompt):
                self._jobs.append(_Job([prompt]))
                self._wake.notify()

    def request(self, prompt: PromptRequest, image: Any | None = None) -> Future:
        """A service request: a Future of its SegmentArray (ValueError in it when it cannot be answered)."""
        future: Future = Future()
        try:
            camera = self._camera(prompt.camera).params.name
        except PromptError as exc:
            self.telemetry.report("prompt", exc)
            future.set_exception(exc)
            return future
        prompt = replace(prompt, camera=camera)
        frame = None if image is None else Frame(image, stamp_to_ns(image.header.stamp), camera=camera)
        with self._lock:
            self.counters["prompts_received"] += 1
            self._jobs.append(_Job([replace(prompt, sticky=False)], frame, future))
            self._wake.notify()
        return future

    def clear_prompts(self) -> int:
        """Forget sticky and pending topic prompts; returns how many sticky prompts there were."""
        with self._lock:
            count = sum(len(cam.sticky) for cam in self._cameras.values())
            for cam in self._cameras.values():
                cam.sticky.clear()
            for job in self._jobs:
                if job.future is not None:
                    job.future.set_exception(PromptError("prompts cleared before this request was served", "cleared"))
            self._jobs.clear()
            return count

    def track(self, prompt: PromptRequest) -> list[int]:
        """Start the tracks of ``prompt`` (``start_tracks``), continued from the next new frame; their ids."""
        return start_tracks(self.tracker, prompt)

    def untrack(self, ids: Sequence[int] | None = None) -> list[int]:
        """Stop the tracks ``ids`` (None: all); the ids that were live."""
        return self.tracker.remove(ids)

    def sticky_prompts(self) -> list[PromptRequest]:
        with self._lock:
            return [p for cam in self._cameras.values() for p in cam.sticky.values()]

    def release(self) -> None:
        """Drop buffered frames and their embeddings (deactivate frees GPU memory this way)."""
        with self._lock:
            for cam in self._cameras.values():
                cam.buffer.clear()
                cam.slot = None

    # --- the worker ---------------------------------------------------------------------------------------------

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a frame or prompt is waiting (True) or ``timeout`` seconds pass (False)."""
        with self._wake:
            return self._wake.wait_for(
                lambda: any(cam.slot is not None for cam in self._cameras.values()) or bool(self._jobs), timeout)

    def step(self) -> list[Output]:
        """Do all waiting work: answer queued prompts, then each camera's newest frame's sticky prompts and
        automatic run. The frames that need the encoder are encoded together, in one batched call."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
            newest = []
            for cam in self._cameras.values():
                if cam.slot is not None:
                    newest.append((cam, cam.slot, list(cam.sticky.values())))
                    cam.slot = None
        work: dict[int, _Work] = {}  # by id(frame): one SegmentArray per frame
        for job in jobs:
            if job.future is not None:
                self._serve(job)
                continue
            for prompt in job.prompts:
                try:
                    target = self._match(prompt)
                except PromptError as exc:
                    self.telemetry.report("prompt", exc)
                    continue
                work.setdefault(id(target), _Work(target)).prompts.append(prompt)
        for cam, frame, sticky in newest:
            item = work.setdefault(id(frame), _Work(frame))
            item.prompts.extend(p for p in sticky if all(p is not q for q in item.prompts))
            item.track = cam is self._tracked
            if (item.track and self.tracker.tracks and self.params.track_frame and self._camera_pose is not None
                    and frame.depth is not None):
                frame.pose = self._camera_pose(frame.header.frame_id, frame.stamp_ns)
            with self._lock:
                item.auto = self._auto_due(cam)
                if item.auto:
                    cam.next_auto = self._clock() + 1.0 / self.params.auto_rate_hz
        tracking = bool(self.tracker.tracks)
        ready = {id(f) for f in self.processor.encode([(w.frame, w.prompts, w.auto or (w.track and tracking))
                                                      for w in work.values()])}
        outputs = []
        for item in (item for item in work.values() if id(item.frame) in ready):
            output = self.processor.run(item.frame, item.prompts, item.auto, track=item.track)
            if output is not None:
                outputs.append(output)
        return outputs

    def stats(self) -> dict[str, Any]:
        """Counters, errors per cause, output rate and latency, buffer and sticky prompts, for diagnostics."""
        return self.telemetry.stats(**self._state())

    def diagnostics(self) -> tuple[int, str, dict[str, str]]:
        """(level 0 OK / 1 WARN, summary, key-values) for /diagnostics; WARN when errors happened since the last
        call."""
        return self.telemetry.diagnostics(self.model_id, **self._state())

    # --- internals ----------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, int]:
        """Buffered frames and sticky prompts over all cameras, and tracks by state (tracks_tracking, ...)."""
        with self._lock:
            cams = self._cameras.values()
            state = {"buffered_frames": sum(len(cam.buffer) for cam in cams),
                     "sticky_prompts": sum(len(cam.sticky) for cam in cams)}
        return {**state, **{f"tracks_{name}": count for name, count in self.tracker.counts().items()}}

    def _camera(self, name: str) -> _Camera:
        """The camera named ``name`` ('' the first); PromptError (cause "camera") when none is."""
        if not name:
            return next(iter(self._cameras.values()))
        cam = self._cameras.get(name)
        if cam is None:
            raise PromptError(f"no camera {name!r} (cameras: {', '.join(self._cameras) or 'one, unnamed'})", "camera")
        return cam

    def _auto_due(self, cam: _Camera) -> bool:
        return self.params.mode in ("auto", "both") and self._clock() >= cam.next_auto

    def _match(self, prompt: PromptRequest) -> Frame:
        """The buffered frame of the prompt's camera nearest its stamp (the newest one for a zero stamp)."""
        cam = self._camera(prompt.camera)
        with self._lock:
            frames = list(cam.buffer)
        if not frames:
            raise PromptError(f"prompt {prompt.prompt_id}: no camera frame received yet", "no_frame")
        if prompt.stamp_ns == 0:
            return frames[-1]
        best = min(frames, key=lambda f: abs(f.stamp_ns - prompt.stamp_ns))
        gap = abs(best.stamp_ns - prompt.stamp_ns) / 1e9
        if gap > self.params.max_stamp_diff:
            raise PromptError(
                f"prompt {prompt.prompt_id}: stamp is {gap:.3f} s from the nearest of the {len(frames)} buffered "
                f"frames (max_stamp_diff {self.params.max_stamp_diff} s)",
                "stamp",
            )
        return best

    def _serve(self, job: _Job) -> None:
        try:
            frame = job.frame or self._match(job.prompts[0])
        except PromptError as exc:
            self.telemetry.report("prompt", exc)
            job.future.set_exception(exc)
            return
        try:
            job.future.set_result(self.processor.run(frame, job.prompts, auto=False, strict=True).message)
        except Exception as exc:  # noqa: BLE001  (already reported; the caller gets it through the future)
            job.future.set_exception(exc)

