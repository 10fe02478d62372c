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
from semsam_ros.bag.plan import BagPlan, check_paths, make_pipeline, plan_bag
from semsam_ros.bag.reader import open_bag
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


def process_bag(src: str | Path, dst: str | Path, predictor: Any, options: BagOptions, *,
                log: Callable[[str], None] | None = None, plan: BagPlan | None = None) -> BagSummary:
    """Process bag ``src`` into the new bag ``dst`` with ``predictor`` (a semsam_ros.Predictor); see docs/bag.md.

    ``plan``: ``plan_bag(src, dst, options)``, made before the predictor was loaded (then it is not planned
    again); without it the bag is planned here. Raises BagError (one line) for a missing, unreadable or corrupt
    input, an existing output or bad options. On KeyboardInterrupt the output is closed, valid and readable with
    everything processed so far, the summary is logged, and the interrupt propagates.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from semsam_ros.ros.typestore import make_typestore

    src, dst, log = Path(src), Path(dst), log or _stderr
    if plan is None:
        plan = plan_bag(src, dst, options)
    elif (plan.src, plan.dst) != (src, dst) or plan.options is not options:
        raise ValueError("the plan was made for another src, dst or options")
    else:
        check_paths(src, dst)  # the output may have appeared while the model was loading
    began = time.perf_counter()
    with open_bag(src) as reader:
        storage, typestore = plan.storage, make_typestore(plan.distro)
        types = MessageTypes.from_typestore(typestore)
        pipeline = plan.pipeline
        if pipeline is None:
            pipeline = make_pipeline(options, str(getattr(predictor, "device", "cpu")))
        model_id = getattr(getattr(predictor, "model", None), "model_id", "")
        telemetry = Telemetry(log, options.params.error_log_period, time.monotonic)
        tracker = make_tracker(options.params) if options.track else None
        processor = FrameProcessor(options.params, predictor, types, pipeline, telemetry, model_id, tracker)
        summary = BagSummary(dst, storage)
        run = BagRun(reader, plan, processor, typestore, summary, log)
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

