"""One ``process_bag`` pass, as planned by ``plan_bag``: index prompts and depth, then copy and segment in one pass."""
from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semsam_ros.bag.options import BagSummary
from semsam_ros.bag.plan import BagPlan, CameraPlan
from semsam_ros.bag.reader import PROMPT, header_stamp, nearest, read_messages
from semsam_ros.ros.convert import PromptRequest, prompt_from_msg, stamp_to_ns
from semsam_ros.ros.frame_processor import Frame, FrameProcessor, Output
from semsam_ros.ros.scheduler import start_tracks, update_sticky
from semsam_ros.ros.outputs import OUTPUT_TYPES, build_outputs
from semsam_ros.tracking.tf import TransformBuffer

RENDER_QUEUE = 2  # frames whose outputs may be rendering in the background at once
TF_TOPICS = {"/tf": False, "/tf_static": True}  # topic -> whether its transforms are static
TF_TYPE = "tf2_msgs/msg/TFMessage"
WAIT_FRAMES = 4  # queued frames per camera after which a frame is segmented without waiting for the other cameras


@dataclass
class _Camera(CameraPlan):
    """One image topic as planned, and what the run learns and opens for it."""

    selected: set[int] | None = None  # frame ordinals to process (None: every ``every``-th)
    anchored: dict[int, list[PromptRequest]] = field(default_factory=dict)  # frame ordinal -> its topic prompts
    depth: dict[int, int] = field(default_factory=dict)  # frame ordinal -> depth message ordinal
    info: dict[int, int] = field(default_factory=dict)  # frame ordinal -> camera_info message ordinal
    sticky: dict[int, PromptRequest] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # output kind -> writer connection
    seen: int = 0

    @property
    def indexed(self) -> bool:
        """Whether this camera needs the index pass (topic prompts or 3D)."""
        return self.prompt_topic is not None or self.depth_topic is not None


@dataclass
class _Companion:
    """A depth or camera_info topic: the messages that chosen frames still need, by ordinal."""

    msgtype: str
    stamps: list[int] = field(default_factory=list)  # index pass
    needed: Counter = field(default_factory=Counter)  # ordinal -> frames still to use it
    stored: dict[int, bytes] = field(default_factory=dict)
    seen: int = 0


@dataclass
class _Pending:
    camera: _Camera
    msgtype: str
    time_ns: int
    raw: bytes
    prompts: list[PromptRequest]
    depth: int | None
    info: int | None


class BagRun:
    """One ``process_bag`` call: the index pass when needed, then one pass that copies and processes."""

    def __init__(self, reader: Any, plan: BagPlan, processor: FrameProcessor, typestore: Any, summary: BagSummary,
                 log: Callable[[str], None]) -> None:
        self.reader, self.src, self.options = reader, plan.src, plan.options
        self.processor, self.typestore = processor, typestore
        self.summary, self.log = summary, log
        self.types, self.errors = processor.types, processor.telemetry.errors
        self.start = self.options.start.resolve(reader.start_time) if self.options.start else None
        self.stop = self.options.end.resolve(reader.start_time) if self.options.end else None
        self.cameras = {topic: _Camera(**vars(c)) for topic, c in plan.cameras.items()}
        self.companions = {topic: _Companion(msgtype) for topic, msgtype in plan.companions.items()}
        self.pending: deque[_Pending] = deque()
        self.rendering: deque[Future[list[tuple[Any, int, bytes]]]] = deque()
        self.bar: Any = None
        self.check_interrupt: Callable[[], None] = lambda: None
        self.tracks_started = False  # --track: whether a frame's prompts started the tracks
        self.tf: TransformBuffer | None = None  # --track with track_frame and depth: the bag's /tf and /tf_static

    def run(self, writer: Any, check_interrupt: Callable[[], None]) -> None:
        from tqdm import tqdm

        self.check_interrupt = check_interrupt
        for camera in self.cameras.values():
            camera.outputs = {kind: writer.add_connection(topic, msgtype, typestore=self.typestore)
                              for kind, (topic, msgtype) in camera.names.items()}
        copies = self._add_copies(writer)
        if self.processor.tracker is not None and self.processor.params.track_frame and any(
                c.depth_topic is not None for c in self.cameras.values()):  # tracks anchored in 3D
            self.tf = self._read_tf()
        indexed = [c for c in self.cameras.values() if c.indexed]
        total = (self._index(indexed) if indexed else 0) + self._estimate([c for c in self.cameras.values()
                                                                           if not c.indexed])
        with tqdm(total=total, unit="frame", desc="semsam bag", disable=not self.options.progress,
                  dynamic_ncols=True) as self.bar, ThreadPoolExecutor(1, "semsam-bag-render") as renderer:
            try:
                for conn, time_ns, raw in read_messages(self.reader, self.src, start=self.start, stop=self.stop):
                    self.check_interrupt()
                    if conn.id in copies:
                        writer.write(copies[conn.id], time_ns, raw)
                        self.summary.copied += 1
                    topic = conn.topic
                    if topic in self.cameras:
                        self._on_frame(self.cameras[topic], conn.msgtype, time_ns, raw)
                    if topic in self.companions:
                        self._on_companion(self.companions[topic], raw)
                    self._flush(writer, renderer, final=False)
                self._flush(writer, renderer, final=True)
            finally:  # also on Ctrl-C: every frame segmented so far is written
                self._write_rendered(writer, 0)

    # setup

    def _add_copies(self, writer: Any) -> dict[int, Any]:
        """An output connection for every input connection that can be copied (input id -> output connection)."""
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.typesys import get_types_from_msg

        copies: dict[int, Any] = {}
        added: dict[tuple[str, str, str, str], Any] = {}
        for conn in self.reader.connections:
            key = (conn.topic, conn.msgtype, conn.ext.serialization_format, repr(conn.ext.offered_qos_profiles))
            if key in added:
                copies[conn.id] = added[key]
                continue
            msgdef = conn.msgdef.data if conn.msgdef.format != MessageDefinitionFormat.NONE else ""
            extra = {"serialization_format": conn.ext.serialization_format,
                     "offered_qos_profiles": conn.ext.offered_qos_profiles}
            if msgdef and conn.digest:
                out = writer.add_connection(conn.topic, conn.msgtype, msgdef=msgdef, rihs01=conn.digest, **extra)
            else:
                if conn.msgtype not in self.typestore.types and conn.msgdef.format == MessageDefinitionFormat.MSG:
                    found = get_types_from_msg(msgdef, conn.msgtype)
                    self.typestore.register({k: v for k, v in found.items() if k not in self.typestore.types})
                if conn.msgtype not in self.typestore.types:
                    self.log(f"topic {conn.topic} not copied: type {conn.msgtype} is unknown and the bag stores "
                             "no definition of it")
                    continue
                out = writer.add_connection(conn.topic, conn.msgtype, typestore=self.typestore, **extra)
            copies[conn.id] = added[key] = out
        return copies

    def _estimate(self, cameras: Sequence[_Camera]) -> int:
        """Frames of ``cameras`` to process, from the topic counts (exact without --start/--end, proportional to
        the window's length with)."""
        reader = self.reader
        span = max(1, reader.end_time - reader.start_time)
        start = max(reader.start_time, self.start if self.start is not None else reader.start_time)
        stop = min(reader.end_time, self.stop if self.stop is not None else reader.end_time)
        share = min(1.0, max(0.0, (stop - start) / span))
        counts = [reader.topics[c.topic].msgcount for c in cameras]
        return sum(math.ceil(round(n * share) / self.options.every) for n in counts)

    def _index(self, cameras: Sequence[_Camera]) -> int:
        """The index pass over ``cameras`` (those with topic prompts or 3D): frame stamps, topic prompts and
        companion stamps; chooses their frames and what each is processed with; returns how many are chosen."""
        params = self.processor.params
        prompt_topics = {c.prompt_topic for c in cameras if c.prompt_topic}
        wanted = {c.topic for c in cameras} | prompt_topics | set(self.companions)
        connections = [c for c in self.reader.connections if c.topic in wanted]
        frames: dict[str, tuple[list[int], list[int]]] = {c.topic: ([], []) for c in cameras}
        prompts: dict[str, list[tuple[int, PromptRequest]]] = {t: [] for t in prompt_topics}
        for conn, time_ns, raw in read_messages(self.reader, self.src, connections, self.start, self.stop):
            self.check_interrupt()
            stamp = header_stamp(raw)
            if conn.topic in frames:
                frames[conn.topic][0].append(-1 if stamp is None else stamp)
                frames[conn.topic][1].append(time_ns)
            if conn.topic in self.companions:
                self.companions[conn.topic].stamps.append(-1 if stamp is None else stamp)
            if conn.topic in prompts:
                try:
                    prompts[conn.topic].append((time_ns, prompt_from_msg(self.typestore.deserialize_cdr(raw, PROMPT))))
                except Exception as exc:  # noqa: BLE001  (a bad recorded prompt is skipped and counted)
                    self.errors.report(f"prompt/{type(exc).__name__}", f"{conn.topic}: prompt skipped: {exc}")
        for camera in cameras:
            stamps, times = np.array(frames[camera.topic][0], dtype=np.int64), frames[camera.topic][1]
            for time_ns, prompt in prompts.get(camera.prompt_topic, []):
                ordinal = self._anchor(camera, stamps, times, time_ns, prompt, params.max_stamp_diff)
                if ordinal is not None:
                    camera.anchored.setdefault(ordinal, []).append(prompt)
            answered = {o for o, ps in camera.anchored.items() if any(not p.is_empty or p.text for p in ps)}
            camera.selected = set(range(0, len(stamps), self.options.every)) | answered
            if camera.depth_topic is not None:
                depth = np.array(self.companions[camera.depth_topic].stamps, dtype=np.int64)
                infos = np.array(self.companions[camera.info_topic].stamps, dtype=np.int64)
                for ordinal in camera.selected:
                    match = nearest(depth, int(stamps[ordinal]), round(params.sync_slop * 1e9))
                    info = nearest(infos, int(stamps[ordinal]), None)
                    if match is not None and info is not None:
                        camera.depth[ordinal], camera.info[ordinal] = match, info
                        self.companions[camera.depth_topic].needed[match] += 1
                        self.companions[camera.info_topic].needed[info] += 1
        return sum(len(c.selected) for c in cameras)

    def _anchor(self, camera: _Camera, stamps: np.ndarray, times: list[int], time_ns: int, prompt: PromptRequest,
                max_diff_s: float) -> int | None:
        """The frame a topic prompt is answered on (nearest its stamp; stamp zero: the newest one at its bag time)."""
        if prompt.stamp_ns == 0:
            ordinal = bisect.bisect_right(times, time_ns) - 1
            if ordinal < 0:
                self.errors.report("prompt/PromptError/no_frame",
                                        f"prompt {prompt.prompt_id}: no frame on {camera.topic} before it")
                return None
            return ordinal
        ordinal = nearest(stamps, prompt.stamp_ns, None)
        gap = abs(int(stamps[ordinal]) - prompt.stamp_ns) / 1e9 if ordinal is not None else math.inf
        if gap > max_diff_s:
            self.errors.report(
                "prompt/PromptError/stamp",
                f"prompt {prompt.prompt_id}: stamp is {gap:.3f} s from the nearest of the {len(stamps)} frames on "
                f"{camera.topic} (max_stamp_diff {max_diff_s} s)")
            return None
        return ordinal

    # the processing pass

    def _on_frame(self, camera: _Camera, msgtype: str, time_ns: int, raw: bytes) -> None:
        """Apply the topic prompts anchored on this frame; queue the frame if it is to be processed."""
        ordinal = camera.seen
        camera.seen += 1
        self.summary.frames += 1
        answered = [p for p in camera.anchored.pop(ordinal, []) if update_sticky(camera.sticky, p)]
        chosen = ordinal % self.options.every == 0 if camera.selected is None else ordinal in camera.selected
        if not chosen:
            return
        prompts = camera.prompts + answered + [p for p in camera.sticky.values() if all(p is not q for q in answered)]
        self.pending.append(_Pending(camera, msgtype, time_ns, raw, prompts, camera.depth.get(ordinal),
                                     camera.info.get(ordinal)))

    def _on_companion(self, companion: _Companion, raw: bytes) -> None:
        """Keep a depth or camera_info message while a queued or later frame needs it."""
        if companion.needed[companion.seen]:
            companion.stored[companion.seen] = raw
        companion.seen += 1

    def _ready(self, item: _Pending) -> bool:
        """Whether the depth and camera_info the frame is paired with have been read."""
        camera = item.camera
        return all(ordinal is None or self.companions[topic].seen > ordinal
                   for topic, ordinal in ((camera.depth_topic, item.depth), (camera.info_topic, item.info)))

    def _flush(self, writer: Any, renderer: ThreadPoolExecutor, final: bool) -> None:
        """Segment the queued frames in order, as far as they are ready (all of them when ``final``): consecutive
        frames of different cameras are encoded together, as the node does, so with several cameras a frame waits
        until every camera has one queued (or ``WAIT_FRAMES`` per camera are). Their outputs are rendered and
        serialised in the background while the next frames are segmented."""
        while self.pending and (final or (self._ready(self.pending[0]) and self._batch_due())):
            batch = [self.pending.popleft()]
            while (self.pending and self.pending[0].camera not in [item.camera for item in batch]
                   and (final or self._ready(self.pending[0]))):
                batch.append(self.pending.popleft())
            self.check_interrupt()
            frames = [self._frame(item) for item in batch]
            work = [(frame, item.prompts, self.options.auto) for item, frame in zip(batch, frames) if frame is not None]
            ready = {id(frame) for frame in self.processor.encode(work)}
            for item, frame in zip(batch, frames):
                output = self._segment(frame, item) if id(frame) in ready else None
                if output is None:
                    self.summary.skipped += 1
                else:
                    self.rendering.append(renderer.submit(self._render, item, output))
                self._write_rendered(writer, RENDER_QUEUE)
                self.bar.update()
                if self.options.on_frame is not None:
                    self.options.on_frame()

    def _batch_due(self) -> bool:
        queued = {item.camera.topic for item in self.pending}
        return len(queued) == len(self.cameras) or len(self.pending) >= WAIT_FRAMES * len(self.cameras)

    def _write_rendered(self, writer: Any, keep: int) -> None:
        """Write the rendered outputs, in order: those done, and all but ``keep`` of the others once done."""
        while self.rendering and (self.rendering[0].done() or len(self.rendering) > keep):
            for connection, time_ns, raw in self.rendering.popleft().result():
                writer.write(connection, time_ns, raw)
            self.summary.segmented += 1

    def _read_tf(self) -> TransformBuffer | None:
        """Every transform of the bag's /tf and /tf_static (the whole bag: a frame's pose is interpolated between
        the transforms around it); None, logged, when the bag has none."""
        connections = [c for c in self.reader.connections if c.topic in TF_TOPICS and c.msgtype == TF_TYPE]
        if not connections:
            self.log(f"--track with track_frame {self.processor.params.track_frame!r}: the bag has no /tf or "
                     "/tf_static; tracks follow the image motion only")
            return None
        buffer = TransformBuffer()
        for conn, _, raw in read_messages(self.reader, self.src, connections):
            self.check_interrupt()
            try:
                buffer.add_message(self.typestore.deserialize_cdr(raw, TF_TYPE), static=TF_TOPICS[conn.topic])
            except Exception as exc:  # noqa: BLE001  (a corrupt transform is skipped and counted)
                self.errors.report(f"track/tf/{type(exc).__name__}", f"{conn.topic}: transform skipped: {exc}")
        return buffer

    def _take(self, topic: str | None, ordinal: int | None) -> Any | None:
        """The deserialised companion message ``ordinal`` of ``topic`` (dropped once no frame needs it)."""
        if topic is None or ordinal is None:
            return None
        companion = self.companions[topic]
        companion.needed[ordinal] -= 1
        raw = companion.stored.get(ordinal) if companion.needed[ordinal] > 0 else companion.stored.pop(ordinal, None)
        if raw is None:
            return None
        try:
            return self.typestore.deserialize_cdr(raw, companion.msgtype)
        except Exception as exc:  # noqa: BLE001  (a corrupt depth or camera_info message: no 3D for this frame)
            self.errors.report(f"3d/{type(exc).__name__}", f"{topic}: cannot deserialise message: {exc}")
            return None

    def _frame(self, item: _Pending) -> Frame | None:
        """The queued frame with its depth and camera_info, or None when it cannot be read (counted and logged)."""
        camera = item.camera
        depth, info = self._take(camera.depth_topic, item.depth), self._take(camera.info_topic, item.info)
        try:
            image = self.typestore.deserialize_cdr(item.raw, item.msgtype)
        except Exception as exc:  # noqa: BLE001  (a corrupt message skips its frame)
            self.errors.report(f"image/{type(exc).__name__}", f"{camera.topic}: cannot deserialise frame: {exc}")
            return None
        if camera.depth_topic is not None and (item.depth is None or item.info is None):
            self.errors.report("3d/no_depth", f"{camera.topic}: no depth within sync_slop of the frame at "
                                              f"{stamp_to_ns(image.header.stamp)} ns")
        return Frame(image, stamp_to_ns(image.header.stamp), depth, info, camera=camera.topic)

    def _segment(self, frame: Frame, item: _Pending) -> Output | None:
        """The frame's Output, or None when it cannot be segmented (counted and logged)."""
        prompts, tracker = item.prompts, self.processor.tracker
        if tracker is not None:  # --track: the first prompted frame's prompts start the tracks, then only tracks
            for prompt in prompts if not self.tracks_started else ():
                self.tracks_started = True
                try:
                    start_tracks(tracker, prompt)
                except ValueError as exc:
                    self.errors.report("track/start", f"{item.camera.topic}: {exc}")
            prompts = []
            if self.tf is not None and frame.depth is not None and tracker.tracks:
                target, source = self.processor.params.track_frame, frame.header.frame_id
                frame.pose = self.tf.lookup(target, source, frame.stamp_ns)
                if frame.pose is None:
                    self.errors.report("track/tf", f"{item.camera.topic}: no transform {target} <- {source} at "
                                                   f"{frame.stamp_ns} ns in the bag's /tf; image motion only")
        try:
            return self.processor.process(frame, prompts, self.options.auto, track=tracker is not None)
        except Exception:  # noqa: BLE001  (counted and logged by the processor; the frame is skipped)
            return None

    def _render(self, item: _Pending, output: Output) -> list[tuple[Any, int, bytes]]:
        """(output connection, bag time, CDR bytes) of every message of a segmented frame: the node's messages
        (``ros.outputs``) for the outputs this camera writes."""
        outputs = item.camera.outputs
        messages = build_outputs(self.types, output, self.processor.params, outputs.__contains__,
                                 self.processor.pipeline.semantics)
        return [(outputs[kind], item.time_ns, self.typestore.serialize_cdr(message, OUTPUT_TYPES[kind]))
                for kind, message in messages.items()]
