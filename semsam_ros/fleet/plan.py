"""What a fleet run does: the input bags (folders, globs, list files), their output names and their work units."""
from __future__ import annotations

import bisect
import dataclasses
import glob
import math
from dataclasses import dataclass
from pathlib import Path

from semsam_ros.bag.options import BagOptions, BagTime
from semsam_ros.bag.reader import open_bag, read_messages

BAG_SUFFIXES = (".db3", ".mcap")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Bag paths of ``inputs`` in order, each once: a bag folder or .db3/.mcap file as is, a glob's sorted matches,
    or a text file listing bags (one a line, # comments, relative to the file). ValueError for what matches none."""
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() or (path.is_file() and path.suffix in BAG_SUFFIXES):
            found.append(path)
        elif path.is_file():
            lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
            listed = [str(path.parent / line) for line in lines if line]
            found += expand_inputs(listed) if listed else []
        else:
            matches = sorted(glob.glob(text))
            if not matches:
                raise ValueError(f"input {text} is no bag, list file or matching glob")
            found += expand_inputs(matches)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(bags: list[Path]) -> list[str]:
    """One output name per bag: its folder or file name (without .db3/.mcap), made unique with -2, -3..."""
    names: list[str] = []
    for bag in bags:
        base = bag.stem if bag.suffix in BAG_SUFFIXES else bag.name
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


@dataclass(frozen=True)
class Unit:
    """One work unit: the window [start, stop) of a bag (ns since the epoch; None: the bag's own start or end)."""

    index: int
    start: int | None = None
    stop: int | None = None

    def options(self, options: BagOptions) -> BagOptions:
        """``options`` for this unit's window (the whole bag: ``options`` as they are)."""
        if self.start is None and self.stop is None:
            return options
        return dataclasses.replace(
            options, start=BagTime(self.start, True) if self.start is not None else options.start,
            end=BagTime(self.stop, True) if self.stop is not None else options.end)


def sliceable(options: BagOptions) -> str | None:
    """None when the frames of a bag can be processed in independent time slices, else the reason why not: every
    processed frame must depend on that frame alone (no tracks, no recorded prompts, no depth pairing across a
    boundary, no batches of several cameras)."""
    if options.track:
        return "--track follows objects from frame to frame"
    if options.prompt_topics:
        return "recorded prompts stick to later frames"
    if options.depth_topics:
        return "depth is paired with frames across slice boundaries"
    if len(options.image_topics) != 1:
        return "several image topics are encoded together"
    return None


def plan_units(src: Path, options: BagOptions, slice_seconds: float | None) -> tuple[list[Unit], int]:
    """(work units, estimated frames to process) of bag ``src``: one unit, or slices of ``slice_seconds`` of bag
    time when the options allow it. Slices split the window at frame times whose ordinal is a multiple of
    ``options.every`` (so every slice chooses the frames the whole run would). BagError when the bag is unreadable."""
    with open_bag(src) as reader:
        begin = options.start.resolve(reader.start_time) if options.start else reader.start_time
        end = options.end.resolve(reader.start_time) if options.end else reader.end_time + 1
        span = max(1, reader.end_time + 1 - reader.start_time)
        share = min(1.0, max(0.0, (min(end, reader.end_time + 1) - max(begin, reader.start_time)) / span))
        counts = [reader.topics[t].msgcount for t in options.image_topics if t in reader.topics]
        frames = sum(math.ceil(round(n * share) / options.every) for n in counts)
        if not slice_seconds or sliceable(options) is not None or end - begin <= slice_seconds * 1e9:
            return [Unit(0)], frames
        step = round(slice_seconds * 1e9)
        nominal = list(range(begin + step, end, step))
        if options.every > 1:
            nominal = _aligned(reader, src, options, begin, end, nominal)
    bounds = [None, *nominal, None]  # None: the window's own start or end (the options' or the bag's)
    return [Unit(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)], frames


def _aligned(reader: object, src: Path, options: BagOptions, begin: int, end: int, nominal: list[int]) -> list[int]:
    """Boundaries at the first frame time at or after each nominal one whose ordinal in the window is a multiple
    of ``every`` and whose time differs from the previous frame's."""
    connections = [c for c in reader.connections if c.topic == options.image_topics[0]]  # type: ignore[attr-defined]
    times = [t for _, t, _ in read_messages(reader, src, connections, begin, end)]
    good = [t for k, t in enumerate(times) if k % options.every == 0 and (k == 0 or times[k - 1] != t) and k]
    bounds: list[int] = []
    for time_ns in nominal:
        at = bisect.bisect_left(good, max(time_ns, bounds[-1] + 1 if bounds else time_ns))
        if at < len(good):
            bounds.append(good[at])
    return bounds
