"""What ``process_bag`` is asked to do (BagOptions, BagTime) and what it did (BagSummary)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semsam_ros.ros.convert import PromptRequest
from semsam_ros.ros.params import NodeParams

ABSOLUTE_NS = 10**15  # a plain integer time at least this large is nanoseconds since the epoch, not seconds


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
    track: bool = False  # the prompts of the first processed frame start tracks, followed through the bag
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
    on_frame: Callable[[], None] | None = None  # called after each chosen frame (e.g. a fleet's progress)


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

