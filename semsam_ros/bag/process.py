"""``process_bag``: a recorded bag through the node's own pipeline into a new bag (see docs/bag.md)."""
from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semsam_ros.bag.options import BagOptions, BagSummary
from semsam_ros.bag.reader import STORAGES, BagError, open_bag, storage_of
from semsam_ros.bag.run import BagRun
from semsam_ros.ros.frame_processor import FrameProcessor, make_tracker
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.telemetry import Telemetry

BAG_VERSION = 8  # rosbag2 metadata version written (Iron and later read it)


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

    from semsam_ros.ros.pipeline import ModelPipeline
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
    if options.track and len(options.image_topics) != 1:
        raise BagError("--track follows the prompts of one image topic: give a single --image-topic")
    reasons = options.params.validate()
    if reasons:
        raise BagError("; ".join(reasons))
    check_paths(src, dst)
    began = time.perf_counter()
    with open_bag(src) as reader:
        storage = options.storage or storage_of(src)
        distro = options.distro or (reader.ros_distro if reader.ros_distro in STORES else "humble")
        typestore = make_typestore(distro)
        types = MessageTypes.from_typestore(typestore)
        pipeline = ModelPipeline(options.params, str(getattr(predictor, "device", "cpu")), want_points=lambda: True)
        model_id = getattr(getattr(predictor, "model", None), "model_id", "")
        telemetry = Telemetry(log, options.params.error_log_period, time.monotonic)
        tracker = make_tracker(options.params) if options.track else None
        processor = FrameProcessor(options.params, predictor, types, pipeline, telemetry, model_id, tracker)
        summary = BagSummary(dst, storage)
        run = BagRun(reader, src, options, processor, typestore, summary, log)
        writer = Writer(dst, version=BAG_VERSION, storage_plugin=StoragePlugin[storage.upper()])
        writer.open()
        writer.set_custom_data("semsam_ros.model_id", model_id)
        try:
            with _interrupts_at_safe_points() as check_interrupt:
                run.run(writer, check_interrupt)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            writer.close()
            summary.errors = dict(telemetry.errors.counts)
            summary.seconds = time.perf_counter() - began
            if summary.interrupted:
                log(str(summary))
    return summary

