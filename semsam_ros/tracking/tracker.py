"""Tracks that keep one object (or part) across frames by re-prompting: each frame, each track becomes a prompt
where it should now be (``prompts``), all of them are decoded together, and each decoded mask is given to at most
one track (``update``). ROS-free; ``step`` does the three with a ``Predictor`` for the Python API."""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from semsam_ros.tracking.motion import MotionEstimator, anchor_from_depth, interior_point, project_anchor
from semsam_ros.tracking.track import Origin, Track, TrackPrompt
from semsam_ros.types import LEVELS, TRACK_ENDED, TRACK_LOST, TRACK_STATE_NAMES, TRACK_TRACKING, Segment, make_segment

SCORE_WEIGHT = 0.1  # weight of the IoU score (clipped to [0, 1]) against the overlap with the prediction
SAME_LEVEL_BONUS = 0.1  # a track prefers a mask at the level it had: a handle stays a handle
DUPLICATE_IOU = 0.9  # two prompts' masks this similar (same level) are one mask: one track at most takes it


class Tracker:
    """Tracked objects and parts with ids unique for the life of the tracker (never reused).

    A track follows the masks of its ``levels``. It is ``tracking`` while found; after ``lost_after``
    consecutive misses it is ``lost`` and is still looked for, where it is expected to be, until ``forget_s``
    seconds after it was last seen; then it ends and is forgotten. A mask is taken when its overlap (IoU) with
    the track's last mask, moved to where the track should be, reaches ``min_iou``; each mask goes to at most one
    track. Where a track should be: its 3D anchor re-projected into the new camera pose when depth, a camera and
    poses are given; otherwise its last position moved by the image motion and by its own velocity.

    ``add``/``remove`` may be called from other threads than the one running ``prompts``/``update``; a track
    added between the two of a frame starts on the next frame.
    """

    def __init__(self, predictor: Any = None, *, max_tracks: int = 32, lost_after: int = 3, forget_s: float = 5.0,
                 min_iou: float = 0.3) -> None:
        if max_tracks < 1 or lost_after < 1 or forget_s < 0 or not 0 < min_iou <= 1:
            raise ValueError(f"need max_tracks >= 1, lost_after >= 1, forget_s >= 0 and 0 < min_iou <= 1; got "
                             f"{max_tracks}, {lost_after}, {forget_s}, {min_iou}")
        self.predictor = predictor
        self.max_tracks, self.lost_after, self.forget_s, self.min_iou = max_tracks, lost_after, forget_s, min_iou
        self.tracks: dict[int, Track] = {}  # live tracks (tracking or lost), by id
        self.ended = 0  # tracks that ended or were removed so far
        self._next_id = 0
        self._motion = MotionEstimator()
        self._asked: set[int] = set()  # the live tracks when this frame's prompts were made
        self._lock = threading.RLock()

    # --- adding and removing ----------------------------------------------------------------------------------

    def add(self, point: Sequence[float] | None = None, box: Sequence[float] | None = None,
            levels: Iterable[int] = (), text: str = "", prompt_id: int = -1) -> int:
        """Start a track from a pixel point (x, y) or an XYXY box of the next frame decoded; its id. ``levels``
        empty: all six. ValueError when ``max_tracks`` are live or the prompt is not a point or a box."""
        if (point is None) == (box is None):
            raise ValueError("a track starts from one point or one box")
        levels = tuple(sorted(set(levels))) or LEVELS
        if not set(levels) <= set(LEVELS):
            raise ValueError(f"levels must lie in 1..6, got {list(levels)}")
        origin = Origin(None if point is None else (float(point[0]), float(point[1])),
                        None if box is None else tuple(float(v) for v in box), text, prompt_id)
        with self._lock:
            if len(self.tracks) >= self.max_tracks:
                raise ValueError(f"{len(self.tracks)} tracks are live (max_tracks {self.max_tracks})")
            track = Track(self._next_id, origin, levels)
            self._next_id += 1
            self.tracks[track.id] = track
            return track.id

    def remove(self, ids: Iterable[int] | None = None) -> list[int]:
        """End the given tracks (None: all); the ids that were live."""
        with self._lock:
            gone = [i for i in (list(self.tracks) if ids is None else ids) if i in self.tracks]
            for i in gone:
                del self.tracks[i]
            self.ended += len(gone)
            return gone

    def counts(self) -> dict[str, int]:
        """Tracks by state: tracking, lost (live) and ended (so far)."""
        with self._lock:
            states = [t.state for t in self.tracks.values()]
        return {TRACK_STATE_NAMES[TRACK_TRACKING]: states.count(TRACK_TRACKING),
                TRACK_STATE_NAMES[TRACK_LOST]: states.count(TRACK_LOST), TRACK_STATE_NAMES[TRACK_ENDED]: self.ended}

    # --- one frame ----------------------------------------------------------------------------------------------

    def prompts(self, rgb: np.ndarray, *, camera: Any = None, pose: np.ndarray | None = None) -> list[TrackPrompt]:
        """What to decode on the new frame ``rgb`` for each live track (call once per frame, then ``update``).

        ``camera`` (geometry.CameraModel) and ``pose`` (4x4, camera -> fixed frame, e.g. from TF) re-project the
        tracks' 3D anchors; without them the image motion since the previous frame is measured on ``rgb``. A track
        expected outside the image gets no prompt (it misses this frame).
        """
        height, width = rgb.shape[:2]
        motion = np.asarray(self._motion.update(rgb))
        with self._lock:
            self._asked = set(self.tracks)
            return [ask for track in self.tracks.values() if (ask := self._ask(track, motion, camera, pose, width,
                                                                                 height)) is not None]

    def _ask(self, track: Track, motion: np.ndarray, camera: Any, pose: np.ndarray | None, width: int, height: int
             ) -> TrackPrompt | None:
        """The prompt of ``track`` on the new frame (None: expected outside the image), its expected shift set."""
        track.age += 1
        if track.mask is None:  # not found yet: its origin
            return TrackPrompt(track.id, track.origin.point, track.origin.box, track.levels)
        track.unseen += 1
        track.camera_shift = track.camera_shift + motion
        track.shift = track.camera_shift + track.velocity * track.unseen
        seen = None if track.anchor is None or camera is None or pose is None else project_anchor(
            track.anchor, camera, pose)
        if seen is not None:
            track.shift = np.subtract(seen, track.point)
        if track.origin.box is not None:
            x0, y0, x1, y1 = track.predicted_box()
            box = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
            return TrackPrompt(track.id, None, box, track.levels) if box[2] > box[0] and box[3] > box[1] else None
        x, y = track.predicted_point()
        return TrackPrompt(track.id, (x, y), None, track.levels) if 0 <= x < width and 0 <= y < height else None

    def update(self, decoded: Mapping[int, Sequence[Segment]], stamp_s: float, *, depth_m: np.ndarray | None = None,
               camera: Any = None, pose: np.ndarray | None = None) -> list[Segment]:
        """Give each track at most one of the masks decoded for this frame's prompts (``decoded``: track id ->
        its prompt's masks); the masks taken, as copies carrying ``track_id`` and ``track_state``, in track order.

        ``depth_m`` (metres, registered to the image), ``camera`` and ``pose`` set the 3D anchors of the tracks
        found. Tracks not found count a miss; lost ones past ``forget_s`` end.
        """
        with self._lock:
            asked = [t for i, t in self.tracks.items() if i in self._asked]
            candidates = _unique([(tid, seg) for tid, segs in decoded.items() if tid in self._asked
                                  for seg in segs if seg.area > 0])
            taken = self._assign(asked, candidates)
            out = []
            for track in asked:
                if np.isnan(track.started_s):
                    track.started_s = stamp_s
                seg = taken.get(track.id)
                if seg is None:
                    self._miss(track, stamp_s)
                    continue
                x0, y0, x1, y1 = seg.bbox
                px, py = interior_point(seg.mask[y0:y1, x0:x1], (seg.centroid[0] - x0, seg.centroid[1] - y0))
                whole = track.see(seg, (x0 + px, y0 + py), stamp_s)
                if whole and depth_m is not None and camera is not None and pose is not None:
                    track.anchor = anchor_from_depth(track.point, depth_m, camera, np.asarray(pose, dtype=np.float64))
                taken_seg = copy.copy(seg)  # a shallow copy (dataclasses.replace re-runs __init__, twice as slow)
                taken_seg.track_id, taken_seg.track_state = track.id, TRACK_TRACKING
                taken_seg.prompt_id = track.origin.prompt_id
                out.append(taken_seg)
            self._asked = set()
            return out

    def step(self, image: np.ndarray, depth_m: np.ndarray | None = None, camera: Any = None,
             pose: np.ndarray | None = None, stamp_s: float | None = None) -> list[Segment]:
        """``prompts``, one batched decoder call of the predictor, ``update``: the tracked masks of ``image``
        (HxWx3 uint8 RGB). ``stamp_s`` defaults to the monotonic clock."""
        if self.predictor is None:
            raise ValueError("Tracker.step needs a predictor: Tracker(predictor, ...)")
        self.predictor.set_image(image)
        asks = self.prompts(image, camera=camera, pose=pose)
        decoded = decode(self.predictor, asks)
        return self.update(decoded, time.monotonic() if stamp_s is None else stamp_s, depth_m=depth_m,
                           camera=camera, pose=pose)

    # --- internals ------------------------------------------------------------------------------------------

    def _assign(self, tracks: list[Track], candidates: list[tuple[int, Segment]]) -> dict[int, Segment]:
        """Track id -> its mask: ``tracks`` seen before by the best total overlap with their predictions
        (one-to-one), then new ones by the best score among their own prompt's masks left."""
        found = [t for t in tracks if t.mask is not None]
        gain = np.full((len(found), len(candidates)), -np.inf)
        if found and candidates:
            meet = _boxes_meet([t.predicted_box() for t in found], [seg.bbox for _, seg in candidates])
            for r, c in zip(*np.nonzero(meet)):  # only masks that reach where the track should be
                track, seg = found[r], candidates[c][1]
                if seg.level in track.levels:
                    iou = track.overlap(seg)
                    if iou >= self.min_iou:
                        gain[r, c] = iou + SCORE_WEIGHT * min(max(seg.iou_score, 0.0), 1.0) + SAME_LEVEL_BONUS * (
                            seg.level == track.level)
        taken: dict[int, Segment] = {}
        used: set[int] = set()
        if gain.size and np.isfinite(gain).any():
            rows, cols = linear_sum_assignment(np.where(np.isfinite(gain), -gain, 1e9))
            for r, c in zip(rows, cols):
                if np.isfinite(gain[r, c]):
                    taken[found[r].id] = candidates[c][1]
                    used.add(c)
        for track in tracks:
            if track.mask is None:
                own = [c for c, (tid, seg) in enumerate(candidates) if tid == track.id and c not in used
                       and seg.level in track.levels]
                if own:
                    best = max(own, key=lambda c: candidates[c][1].iou_score)
                    taken[track.id] = candidates[best][1]
                    used.add(best)
        return taken

    def _miss(self, track: Track, stamp_s: float) -> None:
        track.misses += 1
        if track.misses >= self.lost_after:
            track.state = TRACK_LOST
        since = track.last_seen_s if track.mask is not None else track.started_s
        if track.state == TRACK_LOST and stamp_s - since > self.forget_s:
            self.remove([track.id])


def _boxes_meet(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """(len(a), len(b)) bool: whether XYXY boxes a[i] and b[j] overlap."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 1, 4), np.asarray(b, dtype=np.float64).reshape(1, -1, 4)
    return ((np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0]))
            & (np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1])))


def _unique(candidates: list[tuple[int, Segment]]) -> list[tuple[int, Segment]]:
    """The candidates without near-duplicates decoded for another track (same level, IoU > DUPLICATE_IOU)."""
    boxes = [seg.bbox for _, seg in candidates]
    meet = _boxes_meet(boxes, boxes)
    kept: list[int] = []
    for c, (tid, seg) in enumerate(candidates):
        if not any(meet[k, c] and candidates[k][0] != tid and candidates[k][1].level == seg.level
                   and _iou(candidates[k][1], seg) > DUPLICATE_IOU for k in kept):
            kept.append(c)
    return [candidates[c] for c in kept]


def _iou(a: Segment, b: Segment) -> float:
    """IoU of two segments' masks whose boxes overlap, counted inside the intersection of their boxes only."""
    x0, y0 = max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1])
    x1, y1 = min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3])
    inter = int(np.count_nonzero(a.mask[y0:y1, x0:x1] & b.mask[y0:y1, x0:x1]))
    return inter / (a.area + b.area - inter)


def decode(predictor: Any, asks: Sequence[TrackPrompt]) -> dict[int, list[Segment]]:
    """Track id -> the non-empty masks (logit > 0) of its prompt at its levels, from one ``predictor.predict``
    call on the image the predictor holds."""
    if not asks:
        return {}
    points = [a for a in asks if a.point is not None]
    boxes = [a for a in asks if a.point is None]
    levels = tuple(sorted({level for a in asks for level in a.levels}))
    pred = predictor.predict(points=np.array([a.point for a in points]).reshape(-1, 2),
                             boxes=np.array([a.box for a in boxes]).reshape(-1, 4), levels=levels)
    out: dict[int, list[Segment]] = {}
    for row, ask in enumerate(points + boxes):
        segs = out.setdefault(ask.track_id, [])
        for level in ask.levels:
            col = levels.index(level)
            mask = pred.mask_logits[row, col] > 0
            if mask.any():
                segs.append(make_segment(mask, level, float(pred.iou_scores[row, col]), point=ask.point))
    return out
