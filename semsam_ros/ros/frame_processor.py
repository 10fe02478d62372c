"""One camera frame and its prompts -> one Output: the segmentation, labels, part-of links and 3D of a frame.

``FrameProcessor.process`` is what the node's worker runs for each frame it schedules, and what ``semsam bag``
runs for each frame it reads: the two give the same SegmentArray for the same frame. The model-specific steps come
from a ``Pipeline`` (``ros.pipeline.ModelPipeline``; fakes in tests), so this module needs neither torch nor rclpy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import numpy as np

from semsam_ros.geometry.camera import CameraModel
from semsam_ros.ros.convert import PromptRequest, segments_to_msg
from semsam_ros.ros.images import image_to_depth, image_to_rgb
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.params import NodeParams
from semsam_ros.ros.telemetry import Telemetry
from semsam_ros.tracking import Tracker
from semsam_ros.types import LEVELS, Segment, Segment3D, outside_image

PROMPT_BATCH = 16  # prompts per predictor call (bounds the (N, L, H, W) logits in memory)


@dataclass
class Frame:
    """One received camera frame; ``rgb`` and ``embedding`` are filled by the worker on first use."""

    image: Any  # sensor_msgs/Image or CompressedImage
    stamp_ns: int
    depth: Any | None = None
    camera_info: Any | None = None
    rgb: np.ndarray | None = None
    embedding: Any | None = None
    pose: np.ndarray | None = None  # 4x4 camera -> track_frame at the image stamp (tracks' 3D anchors)
    camera: str = ""  # the camera it came from ('' for a node with one unnamed camera)
    encode_ms: float = 0.0  # time of the encoder call that computed ``embedding``, until a result reports it

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


class PromptError(ValueError):
    """A prompt that cannot be answered; ``cause`` is "no_frame", "stamp", "outside", "empty",
    "text_without_semantics" or "cleared"."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class Pipeline(Protocol):
    """The model-specific steps of a frame (``ros.pipeline.ModelPipeline``).

    ``semantics`` tells whether there is a labeller: without one, ``select_text``, ``set_vocabulary`` and
    ``class_names`` are never called.
    """

    semantics: bool

    def postprocess(self, mask_logits: np.ndarray, iou_scores: np.ndarray, levels: Sequence[int], prompt_id: int,
                    point: tuple[float, float] | None, params: NodeParams) -> list[Segment]:
        """The kept masks of one prompt from its (K, H, W) logits and (K,) scores, K being ``levels``."""

    def automatic(self, predictor: Any, rgb: np.ndarray, levels: tuple[int, ...], params: NodeParams
                  ) -> list[Segment]:
        """Every mask of the image; ``predictor`` already holds the frame's embedding (its set_image reuses it)."""

    def annotate(self, rgb: np.ndarray, segments: list[Segment]) -> list[Segment]:
        """The same segments with unique ids and part-of links (and, with semantics, labels)."""

    def select_text(self, segments: list[Segment], text: str, rgb: np.ndarray, point: tuple[float, float] | None,
                    top_k: int) -> list[Segment]:
        """At most ``top_k`` of ``segments`` that best match ``text``, best first (with ``point``: only masks
        holding that pixel compete)."""

    def measure_3d(self, segments: list[Segment], depth_m: np.ndarray, camera_info: Any) -> list[Segment3D]:
        """One 3D result per segment."""

    def set_vocabulary(self, file: str, objects: Sequence[str], parts: Sequence[str]) -> bool:
        """Use the vocabulary of ``file`` ('' the shipped one) with non-empty ``objects``/``parts`` replacing its
        names; whether it changed. ValueError when it cannot be used."""

    def class_names(self) -> tuple[list[str], list[str]]:
        """(object names, part names) of the current vocabulary."""


def make_tracker(params: NodeParams) -> Tracker:
    """The Tracker the node parameters describe (max_tracks, track_lost_after, track_forget_s, track_min_iou)."""
    return Tracker(max_tracks=params.max_tracks, lost_after=params.track_lost_after,
                   forget_s=params.track_forget_s, min_iou=params.track_min_iou)


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


class FrameProcessor:
    """Segments frames with prompts (and automatic runs) and assembles their SegmentArray, counting every failure."""

    def __init__(self, params: NodeParams, predictor: Any, types: MessageTypes, pipeline: Pipeline,
                 telemetry: Telemetry, model_id: str = "", tracker: Tracker | None = None) -> None:
        self.params, self.predictor, self.types, self.pipeline = params, predictor, types, pipeline
        self.telemetry, self.model_id = telemetry, model_id
        self.tracker = tracker

    def encode(self, work: Sequence[tuple[Frame, Sequence[PromptRequest], bool]]) -> list[Frame]:
        """Decode the frames of ``work`` (frame, prompts, whether it is segmented anyway: an automatic run or
        tracks) and encode, in one batched encoder call per padded size, those without an embedding that have a
        prompt that fits or are segmented anyway. Returns the decoded frames (to ``run``); the failures are counted
        and logged."""
        decoded, todo = [], []
        for frame, prompts, auto in work:
            try:
                self._decode(frame)
            except Exception:  # noqa: BLE001  (counted and logged; bad input must never kill the node)
                continue
            decoded.append(frame)
            if frame.embedding is None and (auto or any(self._fits(p, *frame.rgb.shape[:2]) for p in prompts)):
                todo.append(frame)
        if todo:
            try:
                self._encode(todo)
            except Exception as exc:  # noqa: BLE001  (a failing model must never kill the node)
                self.telemetry.report("inference", exc)
                return [frame for frame in decoded if frame not in todo]
        return decoded

    def _decode(self, frame: Frame) -> np.ndarray:
        """The frame's RGB, decoded on first use (its size checked against ``max_image_pixels`` before decoding);
        a failure is counted and logged, then raised."""
        if frame.rgb is None:
            try:
                frame.rgb = image_to_rgb(frame.image, self.params.max_image_pixels)
            except Exception as exc:
                self.telemetry.report("image", exc)
                raise
        return frame.rgb

    def _encode(self, frames: list[Frame]) -> None:
        start = time.perf_counter()
        embeddings = self.predictor.encode_batch([frame.rgb for frame in frames])
        encode_ms = (time.perf_counter() - start) * 1000.0
        for frame, embedding in zip(frames, embeddings):
            frame.embedding, frame.encode_ms = embedding, encode_ms
        self.telemetry.counters["frames_encoded"] += len(frames)

    def process(self, frame: Frame, prompts: Sequence[PromptRequest], auto: bool, track: bool = False) -> Output:
        """Segment ``frame`` at once with ``prompts`` (and everything when ``auto``), outside the frame slot, the
        buffer and rate control: the offline tools' entry point, doing what ``step`` does for one frame.

        Prompts that do not fit the image are rejected and counted as in ``step``; the others are answered. With
        none left and no automatic run, the Output has no segments and the encoder does not run. A frame that
        cannot be decoded or segmented raises, after being counted and logged. ``track``: also continue the
        tracker's tracks on this frame (frames must then come in time order).
        """
        height, width = self._decode(frame).shape[:2]
        valid = self._fitting(prompts, height, width)
        if valid or auto or track:
            return self.run(frame, valid, auto, strict=True, track=track)
        message = segments_to_msg(self.types, [], frame.header, (height, width), self.model_id)
        return Output(frame, [], message, None, [])

    def run(self, frame: Frame, prompts: list[PromptRequest], auto: bool, strict: bool = False,
            track: bool = False) -> Output | None:
        """``_process`` with every failure counted and logged (re-raised when ``strict``, for service calls).

        None when there is nothing to publish: a failure, or no valid prompt, no automatic run and no track.
        ``track``: the tracks are decoded with the prompts, in the same predictor calls, and associated.
        """
        start = time.perf_counter()
        try:
            self._decode(frame)
            return self._process(frame, prompts, auto, strict, start, track)
        except Exception as exc:  # noqa: BLE001  (bad input or a failing model must never kill the node)
            if frame.rgb is not None:  # decoding failures are counted by _decode
                self.telemetry.report("prompt" if isinstance(exc, PromptError) else "inference", exc)
            if strict:
                raise
            return None

    def _check(self, prompt: PromptRequest, height: int, width: int) -> None:
        """PromptError unless ``prompt`` can be answered on a ``height`` x ``width`` image: it has a point, a box or
        (with semantics) text; every point is a pixel of the image (0 <= x < width, 0 <= y < height) and every
        box a non-empty part of it."""
        if prompt.is_empty and not prompt.text:
            raise PromptError(f"prompt {prompt.prompt_id}: no point, box or text to segment", "empty")
        if prompt.is_empty and not self.pipeline.semantics:
            raise PromptError(
                f"prompt {prompt.prompt_id}: text {prompt.text!r} without a point or box needs semantics "
                "(parameter semantics: true); nothing was segmented", "text_without_semantics")
        pts, bxs = prompt.points, prompt.boxes
        bad_points, bad_boxes = outside_image(pts, bxs, height, width)
        if bad_points.any() or bad_boxes.any():
            raise PromptError(
                f"prompt {prompt.prompt_id}: points {pts[bad_points].tolist()} and boxes {bxs[bad_boxes].tolist()} "
                f"are not inside the {width}x{height} image",
                "outside",
            )

    def _fits(self, prompt: PromptRequest, height: int, width: int) -> bool:
        try:
            self._check(prompt, height, width)
        except PromptError:
            return False
        return True

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
                self.telemetry.report("prompt", exc)
                continue
            valid.append(prompt)
        return valid

    def _process(
        self, frame: Frame, prompts: list[PromptRequest], auto: bool, strict: bool, start: float, track: bool
    ) -> Output | None:
        """Segment ``prompts`` (and everything, when ``auto``; the tracks, when ``track``) on the decoded ``frame``;
        ``start``: perf_counter when its work began."""
        params = self.params
        height, width = frame.rgb.shape[:2]
        valid = self._fitting(prompts, height, width, strict=strict)
        track = track and self.tracker is not None and bool(self.tracker.tracks)
        if not valid and not auto and not track:
            return None
        depth_m = self._depth(frame)
        camera = self._camera(frame) if track and frame.pose is not None and depth_m is not None else None
        asks = self.tracker.prompts(frame.rgb, camera=camera, pose=frame.pose) if track else []
        if frame.embedding is None:
            self._encode([frame])
        encode_ms, frame.encode_ms = frame.encode_ms, 0.0  # reported once, by the first result of the frame
        self.predictor.set_embedding(frame.embedding)

        decode_start = time.perf_counter()
        owned: list[tuple[PromptRequest, list[Segment]]] = [(p, []) for p in valid] + [
            (PromptRequest(-1, np.reshape(a.point or (), (-1, 2)), np.reshape(a.box or (), (-1, 4)), a.levels), [])
            for a in asks]
        origin: dict[int, int] = {}  # id(segment) -> index of its point in its prompt; -1: from a box
        items = [(k, "point", xy, j) for k, (p, _) in enumerate(owned) for j, xy in enumerate(p.points)]
        items += [(k, "box", box, -1) for k, (p, _) in enumerate(owned) for box in p.boxes]
        for begin in range(0, len(items), PROMPT_BATCH):
            chunk = items[begin: begin + PROMPT_BATCH]
            chunk.sort(key=lambda item: item[1] != "point")  # the predictor answers points first, then boxes
            points = np.array([c[2] for c in chunk if c[1] == "point"]).reshape(-1, 2)
            boxes = np.array([c[2] for c in chunk if c[1] == "box"]).reshape(-1, 4)
            asked = tuple(sorted({level for c in chunk for level in owned[c[0]][0].levels or LEVELS}))
            pred = self.predictor.predict(points=points, boxes=boxes, levels=asked)  # only these are upsampled
            for row, (k, kind, coords, j) in enumerate(chunk):
                prompt, segs = owned[k]
                levels = prompt.levels or LEVELS
                cols = slice(None) if tuple(levels) == asked else [asked.index(level) for level in levels]
                point = (float(coords[0]), float(coords[1])) if kind == "point" else None
                new = self.pipeline.postprocess(pred.mask_logits[row][cols], pred.iou_scores[row][cols], levels,
                                             prompt.prompt_id, point, params)
                origin.update((id(s), j) for s in new)
                segs += new
        tracked = []
        if track:
            decoded = {a.track_id: segs for a, (_, segs) in zip(asks, owned[len(valid):])}
            tracked = self.tracker.update(decoded, frame.stamp_ns / 1e9, depth_m=depth_m, camera=camera,
                                          pose=frame.pose)
            del owned[len(valid):]
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
        segments = [s for _, segs in owned for s in segs] + tracked + automatic
        segments = self.pipeline.annotate(frame.rgb, segments)
        removed: set[int] = set()
        for prompt, segs in owned:
            if prompt.text and not self.pipeline.semantics:
                self.telemetry.errors.report("prompt/text_without_semantics",
                                   f"prompt {prompt.prompt_id}: text {prompt.text!r} ignored (semantics is off)")
            elif prompt.text:
                keep = self._select(prompt, segs, origin, frame.rgb)
                removed |= {id(s) for s in segs if id(s) not in keep}
        segments = [s for s in segments if id(s) not in removed]
        _drop_dangling_links(segments)
        results3d = self._measure_3d(depth_m, frame.camera_info, segments)
        message = segments_to_msg(
            self.types, segments, frame.header, (height, width), self.model_id, results3d,
            encode_ms=encode_ms, decode_ms=decode_ms,
            postprocess_ms=(time.perf_counter() - post_start) * 1000.0,
            total_ms=(time.perf_counter() - start) * 1000.0,
        )
        self.telemetry.counters["prompts_answered"] += len(valid)
        self.telemetry.counters["results"] += 1
        self.telemetry.rate.add(message.total_ms)
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
                chosen = self.pipeline.select_text(candidates, prompt.text, rgb, point, top_k)
                keep |= {id(s) for s in chosen[:top_k]}
        return keep

    def _automatic(self, frame: Frame, levels: Sequence[int], prompt_id: int) -> list[Segment]:
        view = _FramePredictor(self.predictor, frame)
        segments = self.pipeline.automatic(view, frame.rgb, tuple(levels), self.params)
        for seg in segments:
            seg.prompt_id = prompt_id
        return segments

    def _depth(self, frame: Frame) -> np.ndarray | None:
        """The frame's depth in metres; None without depth and camera_info, or when it cannot be used."""
        if frame.depth is None or frame.camera_info is None:
            return None
        try:
            return image_to_depth(frame.depth)
        except ValueError as exc:  # unsupported depth encoding...
            self.telemetry.report("3d", exc)
            return None

    def _camera(self, frame: Frame) -> CameraModel | None:
        """The frame's camera model, for the tracks' 3D anchors; None when its camera_info is unusable."""
        try:
            return CameraModel.from_camera_info(frame.camera_info, max_pixels=self.params.max_image_pixels)
        except ValueError as exc:
            self.telemetry.report("track", exc)
            return None

    def _measure_3d(self, depth_m: np.ndarray | None, camera_info: Any, segments: list[Segment]
                    ) -> list[Segment3D] | None:
        if depth_m is None:
            return None
        try:
            return self.pipeline.measure_3d(segments, depth_m, camera_info)
        except ValueError as exc:  # depth not registered to the image...
            self.telemetry.report("3d", exc)
            return None


def _drop_dangling_links(segments: list[Segment]) -> None:
    """Part-of links may only name segments that are still in the list."""
    ids = {s.id for s in segments}
    for seg in segments:
        if seg.parent_id not in ids:
            seg.parent_id = -1
        seg.child_ids = [c for c in seg.child_ids if c in ids]
