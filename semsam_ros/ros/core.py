"""The node's logic without ROS: frame buffer, prompt matching by stamp, sticky prompts, rate control, assembly.

Threading model: subscription callbacks only call ``submit_frame`` / ``submit_prompt`` / ``request`` (cheap, no
decoding); one worker thread loops on ``wait_for_work`` + ``step``, which does all decoding and inference. A frame
goes to the worker through a one-frame slot, so the worker always takes the newest frame and a frame replaced
before the worker took it is counted as dropped; it is never processed late. Every received frame also enters a
short buffer; its RGB and image embedding are computed once, on first use, so a stamped prompt is answered on the
buffered frame nearest its stamp without running the encoder twice for one frame.

Model-specific steps are injected (see ``Hooks``) so this module needs neither torch nor rclpy.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import numpy as np

from semsam_ros.types import BACKENDS, LEVELS, PRECISIONS, Segment, Segment3D
from semsam_ros.ros.convert import PromptRequest, segments_to_msg, stamp_to_ns
from semsam_ros.ros.images import image_to_depth, image_to_rgb
from semsam_ros.ros.msgtypes import MessageTypes

MODES = ("prompts", "auto", "both")
PROMPT_BATCH = 16  # prompts per predictor call (bounds the (N, 6, H, W) logits in memory)
VOCABULARY_PARAMS = ("vocabulary", "vocabulary_objects", "vocabulary_parts")


def _param(default: Any, doc: str) -> Any:
    """A NodeParams field with its documentation (used for the ROS parameter descriptors).

    A list defaulting to empty is a list of strings (the node declares its ROS type explicitly: an empty list
    says nothing about its element type).
    """
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class NodeParams:
    """Every node parameter with its default (mirrored in config/semsam.yaml); ``validate`` explains bad values.

    Parameters in ``RUNTIME_PARAMS`` apply at once when set; the others at the next configure/activate.
    """

    checkpoint: str = _param("", "model weights: an official .pth or our .safetensors (required)")
    model_config: str = _param("", "'' (inferred from the weights), swint, swinl or an official-format YAML path")
    device: str = _param("auto", "auto (cuda when available), cpu, cuda or cuda:N")
    backend: str = _param("eager", "eager, compile or tensorrt")
    precision: str = _param("fp32", "fp32, fp16 or bf16")
    input_size: int = _param(640, "short side of the image given to the encoder, pixels")
    image_transport: str = _param(
        "raw", "raw: sensor_msgs/Image on 'image'; compressed: sensor_msgs/CompressedImage on 'image/compressed'")
    use_depth: bool = _param(
        False, "also subscribe 'depth' (registered to the image) and 'camera_info', synchronised, for 3D")
    sync_slop: float = _param(0.05, "ApproximateTime tolerance between image, depth and camera_info, s")
    input_reliability: str = _param("best_effort", "QoS reliability of the inputs: best_effort or reliable")
    input_depth: int = _param(5, "QoS history depth of the inputs")
    mode: str = _param("prompts", "prompts, auto (segment everything at auto_rate_hz) or both")
    auto_rate_hz: float = _param(1.0, "rate of automatic segmentation, Hz")
    auto_levels: list[int] = _param([1, 3, 6], "granularity levels of automatic segmentation, 1..6 coarse to fine")
    points_per_side: int = _param(16, "automatic segmentation: point grid size")
    auto_iou_threshold: float = _param(0.88, "automatic segmentation: minimum raw IoU score")
    stability_threshold: float = _param(0.92, "automatic segmentation: minimum stability score")
    nms_iou: float = _param(0.7, "automatic segmentation: box NMS IoU")
    score_threshold: float = _param(
        0.5, "prompted masks: minimum IoU score (rounded to 2 decimals); a prompt none of whose masks reaches it "
             "is answered with no mask")
    dedupe_iou: float = _param(0.95, "prompted masks: drop a mask overlapping a kept one by more than this IoU")
    min_region_area: int = _param(100, "holes and islands smaller than this are removed, pixels")
    buffer_size: int = _param(8, "recent frames kept, with their image embeddings, for stamped prompts")
    max_stamp_diff: float = _param(0.5, "largest gap between a prompt's stamp and the frame it is answered on, s")
    label_image_level: int = _param(3, "the granularity level drawn into ~/label_image")
    overlay_alpha: float = _param(0.5, "opacity of the masks in ~/overlay")
    semantics: bool = _param(False, "label segments with a CLIP model (needs transformers and a local model)")
    clip_model: str = _param("", "'' (the labeller's default), a local folder or a model id in the local HF cache")
    vocabulary: str = _param("", "'' (the shipped vocabulary) or a vocabulary YAML path")
    vocabulary_objects: list[str] = _param(
        [], "object names for levels 1-3, replacing those of the vocabulary file; empty: the file's")
    vocabulary_parts: list[str] = _param(
        [], "part names for levels 4-6, replacing those of the vocabulary file; empty: the file's")
    text_top_k: int = _param(
        1, "masks a prompt's text keeps: per point, among its boxes' masks, or among the automatic masks of a "
           "text-only prompt")
    error_log_period: float = _param(10.0, "seconds between two log lines of the same error cause")
    autostart: bool = _param(True, "configure and activate on start")

    def validate(self) -> list[str]:
        """Why these values are not usable (empty when they are)."""
        reasons = []

        def need(ok: bool, reason: str) -> None:
            if not ok:
                reasons.append(reason)

        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.input_size >= 32, f"input_size must be >= 32, got {self.input_size}")
        need(self.image_transport in ("raw", "compressed"),
             f"image_transport must be raw or compressed, got {self.image_transport!r}")
        need(self.sync_slop > 0, f"sync_slop must be > 0 s, got {self.sync_slop}")
        need(self.input_reliability in ("best_effort", "reliable"),
             f"input_reliability must be best_effort or reliable, got {self.input_reliability!r}")
        need(self.input_depth >= 1, f"input_depth must be >= 1, got {self.input_depth}")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(self.auto_rate_hz > 0, f"auto_rate_hz must be > 0, got {self.auto_rate_hz}")
        need(len(self.auto_levels) > 0 and len(set(self.auto_levels)) == len(self.auto_levels)
             and set(self.auto_levels) <= set(LEVELS),
             f"auto_levels must be distinct levels among 1..6, got {list(self.auto_levels)}")
        need(self.points_per_side >= 1, f"points_per_side must be >= 1, got {self.points_per_side}")
        for name in ("auto_iou_threshold", "score_threshold"):
            need(np.isfinite(getattr(self, name)), f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("stability_threshold", "nms_iou", "dedupe_iou", "overlay_alpha"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must lie in [0, 1], got {getattr(self, name)}")
        need(self.min_region_area >= 0, f"min_region_area must be >= 0, got {self.min_region_area}")
        need(self.buffer_size >= 1, f"buffer_size must be >= 1, got {self.buffer_size}")
        need(self.max_stamp_diff > 0, f"max_stamp_diff must be > 0 s, got {self.max_stamp_diff}")
        need(self.label_image_level in LEVELS, f"label_image_level must lie in 1..6, got {self.label_image_level}")
        need(self.error_log_period >= 0, f"error_log_period must be >= 0 s, got {self.error_log_period}")
        for name in ("vocabulary_objects", "vocabulary_parts"):
            names = getattr(self, name)
            need(all(isinstance(n, str) and n.strip() for n in names),
                 f"{name} must be a list of non-empty names, got {list(names)}")
        for name in VOCABULARY_PARAMS:
            need(self.semantics or not getattr(self, name),
                 f"{name} needs semantics: true (semantics is off, so there is no vocabulary to change)")
        need(self.text_top_k >= 1, f"text_top_k must be >= 1, got {self.text_top_k}")
        return reasons

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NodeParams:
        """NodeParams from a name -> value mapping; unknown names are a ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(unknown)}")
        return cls(**values)


RUNTIME_PARAMS = frozenset({
    "mode", "auto_rate_hz", "auto_levels", "points_per_side", "auto_iou_threshold", "stability_threshold",
    "nms_iou", "score_threshold", "dedupe_iou", "min_region_area", "max_stamp_diff", "label_image_level",
    "overlay_alpha", "error_log_period", "vocabulary", "vocabulary_objects", "vocabulary_parts", "text_top_k",
})


@dataclass
class Frame:
    """One received camera frame; ``rgb`` and ``embedding`` are filled by the worker on first use."""

    image: Any  # sensor_msgs/Image or CompressedImage
    stamp_ns: int
    depth: Any | None = None
    camera_info: Any | None = None
    rgb: np.ndarray | None = None
    embedding: Any | None = None

    @property
    def header(self) -> Any:
        return self.image.header


@dataclass
class Output:
    """One published result: the SegmentArray of a frame and what the optional outputs are rendered from."""

    frame: Frame
    segments: list[Segment]
    message: Any  # semsam_ros/SegmentArray
    results3d: list[Segment3D] | None
    prompts: list[PromptRequest]


@dataclass
class Hooks:
    """Model-specific steps, injected by the node (and by tests as fakes).

    postprocess(mask_logits (K, H, W), iou_scores (K,), levels (K,), prompt_id, point, params) -> segments of one
        prompt, K being the requested levels.
    automatic(predictor, rgb, levels, params) -> segments of the whole image; ``predictor`` already holds the
        frame's embedding and its ``set_image`` reuses it.
    annotate(rgb, segments) -> the same Segment objects, updated in place, with unique ids (and, with semantics,
        part-of links and labels); default: ids 0..N-1 in order.
    select_text(segments, text, rgb, point, top_k) -> at most ``top_k`` of ``segments`` that best match ``text``,
        best first; with ``point`` (x, y) only masks holding that pixel compete. Without it a prompt's text
        filters nothing (and that is logged).
    measure_3d(segments, depth_m, camera_info) -> one 3D result per segment.
    set_vocabulary(file, objects, parts) -> whether the labeller's vocabulary changed: the vocabulary of a YAML
        file ('' the shipped one) whose object / part names are replaced by non-empty ``objects`` / ``parts``;
        ValueError when it cannot be used. None: no semantics.
    class_names() -> (object names, part names) of the current vocabulary.
    """

    postprocess: Callable[..., list[Segment]]
    automatic: Callable[..., list[Segment]] | None = None
    annotate: Callable[[np.ndarray, list[Segment]], list[Segment]] | None = None
    select_text: Callable[..., list[Segment]] | None = None
    measure_3d: Callable[[list[Segment], np.ndarray, Any], list[Segment3D]] | None = None
    set_vocabulary: Callable[[str, Sequence[str], Sequence[str]], bool] | None = None
    class_names: Callable[[], tuple[list[str], list[str]]] | None = None


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


def number_segments(rgb: np.ndarray, segments: list[Segment]) -> list[Segment]:
    """Default ``annotate``: ids 0..N-1 in the given order."""
    for i, seg in enumerate(segments):
        seg.id = i
    return segments


class ErrorLog:
    """Counts errors per cause and logs each cause at most once per ``period_s`` (bad input never kills the node)."""

    def __init__(self, log: Callable[[str], None], period_s: float, clock: Callable[[], float]) -> None:
        self._log, self.period_s, self._clock = log, period_s, clock
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def report(self, cause: str, message: str) -> None:
        with self._lock:
            count = self.counts[cause] = self.counts.get(cause, 0) + 1
            now = self._clock()
            due = cause not in self._last or now - self._last[cause] >= self.period_s
            if due:
                self._last[cause] = now
        if due:
            self._log(f"{message} [{cause}: {count} so far]")


class RateMeter:
    """Outputs per second and mean latency over a sliding window (the worker adds, diagnostics read)."""

    def __init__(self, clock: Callable[[], float], window_s: float = 5.0) -> None:
        self._clock, self._window = clock, window_s
        self._events: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, latency_ms: float) -> None:
        with self._lock:
            self._events.append((self._clock(), latency_ms))

    def summary(self) -> tuple[float, float]:
        """(rate in Hz, mean latency in ms) of the last window; zeros when empty."""
        now = self._clock()
        with self._lock:
            while self._events and now - self._events[0][0] > self._window:
                self._events.popleft()
            latencies = [lat for _, lat in self._events]
        if not latencies:
            return 0.0, 0.0
        return len(latencies) / self._window, float(np.mean(latencies))


class _FramePredictor:
    """A predictor view whose ``set_image`` reuses the frame's embedding (for the automatic generator)."""

    def __init__(self, predictor: Any, frame: Frame) -> None:
        self._predictor, self._frame = predictor, frame

    def set_image(self, image: np.ndarray) -> None:
        if image.shape != self._frame.rgb.shape:
            raise ValueError("the automatic generator asked for another image than the frame's (crops are not "
                             "supported by the node)")
        self._predictor.set_embedding(self._frame.embedding)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


@dataclass
class _Job:
    prompts: list[PromptRequest]
    frame: Frame | None = None  # a service request with its own image
    future: Future | None = None  # a service request waiting for its SegmentArray


@dataclass
class _Work:
    frame: Frame
    prompts: list[PromptRequest] = field(default_factory=list)
    auto: bool = False


class PromptError(ValueError):
    """A prompt that cannot be answered; ``cause`` is "no_frame", "stamp", "outside", "empty",
    "text_without_semantics" or "cleared"."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class NodeCore:
    """Everything the node does between receiving messages and publishing results."""

    def __init__(
        self,
        params: NodeParams,
        predictor: Any,
        types: MessageTypes,
        hooks: Hooks,
        *,
        model_id: str = "",
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        reasons = params.validate()
        if reasons:
            raise ValueError("; ".join(reasons))
        self.params, self.predictor, self.types, self.hooks, self.model_id = params, predictor, types, hooks, model_id
        self._clock = clock
        self.errors = ErrorLog(log, params.error_log_period, clock)
        self.rate = RateMeter(clock)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffer: deque[Frame] = deque(maxlen=params.buffer_size)
        self._slot: Frame | None = None
        self._jobs: list[_Job] = []
        self._sticky: dict[int, PromptRequest] = {}
        self._next_auto = float("-inf")
        self._errors_reported = 0
        self.counters = dict.fromkeys(
            ("frames_received", "frames_dropped", "frames_encoded", "results", "prompts_received", "prompts_answered",
             "prompts_rejected"), 0)

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
        if self.hooks.set_vocabulary is not None and wanted != current:
            changed = self.hooks.set_vocabulary(*wanted)
        with self._lock:
            if params.auto_rate_hz != self.params.auto_rate_hz or params.mode != self.params.mode:
                self._next_auto = float("-inf")
            self.params = params
            self.errors.period_s = params.error_log_period
        return changed

    def vocabulary_update(self, objects: Sequence[str], parts: Sequence[str]) -> NodeParams:
        """The parameters after a set_vocabulary request: a non-empty list replaces the current object (part)
        names, an empty one keeps them. ValueError when semantics is off or a name is empty."""
        if self.hooks.set_vocabulary is None:
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
        return ([], []) if self.hooks.class_names is None else self.hooks.class_names()

    def class_names(self) -> list[str]:
        """"unknown", then the object and part names of the labeller's vocabulary (LabelInfo class ids 0..N-1)."""
        objects, parts = self.vocabulary_names()
        return ["unknown", *objects, *parts]

    def vocabulary_summary(self, changed: bool) -> str:
        """One line for the service reply and the log."""
        if self.hooks.class_names is None:
            return "no vocabulary (semantics is off)"
        objects, parts = self.vocabulary_names()
        state = "changed" if changed else "unchanged"
        return f"vocabulary {state}: {len(objects)} objects, {len(parts)} parts"

    def submit_frame(self, image: Any, depth: Any | None = None, camera_info: Any | None = None) -> None:
        """A new camera frame (messages as received; decoded later by the worker)."""
        frame = Frame(image, stamp_to_ns(image.header.stamp), depth, camera_info)
        with self._lock:
            self.counters["frames_received"] += 1
            self._buffer.append(frame)
            if self._sticky or self._auto_due():
                if self._slot is not None:
                    self.counters["frames_dropped"] += 1
                self._slot = frame
                self._wake.notify()

    def submit_prompt(self, prompt: PromptRequest) -> None:
        """A Prompt from the topic: answered once on the frame nearest its stamp; sticky ones on every new frame.

        A sticky prompt replaces the sticky prompt of the same id; a prompt with no point, box or text removes it.
        """
        with self._lock:
            self.counters["prompts_received"] += 1
            if update_sticky(self._sticky, prompt):
                self._jobs.append(_Job([prompt]))
                self._wake.notify()

    def request(self, prompt: PromptRequest, image: Any | None = None) -> Future:
        """A service request: a Future of its SegmentArray (ValueError in it when it cannot be answered)."""
        future: Future = Future()
        frame = None if image is None else Frame(image, stamp_to_ns(image.header.stamp))
        with self._lock:
            self.counters["prompts_received"] += 1
            self._jobs.append(_Job([replace(prompt, sticky=False)], frame, future))
            self._wake.notify()
        return future

    def clear_prompts(self) -> int:
        """Forget sticky and pending topic prompts; returns how many sticky prompts there were."""
        with self._lock:
            count = len(self._sticky)
            self._sticky.clear()
            for job in self._jobs:
                if job.future is not None:
                    job.future.set_exception(PromptError("prompts cleared before this request was served", "cleared"))
            self._jobs.clear()
            return count

    def sticky_prompts(self) -> list[PromptRequest]:
        with self._lock:
            return list(self._sticky.values())

    def release(self) -> None:
        """Drop buffered frames and their embeddings (deactivate frees GPU memory this way)."""
        with self._lock:
            self._buffer.clear()
            self._slot = None

    # --- the worker ---------------------------------------------------------------------------------------------

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a frame or prompt is waiting (True) or ``timeout`` seconds pass (False)."""
        with self._wake:
            return self._wake.wait_for(lambda: self._slot is not None or bool(self._jobs), timeout)

    def step(self) -> list[Output]:
        """Do all waiting work: answer queued prompts, then the newest frame's sticky prompts and automatic run."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
            frame, self._slot = self._slot, None
            sticky = list(self._sticky.values())
        work: dict[int, _Work] = {}  # by id(frame): one SegmentArray per frame
        for job in jobs:
            if job.future is not None:
                self._serve(job)
                continue
            for prompt in job.prompts:
                try:
                    target = self._match(prompt)
                except PromptError as exc:
                    self._report("prompt", exc)
                    continue
                work.setdefault(id(target), _Work(target)).prompts.append(prompt)
        if frame is not None:
            item = work.setdefault(id(frame), _Work(frame))
            item.prompts.extend(p for p in sticky if all(p is not q for q in item.prompts))
            with self._lock:
                item.auto = self._auto_due()
                if item.auto:
                    self._next_auto = self._clock() + 1.0 / self.params.auto_rate_hz
        outputs = []
        for item in work.values():
            output = self._run(item.frame, item.prompts, item.auto)
            if output is not None:
                outputs.append(output)
        return outputs

    def process(self, frame: Frame, prompts: Sequence[PromptRequest], auto: bool) -> Output:
        """Segment ``frame`` at once with ``prompts`` (and everything when ``auto``), outside the frame slot, the
        buffer and rate control: the offline tools' entry point, doing what ``step`` does for one frame.

        Prompts that do not fit the image are rejected and counted as in ``step``; the others are answered. With
        none left and no automatic run, the Output has no segments and the encoder does not run. A frame that
        cannot be decoded or segmented raises, after being counted and logged.
        """
        if frame.rgb is None:
            try:
                frame.rgb = image_to_rgb(frame.image)
            except Exception as exc:
                self._report("image", exc)
                raise
        height, width = frame.rgb.shape[:2]
        valid = self._fitting(prompts, height, width)
        if valid or auto:
            return self._run(frame, valid, auto, strict=True)
        message = segments_to_msg(self.types, [], frame.header, (height, width), self.model_id)
        return Output(frame, [], message, None, [])

    def stats(self) -> dict[str, Any]:
        """Counters, errors per cause, output rate and latency, for diagnostics."""
        rate, latency = self.rate.summary()
        with self._lock:
            buffered, sticky = len(self._buffer), len(self._sticky)
        return {**self.counters, "rate_hz": rate, "latency_ms": latency, "buffered_frames": buffered,
                "sticky_prompts": sticky, "errors": dict(self.errors.counts)}

    def diagnostics(self) -> tuple[int, str, dict[str, str]]:
        """(level 0 OK / 1 WARN, summary, key-values) for /diagnostics; WARN when errors happened since the last
        call."""
        stats = self.stats()
        errors = stats.pop("errors")
        total = sum(errors.values())
        new, self._errors_reported = total - self._errors_reported, total
        values = {k: (f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in stats.items()}
        values.update({f"errors/{cause}": str(count) for cause, count in sorted(errors.items())})
        values["model_id"] = self.model_id
        if new:
            return 1, f"{new} error(s) since the last report; causes: {', '.join(sorted(errors))}", values
        return 0, f"{stats['rate_hz']:.1f} results/s, {stats['latency_ms']:.0f} ms", values

    # --- internals ----------------------------------------------------------------------------------------------

    def _auto_due(self) -> bool:
        return self.params.mode in ("auto", "both") and self._clock() >= self._next_auto

    def _match(self, prompt: PromptRequest) -> Frame:
        """The buffered frame nearest the prompt's stamp (the newest one for a zero stamp)."""
        with self._lock:
            frames = list(self._buffer)
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

    def _run(self, frame: Frame, prompts: list[PromptRequest], auto: bool, strict: bool = False) -> Output | None:
        """``_process`` with every failure counted and logged (re-raised when ``strict``, for service calls).

        None when there is nothing to publish: a failure, or no valid prompt and no automatic run.
        """
        start = time.perf_counter()
        stage = "image"
        try:
            if frame.rgb is None:
                frame.rgb = image_to_rgb(frame.image)
            stage = "inference"
            return self._process(frame, prompts, auto, strict, start)
        except Exception as exc:  # noqa: BLE001  (bad input or a failing model must never kill the node)
            self._report("prompt" if isinstance(exc, PromptError) else stage, exc)
            if strict:
                raise
            return None

    def _serve(self, job: _Job) -> None:
        try:
            frame = job.frame or self._match(job.prompts[0])
        except PromptError as exc:
            self._report("prompt", exc)
            job.future.set_exception(exc)
            return
        try:
            job.future.set_result(self._run(frame, job.prompts, auto=False, strict=True).message)
        except Exception as exc:  # noqa: BLE001  (already reported; the caller gets it through the future)
            job.future.set_exception(exc)

    def _report(self, stage: str, exc: Exception) -> None:
        """Count and log a failure once per cause: its stage, exception type, and encoding or prompt problem."""
        detail = getattr(exc, "cause", None) or getattr(exc, "encoding", None)
        cause = f"{stage}/{type(exc).__name__}" + (f"/{detail}" if detail else "")
        if isinstance(exc, PromptError):
            self.counters["prompts_rejected"] += 1
            self.errors.report(cause, f"prompt rejected: {exc}")
        else:
            self.errors.report(cause, f"{stage} error: {exc}")

    def _check(self, prompt: PromptRequest, height: int, width: int) -> None:
        """PromptError unless ``prompt`` can be answered on a ``height`` x ``width`` image: it has a point, a box or
        (with semantics) text; every point is a pixel of the image (0 <= x < width, 0 <= y < height) and every
        box a non-empty part of it."""
        if prompt.is_empty and not prompt.text:
            raise PromptError(f"prompt {prompt.prompt_id}: no point, box or text to segment", "empty")
        if prompt.is_empty and self.hooks.select_text is None:
            raise PromptError(
                f"prompt {prompt.prompt_id}: text {prompt.text!r} without a point or box needs semantics "
                "(parameter semantics: true); nothing was segmented", "text_without_semantics")
        pts, bxs = prompt.points, prompt.boxes
        x, y = pts[:, 0], pts[:, 1]
        bad_points = ~np.isfinite(pts).all(1) | (x < 0) | (x >= width) | (y < 0) | (y >= height)
        x0, y0, x1, y1 = bxs.T
        bad_boxes = ~np.isfinite(bxs).all(1) | (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (
            y1 <= y0)
        if bad_points.any() or bad_boxes.any():
            raise PromptError(
                f"prompt {prompt.prompt_id}: points {pts[bad_points].tolist()} and boxes {bxs[bad_boxes].tolist()} "
                f"are not inside the {width}x{height} image",
                "outside",
            )

    def _fitting(
        self, prompts: Sequence[PromptRequest], height: int, width: int, strict: bool = False
    ) -> list[PromptRequest]:
        """The prompts that fit a ``height`` x ``width`` image; the others are counted and logged (raised when
        ``strict``)."""
        valid = []
        for prompt in prompts:
            try:
                self._check(prompt, height, width)
            except PromptError as exc:
                if strict:
                    raise
                self._report("prompt", exc)
                continue
            valid.append(prompt)
        return valid

    def _process(
        self, frame: Frame, prompts: list[PromptRequest], auto: bool, strict: bool, start: float
    ) -> Output | None:
        """Segment ``prompts`` (and everything, when ``auto``) on the decoded ``frame``; ``start``: perf_counter
        when its work began."""
        params = self.params
        height, width = frame.rgb.shape[:2]
        valid = self._fitting(prompts, height, width, strict=strict)
        if not valid and not auto:
            return None
        encode_ms = 0.0
        if frame.embedding is None:
            encode_start = time.perf_counter()
            frame.embedding = self.predictor.encode(frame.rgb)
            encode_ms = (time.perf_counter() - encode_start) * 1000.0
            self.counters["frames_encoded"] += 1
        self.predictor.set_embedding(frame.embedding)

        decode_start = time.perf_counter()
        owned: list[tuple[PromptRequest, list[Segment]]] = [(p, []) for p in valid]
        origin: dict[int, int] = {}  # id(segment) -> index of its point in its prompt; -1: from a box
        items = [(k, "point", xy, j) for k, (p, _) in enumerate(owned) for j, xy in enumerate(p.points)]
        items += [(k, "box", box, -1) for k, (p, _) in enumerate(owned) for box in p.boxes]
        for begin in range(0, len(items), PROMPT_BATCH):
            chunk = items[begin: begin + PROMPT_BATCH]
            chunk.sort(key=lambda item: item[1] != "point")  # the predictor answers points first, then boxes
            points = np.array([c[2] for c in chunk if c[1] == "point"]).reshape(-1, 2)
            boxes = np.array([c[2] for c in chunk if c[1] == "box"]).reshape(-1, 4)
            pred = self.predictor.predict(points=points, boxes=boxes)
            for row, (k, kind, coords, j) in enumerate(chunk):
                prompt, segs = owned[k]
                levels = prompt.levels or LEVELS
                cols = slice(None) if tuple(levels) == LEVELS else [level - 1 for level in levels]  # all: a view
                point = (float(coords[0]), float(coords[1])) if kind == "point" else None
                new = self.hooks.postprocess(pred.mask_logits[row][cols], pred.iou_scores[row][cols], levels,
                                             prompt.prompt_id, point, params)
                origin.update((id(s), j) for s in new)
                segs += new
        runs: dict[tuple[int, ...], list[Segment]] = {}  # automatic masks by levels: AMG runs once per set
        if auto:
            runs[tuple(params.auto_levels)] = self._automatic(frame, tuple(params.auto_levels), -1)
        for prompt, segs in owned:
            if prompt.is_empty and prompt.text:  # text only: search the automatic masks
                levels = prompt.levels or tuple(params.auto_levels)
                if levels not in runs:
                    runs[levels] = self._automatic(frame, levels, -1)
                segs += [replace(s, prompt_id=prompt.prompt_id, child_ids=[], top_labels=[]) for s in runs[levels]]
        automatic = runs.get(tuple(params.auto_levels), []) if auto else []
        decode_ms = (time.perf_counter() - decode_start) * 1000.0

        post_start = time.perf_counter()
        segments = [s for _, segs in owned for s in segs] + automatic
        segments = (self.hooks.annotate or number_segments)(frame.rgb, segments)
        removed: set[int] = set()
        for prompt, segs in owned:
            if prompt.text and self.hooks.select_text is None:
                self.errors.report("prompt/text_without_semantics",
                                   f"prompt {prompt.prompt_id}: text {prompt.text!r} ignored (semantics is off)")
            elif prompt.text:
                keep = self._select(prompt, segs, origin, frame.rgb)
                removed |= {id(s) for s in segs if id(s) not in keep}
        segments = [s for s in segments if id(s) not in removed]
        _drop_dangling_links(segments)
        results3d = self._measure_3d(frame, segments)
        message = segments_to_msg(
            self.types, segments, frame.header, (height, width), self.model_id, results3d,
            encode_ms=encode_ms, decode_ms=decode_ms,
            postprocess_ms=(time.perf_counter() - post_start) * 1000.0,
            total_ms=(time.perf_counter() - start) * 1000.0,
        )
        self.counters["prompts_answered"] += len(valid)
        self.counters["results"] += 1
        self.rate.add(message.total_ms)
        return Output(frame, segments, message, results3d, valid)

    def _select(self, prompt: PromptRequest, segs: list[Segment], origin: dict[int, int], rgb: np.ndarray) -> set[int]:
        """ids (``id()``) of the masks of ``prompt`` its text keeps: the best ``text_top_k`` of each point's masks
        holding that point, of its boxes' masks, and of the automatic masks of a text-only prompt."""
        top_k = self.params.text_top_k
        groups: list[tuple[list[Segment], tuple[float, float] | None]] = []
        if prompt.is_empty:
            groups.append((segs, None))
        for j, (x, y) in enumerate(prompt.points):
            groups.append(([s for s in segs if origin.get(id(s)) == j], (float(x), float(y))))
        if len(prompt.boxes):
            groups.append(([s for s in segs if origin.get(id(s)) == -1], None))
        keep: set[int] = set()
        for candidates, point in groups:
            if candidates:
                chosen = self.hooks.select_text(candidates, prompt.text, rgb, point, top_k)
                keep |= {id(s) for s in chosen[:top_k]}
        return keep

    def _automatic(self, frame: Frame, levels: Sequence[int], prompt_id: int) -> list[Segment]:
        if self.hooks.automatic is None:
            raise RuntimeError("automatic segmentation is not available (no generator loaded)")
        segments = self.hooks.automatic(_FramePredictor(self.predictor, frame), frame.rgb, tuple(levels), self.params)
        for seg in segments:
            seg.prompt_id = prompt_id
        return segments

    def _measure_3d(self, frame: Frame, segments: list[Segment]) -> list[Segment3D] | None:
        if self.hooks.measure_3d is None or frame.depth is None or frame.camera_info is None:
            return None
        try:
            return self.hooks.measure_3d(segments, image_to_depth(frame.depth), frame.camera_info)
        except ValueError as exc:  # unsupported depth encoding, depth not registered to the image...
            self._report("3d", exc)
            return None


def _drop_dangling_links(segments: list[Segment]) -> None:
    """Part-of links may only name segments that are still in the list."""
    ids = {s.id for s in segments}
    for seg in segments:
        if seg.parent_id not in ids:
            seg.parent_id = -1
        seg.child_ids = [c for c in seg.child_ids if c in ids]
