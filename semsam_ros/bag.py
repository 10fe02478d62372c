"""Offline rosbag2 processing with ``rosbags`` (no ROS needed): what the node does, on recorded camera frames.

``process_bag`` reads a rosbag2 (sqlite3 or mcap), copies every message into a new bag and adds, for each
processed frame of the chosen image topics, a semsam_ros/SegmentArray, an overlay image and, with depth and
``semsam_ros.geometry``, the 3D outputs. Every added message carries the frame's header exactly and is written at
the frame's bag time. Frames go through ``NodeCore.process``, the live node's code path. Prompts come from a YAML
file, from a recorded Prompt topic (answered on the frame nearest their stamp, sticky ones on the later frames
too), or from automatic mode. See docs/bag.md.

rosbags, PIL and scipy are imported when a bag is processed, so ``semsam --help`` works without them.
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import signal
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from semsam_ros.cli import UserError, add_model_arguments, load_predictor, one_line, parse_levels
from semsam_ros.ros.convert import PromptRequest, prompt_from_msg, stamp_to_ns
from semsam_ros.types import LEVELS
from semsam_ros.ros.core import Frame, Hooks, NodeCore, NodeParams, Output, update_sticky
from semsam_ros.ros.images import rgb_to_image
from semsam_ros.ros.msgtypes import MessageTypes

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
PROMPT = "semsam_ros/msg/Prompt"
SEGMENT_ARRAY = "semsam_ros/msg/SegmentArray"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
POINT_CLOUD = "sensor_msgs/msg/PointCloud2"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = ("sqlite3", "mcap")
BAG_VERSION = 8  # rosbag2 metadata version written (Iron and later read it)
RENDER_QUEUE = 2  # frames whose outputs may be rendering in the background at once
ABSOLUTE_NS = 10**15  # a plain integer time at least this large is nanoseconds since the epoch, not seconds
_PROMPT_KEYS = ("id", "points", "boxes", "levels", "text")


class BagError(Exception):
    """A bag that cannot be processed as asked: missing or corrupt input, existing output, unknown topic..."""


@dataclass(frozen=True)
class BagTime:
    """A time in a bag: ``value`` seconds after its first message, or ``value`` ns since the epoch (``absolute``)."""

    value: float | int
    absolute: bool = False

    @classmethod
    def parse(cls, text: str) -> BagTime:
        """'12.5' (s after the start); '1700000000123456789' (an integer >= 1e15) or '123ns': absolute ns."""
        body = text.strip()
        try:
            if body.endswith("ns"):
                value = int(body[:-2])
                if value >= 0:
                    return cls(value, True)
            elif body.isdigit() and int(body) >= ABSOLUTE_NS:
                return cls(int(body), True)
            else:
                seconds = float(body)
                if math.isfinite(seconds) and seconds >= 0:
                    return cls(seconds)
        except ValueError:
            pass
        raise ValueError(f"a time is seconds after the bag start (12.5) or absolute nanoseconds (1700000000000000000 "
                         f"or 17000ns), got {text!r}")

    def resolve(self, bag_start_ns: int) -> int:
        """Nanoseconds since the epoch."""
        return int(self.value) if self.absolute else bag_start_ns + round(self.value * 1e9)


@dataclass
class BagOptions:
    """What ``process_bag`` does; see docs/bag.md."""

    image_topics: Sequence[str]
    prompts: dict[str, list[PromptRequest]] = field(default_factory=dict)  # image topic -> on every processed frame
    prompt_topics: dict[str, str] = field(default_factory=dict)  # image topic -> its recorded Prompt topic
    auto: bool = False  # also segment everything (params.auto_levels) on every processed frame
    params: NodeParams = field(default_factory=NodeParams)  # the node's thresholds, levels, overlay_alpha...
    every: int = 1  # process every N-th frame of each image topic (and every frame a topic prompt is stamped on)
    start: BagTime | None = None  # the window [start, end) of bag time that is read, processed and copied
    end: BagTime | None = None
    storage: str | None = None  # output storage, sqlite3 or mcap; None: as the input
    distro: str | None = None  # typestore, humble or jazzy; None: the bag's if it names one, else humble
    segments_topic: str | None = None  # default <image topic>/segments (one image topic only)
    overlay_topic: str | None = None  # default <image topic>/overlay (one image topic only)
    overlay: bool = True
    depth_topics: dict[str, str] = field(default_factory=dict)  # image topic -> registered depth topic
    camera_info_topics: dict[str, str] = field(default_factory=dict)  # default: <image topic's parent>/camera_info
    progress: bool = False


@dataclass
class BagSummary:
    """What ``process_bag`` did; ``errors`` counts skipped frames, rejected prompts and 3D gaps by cause."""

    output: Path
    storage: str
    frames: int = 0  # image messages read on the chosen topics
    segmented: int = 0  # frames with a SegmentArray written
    skipped: int = 0  # chosen frames that could not be segmented
    copied: int = 0  # input messages copied
    errors: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.segmented / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{'interrupted: ' if self.interrupted else ''}segmented {self.segmented} of {self.frames} frame(s) read "
            f"({self.skipped} skipped), copied {self.copied} message(s) in {self.seconds:.1f} s ({rate:.2f} frames/s)"
            f" -> {self.output} ({self.storage})"
        ]
        lines += [f"  {cause}: {count}" for cause, count in sorted(self.errors.items())]
        return "\n".join(lines)


# --- inputs --------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path, image_topics: Sequence[str], default_levels: Sequence[int] = ()
                 ) -> dict[str, list[PromptRequest]]:
    """Prompts of a YAML file (schema in docs/bag.md): a list for every image topic, or image topic -> list.

    ``default_levels`` are the levels of an entry that names none (empty: all six).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BagError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read prompt file {path}: {one_line(str(exc))}") from None
    if isinstance(data, list):
        data = {topic: data for topic in image_topics}
    if not isinstance(data, dict) or not data:
        raise BagError(f"{path}: expected a list of prompts, or a mapping from image topic to a list of prompts")
    prompts = {}
    for topic, entries in data.items():
        if topic not in image_topics:
            raise BagError(f"{path}: {topic!r} is not one of the image topics ({', '.join(image_topics)})")
        if not isinstance(entries, list):
            raise BagError(f"{path}: {topic}: expected a list of prompts")
        prompts[topic] = [_yaml_prompt(entry, k, default_levels, f"{path}: {topic}[{k}]")
                          for k, entry in enumerate(entries)]
    return prompts


def _coordinates(value: Any, columns: int, where: str, what: str) -> np.ndarray:
    """(N, columns) finite floats of a YAML list of coordinate lists."""
    try:
        array = np.array(value if value is not None else [], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0, 0))
    if array.size == 0 and array.ndim == 1:
        return array.reshape(0, columns)
    if array.ndim != 2 or array.shape[1] != columns or not np.isfinite(array).all():
        raise BagError(f"{where}: {what} must be a list of [{', '.join(['x', 'y', 'x1', 'y1'][:columns])}...] "
                       f"lists of {columns} numbers, got {value!r}")
    return array


def _yaml_prompt(entry: Any, index: int, default_levels: Sequence[int], where: str) -> PromptRequest:
    if not isinstance(entry, dict):
        raise BagError(f"{where}: a prompt is a mapping with keys among {', '.join(_PROMPT_KEYS)}")
    unknown = sorted(set(entry) - set(_PROMPT_KEYS))
    if unknown:
        raise BagError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_PROMPT_KEYS)})")
    points = _coordinates(entry.get("points"), 2, where, "points")
    boxes = _coordinates(entry.get("boxes"), 4, where, "boxes")
    text = entry.get("text", "")
    levels = entry.get("levels", list(default_levels))
    prompt_id = entry.get("id", index)
    if not isinstance(text, str):
        raise BagError(f"{where}: text must be a string, got {text!r}")
    if not (isinstance(levels, list) and all(type(v) is int and v in LEVELS for v in levels)
            and len(set(levels)) == len(levels)):
        raise BagError(f"{where}: levels must be a list of distinct levels among 1..6, got {levels!r}")
    if type(prompt_id) is not int or prompt_id < 0:
        raise BagError(f"{where}: id must be an integer >= 0, got {prompt_id!r}")
    if len(points) == 0 and len(boxes) == 0 and not text:
        raise BagError(f"{where}: a prompt needs at least one point, box or text")
    return PromptRequest(prompt_id, points, boxes, tuple(sorted(levels)), text)


def parse_topic_map(values: Sequence[str], image_topics: Sequence[str], what: str) -> dict[str, str]:
    """``[IMAGE_TOPIC=]TOPIC`` values -> {image topic: topic}; a bare TOPIC applies to every image topic."""
    mapping: dict[str, str] = {}
    for value in values:
        image, separator, topic = value.rpartition("=")
        if separator and image not in image_topics:
            raise BagError(f"{what} {value!r}: {image!r} is not one of the --image-topic values")
        if not topic:
            raise BagError(f"{what} {value!r} names no topic")
        for target in [image] if separator else image_topics:
            if target in mapping:
                raise BagError(f"two {what} values for image topic {target}")
            mapping[target] = topic
    return mapping


def output_topics(image_topic: str) -> dict[str, str]:
    """Default output topic of each kind for an image topic (a trailing /compressed is dropped)."""
    base = image_topic.removesuffix("/compressed")
    return {kind: f"{base}/{kind}" for kind in ("segments", "overlay", "markers", "points")}


def default_camera_info_topic(image_topic: str) -> str:
    """``/cam/color/image_raw[/compressed]`` -> ``/cam/color/camera_info`` (the image_transport convention)."""
    parent = image_topic.removesuffix("/compressed").rsplit("/", 1)[0]
    return f"{parent}/camera_info"


# --- the model side -------------------------------------------------------------------------------------------


class Geometry(NamedTuple):
    """What 3D needs from ``semsam_ros.geometry`` and its ROS converters."""

    camera_model: Any  # CameraModel, with from_camera_info(msg)
    segments_to_3d: Callable[..., list[Any]]
    segments_cloud: Callable[[Sequence[Any], Sequence[Any]], np.ndarray]
    marker_array: Callable[..., Any]
    cloud_message: Callable[[MessageTypes, Any, np.ndarray], Any]


def load_geometry() -> Geometry:
    """The 3D functions (imported only when a bag has depth to use)."""
    from semsam_ros.geometry import CameraModel, segments_cloud, segments_to_3d
    from semsam_ros.ros.cloud import cloud_message
    from semsam_ros.ros.markers import marker_array

    return Geometry(CameraModel, segments_to_3d, segments_cloud, marker_array, cloud_message)


def build_hooks(geometry: Geometry | None, params: NodeParams | None = None, device: str = "cpu") -> Hooks:
    """The node's own steps (``ros.pipeline.build_hooks``: post-processing, automatic mode, part-of links, labels
    and text with semantics), with 3D through ``geometry`` (keeping the inlier points) or none without it."""
    from semsam_ros.ros.pipeline import build_hooks as node_hooks

    hooks, _ = node_hooks(params or NodeParams(), device)

    def measure_3d(segments: list, depth_m: np.ndarray, camera_info: Any) -> list:
        camera = geometry.camera_model.from_camera_info(camera_info)
        return geometry.segments_to_3d(segments, depth_m, camera, return_points=True)

    return dataclasses.replace(hooks, measure_3d=measure_3d if geometry else None)


# --- reading and writing --------------------------------------------------------------------------------------


def storage_of(path: Path) -> str:
    """sqlite3 or mcap: the storage of a bag directory or of a single .db3/.mcap file."""
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    return "mcap" if any(path.glob("*.mcap*")) else "sqlite3"


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open rosbags Reader; BagError with the reason when the bag is missing, unreadable or corrupt."""
    try:
        from rosbags.rosbag2 import Reader
    except ImportError:
        raise BagError("the bag tools need rosbags: pip install 'semsam_ros[bag]'") from None
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001  (rosbags, apsw and the OS raise many kinds; all mean "unreadable")
        raise BagError(f"cannot read bag {path}: {one_line(str(exc)) or type(exc).__name__}") from None
    try:
        yield reader
    finally:
        reader.close()


def read_messages(reader: Any, path: Path, connections: Sequence[Any] = (), start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages`` with a read failure (corrupt or truncated storage) turned into a one-line BagError."""
    messages = reader.messages(connections, start, stop)
    count = 0
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001  (anything the reader raises means the storage is damaged)
            raise BagError(f"bag {path} is corrupt or truncated (failed after {count} message(s)): "
                           f"{one_line(str(exc)) or type(exc).__name__}") from None
        count += 1
        yield item


def header_stamp(raw: bytes | memoryview) -> int | None:
    """Stamp (ns) of a CDR message whose first field is a std_msgs/Header, without deserialising; None if short."""
    try:
        sec, nanosec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    except (struct.error, IndexError):
        return None
    return sec * 1_000_000_000 + nanosec


def _nearest(stamps: np.ndarray, stamp: int, max_gap_ns: int | None) -> int | None:
    """Index of the stamp nearest ``stamp`` (the first of equals), if within ``max_gap_ns``."""
    if stamps.size == 0:
        return None
    gaps = np.abs(stamps - stamp)
    best = int(np.argmin(gaps))
    return best if max_gap_ns is None or gaps[best] <= max_gap_ns else None


@contextmanager
def _interrupts_at_safe_points() -> Iterator[Callable[[], None]]:
    """Ctrl-C sets a flag that the yielded check turns into KeyboardInterrupt between two messages, so that it never
    lands inside a write; a second Ctrl-C interrupts at once. Outside the main thread signals stay as they are."""
    requested = threading.Event()

    def check() -> None:
        if requested.is_set():
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def handler(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _stderr(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# --- processing -----------------------------------------------------------------------------------------------


@dataclass
class _Camera:
    """One image topic: where its results go and what each of its frames is segmented with."""

    topic: str
    names: dict[str, tuple[str, str]]  # output kind -> (topic, message type)
    prompts: list[PromptRequest]  # on every processed frame
    prompt_topic: str | None
    depth_topic: str | None
    info_topic: str | None
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


class _BagRun:
    """One ``process_bag`` call: the index pass when needed, then one pass that copies and processes."""

    def __init__(self, reader: Any, src: Path, options: BagOptions, core: NodeCore, typestore: Any,
                 geometry: Geometry | None, summary: BagSummary, log: Callable[[str], None]) -> None:
        self.reader, self.src, self.options, self.core, self.typestore = reader, src, options, core, typestore
        self.geometry, self.summary, self.log = geometry, summary, log
        self.types = core.types
        self.start = options.start.resolve(reader.start_time) if options.start else None
        self.stop = options.end.resolve(reader.start_time) if options.end else None
        self.cameras: dict[str, _Camera] = {}
        self.companions: dict[str, _Companion] = {}
        self.pending: deque[_Pending] = deque()
        self.rendering: deque[Future[list[tuple[Any, int, bytes]]]] = deque()
        self.bar: Any = None
        self.check_interrupt: Callable[[], None] = lambda: None
        self._plan()

    def run(self, writer: Any, check_interrupt: Callable[[], None]) -> None:
        from tqdm import tqdm

        self.check_interrupt = check_interrupt
        for camera in self.cameras.values():
            camera.outputs = {kind: writer.add_connection(topic, msgtype, typestore=self.typestore)
                              for kind, (topic, msgtype) in camera.names.items()}
        copies = self._add_copies(writer)
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

    def _plan(self) -> None:
        """Check the topics and plan the outputs of each image topic (before anything is written)."""
        options, topics = self.options, self.reader.topics
        for topic in options.image_topics:
            _require_topic(topics, topic, IMAGE_TYPES, "image")
        if len(options.image_topics) > 1 and (options.segments_topic or options.overlay_topic):
            raise BagError("--segments-topic and --overlay-topic need a single --image-topic")
        for what, mapping in (("prompts", options.prompts), ("prompt_topics", options.prompt_topics),
                              ("depth_topics", options.depth_topics),
                              ("camera_info_topics", options.camera_info_topics)):
            unknown = sorted(set(mapping) - set(options.image_topics))
            if unknown:
                raise BagError(f"{what} names {unknown[0]}, which is not one of the image topics")
        taken = set(topics)
        for topic in options.image_topics:
            names = output_topics(topic)
            names["segments"] = options.segments_topic or names["segments"]
            names["overlay"] = options.overlay_topic or names["overlay"]
            kinds = {"segments": SEGMENT_ARRAY}
            if options.overlay:
                kinds["overlay"] = IMAGE
            depth_topic = options.depth_topics.get(topic)
            info_topic = None
            if depth_topic is not None:
                _require_topic(topics, depth_topic, IMAGE_TYPES, "depth")
                info_topic = options.camera_info_topics.get(topic, default_camera_info_topic(topic))
                _require_topic(topics, info_topic, (CAMERA_INFO,), "camera_info")
                if self.geometry is None:
                    depth_topic = info_topic = None
                else:
                    kinds.update(markers=MARKER_ARRAY, points=POINT_CLOUD)
            prompt_topic = options.prompt_topics.get(topic)
            if prompt_topic is not None:
                _require_topic(topics, prompt_topic, (PROMPT,), "prompt")
            for kind in kinds:
                if names[kind] in taken:
                    raise BagError(f"output topic {names[kind]} exists already in the input bag or twice in the "
                                   "output; choose another with --segments-topic/--overlay-topic")
                taken.add(names[kind])
            self.cameras[topic] = _Camera(topic, {kind: (names[kind], msgtype) for kind, msgtype in kinds.items()},
                                          options.prompts.get(topic, []), prompt_topic, depth_topic, info_topic)
            for companion, msgtype in ((depth_topic, topics[depth_topic].msgtype if depth_topic else ""),
                                       (info_topic, CAMERA_INFO)):
                if companion is not None:
                    self.companions.setdefault(companion, _Companion(msgtype))

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
        params = self.core.params
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
                    self.core.errors.report(f"prompt/{type(exc).__name__}", f"{conn.topic}: prompt skipped: {exc}")
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
                    match = _nearest(depth, int(stamps[ordinal]), round(params.sync_slop * 1e9))
                    info = _nearest(infos, int(stamps[ordinal]), None)
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
                self.core.errors.report("prompt/PromptError/no_frame",
                                        f"prompt {prompt.prompt_id}: no frame on {camera.topic} before it")
                return None
            return ordinal
        ordinal = _nearest(stamps, prompt.stamp_ns, None)
        gap = abs(int(stamps[ordinal]) - prompt.stamp_ns) / 1e9 if ordinal is not None else math.inf
        if gap > max_diff_s:
            self.core.errors.report(
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
        """Segment the queued frames in order, as far as they are ready (all of them when ``final``); their outputs
        are rendered and serialised in the background while the next frame is segmented."""
        while self.pending and (final or self._ready(self.pending[0])):
            item = self.pending.popleft()
            self.check_interrupt()
            output = self._segment(item)
            if output is None:
                self.summary.skipped += 1
            else:
                self.rendering.append(renderer.submit(self._render, item, output))
            self._write_rendered(writer, RENDER_QUEUE)
            self.bar.update()

    def _write_rendered(self, writer: Any, keep: int) -> None:
        """Write the rendered outputs, in order: those done, and all but ``keep`` of the others once done."""
        while self.rendering and (self.rendering[0].done() or len(self.rendering) > keep):
            for connection, time_ns, raw in self.rendering.popleft().result():
                writer.write(connection, time_ns, raw)
            self.summary.segmented += 1

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
            self.core.errors.report(f"3d/{type(exc).__name__}", f"{topic}: cannot deserialise message: {exc}")
            return None

    def _segment(self, item: _Pending) -> Output | None:
        """The frame's Output, or None when it cannot be segmented (counted and logged)."""
        camera = item.camera
        depth, info = self._take(camera.depth_topic, item.depth), self._take(camera.info_topic, item.info)
        try:
            image = self.typestore.deserialize_cdr(item.raw, item.msgtype)
        except Exception as exc:  # noqa: BLE001  (a corrupt message skips its frame)
            self.core.errors.report(f"image/{type(exc).__name__}", f"{camera.topic}: cannot deserialise frame: {exc}")
            return None
        if camera.depth_topic is not None and (item.depth is None or item.info is None):
            self.core.errors.report("3d/no_depth", f"{camera.topic}: no depth within sync_slop of the frame at "
                                                   f"{stamp_to_ns(image.header.stamp)} ns")
        try:
            return self.core.process(Frame(image, stamp_to_ns(image.header.stamp), depth, info), item.prompts,
                                     self.options.auto)
        except Exception:  # noqa: BLE001  (counted and logged by the core; the frame is skipped)
            return None

    def _render(self, item: _Pending, output: Output) -> list[tuple[Any, int, bytes]]:
        """(output connection, bag time, CDR bytes) of every message of a segmented frame."""
        from semsam_ros.inference.render import render_overlay

        outputs, header, types = item.camera.outputs, output.message.header, self.types
        messages = [("segments", output.message, SEGMENT_ARRAY)]
        if "overlay" in outputs:
            points = [xy for p in output.prompts for xy in p.points]
            boxes = [box for p in output.prompts for box in p.boxes]
            overlay = render_overlay(output.frame.rgb, output.segments, points=points, boxes=boxes,
                                     alpha=self.core.params.overlay_alpha)
            messages.append(("overlay", rgb_to_image(types, overlay, header), IMAGE))
        if output.results3d is not None and self.geometry is not None:
            cloud = self.geometry.segments_cloud(output.segments, output.results3d)
            messages.append(("markers", self.geometry.marker_array(types, header, output.segments, output.results3d),
                             MARKER_ARRAY))
            messages.append(("points", self.geometry.cloud_message(types, header, cloud), POINT_CLOUD))
        return [(outputs[kind], item.time_ns, self.typestore.serialize_cdr(message, msgtype))
                for kind, message, msgtype in messages]


def _require_topic(topics: dict[str, Any], topic: str, msgtypes: Sequence[str], what: str) -> None:
    if topic not in topics:
        candidates = sorted(t for t, info in topics.items() if info.msgtype in msgtypes)
        raise BagError(f"{what} topic {topic} is not in the bag (topics of type {' or '.join(msgtypes)}: "
                       f"{', '.join(candidates) or 'none'})")
    if topics[topic].msgtype not in msgtypes:
        raise BagError(f"{what} topic {topic} has type {topics[topic].msgtype}, expected {' or '.join(msgtypes)}")


def check_paths(src: Path, dst: Path) -> None:
    """BagError unless the input exists and the output does not."""
    if not src.exists():
        raise BagError(f"bag not found: {src}")
    if dst.exists():
        raise BagError(f"output {dst} exists already; choose another --out or delete it")


def process_bag(src: str | Path, dst: str | Path, predictor: Any, options: BagOptions, *,
                log: Callable[[str], None] | None = None) -> BagSummary:
    """Process bag ``src`` into the new bag ``dst`` with ``predictor`` (a semsam_ros.Predictor); see docs/bag.md.

    Raises BagError (one line) for a missing, unreadable or corrupt input, an existing output or bad options. On
    KeyboardInterrupt the output is closed, valid and readable with everything processed so far, the summary is
    logged, and the interrupt propagates.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from semsam_ros.ros.typestore import STORES, make_typestore

    src, dst, log = Path(src), Path(dst), log or _stderr
    if options.every < 1:
        raise BagError(f"every must be >= 1, got {options.every}")
    if not options.image_topics:
        raise BagError("no image topic given")
    if options.storage not in (None, *STORAGES):
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {options.storage!r}")
    if options.distro not in (None, *STORES):
        raise BagError(f"distro must be one of {', '.join(STORES)}, got {options.distro!r}")
    reasons = options.params.validate()
    if reasons:
        raise BagError("; ".join(reasons))
    check_paths(src, dst)
    geometry = load_geometry() if options.depth_topics else None
    began = time.perf_counter()
    with open_bag(src) as reader:
        storage = options.storage or storage_of(src)
        distro = options.distro or (reader.ros_distro if reader.ros_distro in STORES else "humble")
        typestore = make_typestore(distro)
        types = MessageTypes.from_typestore(typestore)
        core = NodeCore(options.params, predictor, types,
                        build_hooks(geometry, options.params, str(getattr(predictor, "device", "cpu"))),
                        model_id=getattr(getattr(predictor, "model", None), "model_id", ""), log=log)
        summary = BagSummary(dst, storage)
        run = _BagRun(reader, src, options, core, typestore, geometry, summary, log)
        writer = Writer(dst, version=BAG_VERSION, storage_plugin=StoragePlugin[storage.upper()])
        writer.open()
        writer.set_custom_data("semsam_ros.model_id", core.model_id)
        try:
            with _interrupts_at_safe_points() as check_interrupt:
                run.run(writer, check_interrupt)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            writer.close()
            summary.errors = dict(core.errors.counts)
            summary.seconds = time.perf_counter() - began
            if summary.interrupted:
                log(str(summary))
    return summary


# --- bag-info -------------------------------------------------------------------------------------------------


def bag_info(path: str | Path) -> dict[str, Any]:
    """Storage, time span, and per topic its type and count; image topics also their rate (Hz, from the bag times)
    and the encoding (or format) and size of their first frame."""
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    with open_bag(path) as reader:
        typestore = get_typestore(Stores.ROS2_HUMBLE)
        topics = reader.topics
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        times: dict[str, list[int]] = {t: [] for t in topics if topics[t].msgtype in IMAGE_TYPES}
        first: dict[str, dict[str, Any]] = {}
        for conn, time_ns, raw in read_messages(reader, path, images):
            times[conn.topic].append(time_ns)
            if conn.topic not in first:
                try:
                    msg = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # noqa: BLE001  (reported, not fatal: this is a summary)
                    first[conn.topic] = {"error": f"cannot deserialise: {exc}"}
                    continue
                first[conn.topic] = ({"format": msg.format} if conn.msgtype == COMPRESSED_IMAGE else
                                     {"encoding": msg.encoding, "width": int(msg.width), "height": int(msg.height)})
        entries = []
        for topic, info in sorted(topics.items()):
            entry: dict[str, Any] = {"topic": topic, "type": info.msgtype, "count": info.msgcount}
            if topic in times:
                stamps = times[topic]
                span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
                entry["rate_hz"] = round((len(stamps) - 1) / span, 3) if span > 0 else None
                entry.update(first.get(topic, {}))
            entries.append(entry)
        count = reader.message_count
        return {
            "path": str(path), "storage": storage_of(path), "ros_distro": reader.ros_distro, "messages": count,
            "start_ns": reader.start_time if count else None, "end_ns": reader.end_time if count else None,
            "duration_s": reader.duration / 1e9, "topics": entries,
        }


# --- command line ---------------------------------------------------------------------------------------------


def _time_argument(text: str) -> BagTime:
    try:
        return BagTime.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="rosbag2 directory, or a single .db3 or .mcap file")
    parser.add_argument("--out", required=True, type=Path, help="output bag directory (must not exist)")
    parser.add_argument("--image-topic", action="append", required=True, metavar="TOPIC",
                        help="sensor_msgs/Image or CompressedImage topic to segment; repeat for more")
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=Path, metavar="YAML", help="pixel points/boxes per image topic")
    parser.add_argument("--prompt-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="recorded semsam_ros/msg/Prompt topic (bare: for every image topic)")
    parser.add_argument("--auto", action="store_true", help="also segment everything on every processed frame")
    parser.add_argument("--levels", type=parse_levels,
                        help="levels of --auto (default 1,3,6) and of YAML prompts naming none (default all)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="process every N-th frame (default: 1)")
    parser.add_argument("--start", type=_time_argument, metavar="TIME",
                        help="seconds after the bag start, or absolute ns (integer >= 1e15, or with suffix ns)")
    parser.add_argument("--end", type=_time_argument, metavar="TIME", help="end of the window (exclusive), as --start")
    parser.add_argument("--segments-topic", help="default <image topic>/segments (single image topic only)")
    parser.add_argument("--overlay-topic", help="default <image topic>/overlay (single image topic only)")
    parser.add_argument("--no-overlay", action="store_true", help="write no overlay images")
    parser.add_argument("--depth-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="depth registered to the image (16UC1 mm or 32FC1 m), for 3D")
    parser.add_argument("--camera-info-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="camera_info for 3D (default: camera_info next to the image topic)")
    parser.add_argument("--storage", choices=STORAGES, help="output storage (default: as the input)")
    parser.add_argument("--distro", choices=("humble", "jazzy"), help="message definitions (default: the bag's)")
    parser.add_argument("--params", type=Path, metavar="YAML",
                        help="node parameter file (e.g. config/semsam.yaml); model parameters in it are ignored")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="one node parameter, e.g. score_threshold=0.7; repeat for more")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def node_params(params_file: Path | None, settings: Sequence[str], auto_levels: Sequence[int] | None
                ) -> NodeParams:
    """NodeParams from a node parameter YAML, then NAME=VALUE settings, then the --levels of --auto."""
    import yaml

    values: dict[str, Any] = {}
    if params_file is not None:
        try:
            data = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise BagError(f"cannot read parameter file {params_file}: {one_line(str(exc))}") from None
        nested = [v["ros__parameters"] for v in data.values() if isinstance(v, dict) and "ros__parameters" in v] \
            if isinstance(data, dict) else []
        data = nested[0] if nested else data
        if not isinstance(data, dict):
            raise BagError(f"{params_file}: expected a mapping of node parameters")
        values.update(data)
    for setting in settings:
        name, separator, text = setting.partition("=")
        if not separator:
            raise BagError(f"--set {setting!r}: expected NAME=VALUE")
        values[name.strip()] = yaml.safe_load(text)
    if auto_levels is not None:
        values["auto_levels"] = list(auto_levels)
    try:
        params = NodeParams.from_dict(values)
        reasons = params.validate()
    except (TypeError, ValueError) as exc:
        raise BagError(f"node parameters: {exc}") from None
    if reasons:
        raise BagError("node parameters: " + "; ".join(reasons))
    return params


def run_bag(args: argparse.Namespace) -> int:
    if not (args.prompts or args.prompt_topic or args.auto):
        raise UserError("nothing to segment: give --prompts YAML, --prompt-topic TOPIC or --auto")
    if args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    topics = list(dict.fromkeys(args.image_topic))
    try:
        options = BagOptions(
            image_topics=topics,
            prompts=load_prompts(args.prompts, topics, args.levels or ()) if args.prompts else {},
            prompt_topics=parse_topic_map(args.prompt_topic, topics, "--prompt-topic"),
            auto=args.auto,
            params=node_params(args.params, args.set, args.levels if args.auto else None),
            every=args.every, start=args.start, end=args.end, storage=args.storage, distro=args.distro,
            segments_topic=args.segments_topic, overlay_topic=args.overlay_topic, overlay=not args.no_overlay,
            depth_topics=parse_topic_map(args.depth_topic, topics, "--depth-topic"),
            camera_info_topics=parse_topic_map(args.camera_info_topic, topics, "--camera-info-topic"),
            progress=not args.quiet,
        )
        check_paths(Path(args.input), args.out)
        predictor = load_predictor(args)
        summary = process_bag(args.input, args.out, predictor, options)
    except BagError as exc:
        raise UserError(str(exc)) from None
    print(summary)
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="rosbag2 directory, or a single .db3 or .mcap file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_info(args: argparse.Namespace) -> int:
    try:
        info = bag_info(args.input)
    except BagError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['storage']}, {info['messages']} message(s), {info['duration_s']:.3f} s"
          + (f" from {info['start_ns']} ns" if info["start_ns"] is not None else "")
          + (f", ros_distro {info['ros_distro']}" if info["ros_distro"] else ""))
    width = max([len(e["topic"]) for e in info["topics"]] + [5])
    type_width = max([len(e["type"]) for e in info["topics"]] + [4])
    print(f"{'topic':<{width}}  {'type':<{type_width}}  {'count':>7}  image")
    for entry in info["topics"]:
        image = ""
        if "rate_hz" in entry:
            rate = f"{entry['rate_hz']:.2f} Hz" if entry["rate_hz"] is not None else "- Hz"
            detail = entry.get("format") or (f"{entry['width']}x{entry['height']} {entry['encoding']}"
                                             if "encoding" in entry else entry.get("error", ""))
            image = f"{rate}, {detail}"
        print(f"{entry['topic']:<{width}}  {entry['type']:<{type_width}}  {entry['count']:>7}  {image}".rstrip())
    return 0
