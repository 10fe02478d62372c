"""What a fleet worker does, without Ray: process one work unit into a part bag, then finish a bag (merge its
parts, write its Parquet file, move both into place). Where everything lies under the output folder: ``Layout``."""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from semsam_ros.bag.options import BagOptions
from semsam_ros.bag.process import process_bag
from semsam_ros.fleet.dataset import write_segments
from semsam_ros.fleet.merge import merge_bags
from semsam_ros.fleet.plan import Unit


@dataclass(frozen=True)
class Layout:
    """DIR/fleet.json, DIR/bags/<name>/ (the output bags), DIR/segments/<name>.parquet, DIR/.work/ (in progress)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "fleet.json"

    def bag(self, name: str) -> Path:
        return self.root / "bags" / name

    def dataset(self, name: str) -> Path:
        return self.root / "segments" / f"{name}.parquet"

    def work(self, name: str) -> Path:
        return self.root / ".work" / name

    def part(self, name: str, index: int, units: int) -> Path:
        """A unit's bag; a whole-bag unit's is named as the output (rosbag2 names its files after the folder)."""
        return self.work(name) / name if units == 1 else self.work(name) / "parts" / f"part-{index:05d}"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def process_unit(src: Path, dst: Path, predictor: Any, options: BagOptions, unit: Unit,
                 on_frame: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Process ``unit`` of bag ``src`` into the bag ``dst`` (replacing what an interrupted run left there)."""
    _remove(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    options = replace(unit.options(options), progress=False, on_frame=on_frame)
    summary = process_bag(src, dst, predictor, options, log=log or (lambda message: None))
    return {"frames": summary.frames, "segmented": summary.segmented, "skipped": summary.skipped,
            "copied": summary.copied, "errors": summary.errors, "seconds": round(summary.seconds, 3)}


def finish_bag(layout: Layout, name: str, units: int, options: BagOptions, model_id: str) -> dict:
    """Merge the parts of bag ``name`` (when sliced), write its Parquet file and move bag and file into place."""
    began = time.perf_counter()
    work, final, dataset = layout.work(name), layout.bag(name), layout.dataset(name)
    bag = layout.part(name, 0, 1)
    if units > 1:
        _remove(bag)
        merge_bags([layout.part(name, i, units) for i in range(units)], bag, model_id)
    table = work / "segments.parquet"
    rows = write_segments(name, bag, options, table)
    for path in (final, dataset):
        _remove(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(bag, final)
    os.replace(table, dataset)
    shutil.rmtree(work)
    return {"rows": rows, "seconds": round(time.perf_counter() - began, 3)}
