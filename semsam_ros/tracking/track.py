"""One tracked object or part: where it was last seen (a mask crop, not a full-size mask), where it should be
now, and its life (state, age, misses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from semsam_ros.types import LEVELS, TRACK_TRACKING, Segment

PARTIAL_AREA = 0.9  # a mask under this fraction of the track's usual area is partly hidden
STEADY_AREA = 0.05  # the motion is measured only between masks whose areas differ by less than this fraction


class Origin(NamedTuple):
    """What started a track: a pixel point (x, y) or an XYXY box of the first frame, its text (may be '') and the
    id of the prompt it came from (its masks carry it as ``Segment.prompt_id``)."""

    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    text: str = ""
    prompt_id: int = -1

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "point" if self.point is not None else "text"


class TrackPrompt(NamedTuple):
    """What to decode for a track on this frame: a pixel point or an XYXY box, at ``levels``."""

    track_id: int
    point: tuple[float, float] | None
    box: tuple[float, float, float, float] | None
    levels: tuple[int, ...]


@dataclass
class Track:
    """A track; ``mask`` is the crop of the last mask inside ``box`` (XYXY, exclusive max), where it was last
    seen. ``shift`` is how far it is expected to have moved since then (pixels), ``point`` the most interior
    pixel of the last mask and ``anchor`` its 3D point in the fixed frame, when depth and a pose were given."""

    id: int
    origin: Origin
    levels: tuple[int, ...] = LEVELS
    state: int = TRACK_TRACKING
    level: int = 0  # level of the last mask (0: none yet)
    score: float = float("nan")
    mask: np.ndarray | None = None
    area: int = 0  # pixels of ``mask``
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    point: tuple[float, float] | None = None
    centroid: tuple[float, float] = (float("nan"), float("nan"))
    usual_area: float = float("nan")  # running mean area of its whole masks
    anchor: np.ndarray | None = None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # own motion per frame, pixels
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    camera_shift: np.ndarray = field(default_factory=lambda: np.zeros(2))  # image motion since last seen
    age: int = 0  # frames since it started
    misses: int = 0  # consecutive frames without its mask
    unseen: int = 0  # frames since its mask was last seen
    last_seen_s: float = float("nan")
    started_s: float = float("nan")

    def predicted_box(self) -> tuple[float, float, float, float]:
        dx, dy = self.shift
        x0, y0, x1, y1 = self.box
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def predicted_point(self) -> tuple[float, float]:
        return (self.point[0] + self.shift[0], self.point[1] + self.shift[1])

    def overlap(self, seg: Segment) -> float:
        """IoU of ``seg`` with the last mask moved by ``shift`` (rounded to whole pixels), computed on crops."""
        dx, dy = round(float(self.shift[0])), round(float(self.shift[1]))
        x0, y0, x1, y1 = self.box
        px0, py0 = x0 + dx, y0 + dy
        sx0, sy0, sx1, sy1 = seg.bbox
        ix0, iy0 = max(px0, sx0), max(py0, sy0)
        ix1, iy1 = min(x1 + dx, sx1), min(y1 + dy, sy1)
        inter = 0
        if ix1 > ix0 and iy1 > iy0:
            mine = self.mask[iy0 - py0: iy1 - py0, ix0 - px0: ix1 - px0]
            inter = int(np.count_nonzero(mine & seg.mask[iy0:iy1, ix0:ix1]))
        union = self.area + seg.area - inter
        return inter / union if union else 0.0

    def see(self, seg: Segment, point: tuple[float, float], stamp_s: float) -> bool:
        """Take ``seg`` (the track's mask on this frame, ``point`` its most interior pixel) as a sighting; whether it
        was whole. A mask much smaller than the track's usual area is partly hidden: it tells neither the shape
        nor the motion, so the track keeps its last whole mask, moved to where it was expected."""
        whole = self.mask is None or seg.area >= PARTIAL_AREA * self.usual_area
        if whole:
            if self.mask is not None and abs(seg.area / self.area - 1) < STEADY_AREA:
                moved = np.subtract(seg.centroid, self.centroid) - self.camera_shift
                self.velocity = 0.5 * self.velocity + 0.5 * moved / max(self.unseen, 1)
            x0, y0, x1, y1 = seg.bbox
            self.mask, self.box, self.point = seg.mask[y0:y1, x0:x1].copy(), (x0, y0, x1, y1), point
            self.area = seg.area
            self.centroid = seg.centroid
            self.usual_area = seg.area if np.isnan(self.usual_area) else 0.9 * self.usual_area + 0.1 * seg.area
        else:
            dx, dy = (int(round(v)) for v in self.shift)
            x0, y0, x1, y1 = self.box
            self.box, self.point = (x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.predicted_point()
            self.centroid = (self.centroid[0] + self.shift[0], self.centroid[1] + self.shift[1])
        self.level, self.score = seg.level, seg.iou_score
        self.state, self.misses, self.unseen, self.last_seen_s = TRACK_TRACKING, 0, 0, stamp_s
        self.shift, self.camera_shift = np.zeros(2), np.zeros(2)
        return whole
