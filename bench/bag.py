"""`semsam bag` throughput and where its time goes (model vs. everything around it), as JSON on stdout.

    python3 bench/bag.py                                   # tiny random model, 50 frames 480x640 rgb8, 4 clicks each
    python3 bench/bag.py --storage mcap --compressed --frames 50 --device cuda
    python3 bench/bag.py --checkpoint swint_only_sam_many2many.pth --device cuda

A synthetic bag (default 50 frames, plus a 100 Hz side topic that is only copied) is written first, then processed
by ``process_bag`` with YAML-style prompts. The model's calls (encoder, decoder with upsampling) and the steps
around it are timed by wrapping the functions the bag tool calls; steps timed "(background)" ran in the rendering
thread, overlapping the main thread; ``other`` is the rest of the main thread: reading, copying, queueing.
``outside_model_share`` is the share of the wall time not spent in the model; ``bag_overhead_share`` leaves out
the mask post-processing too (the Python API does the same post-processing), i.e. it is the share of image
decoding, message conversion, overlay rendering, (de)serialisation, reading and writing.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

import semsam_ros
import semsam_ros.bag as bag
import semsam_ros.viz.render as render
import semsam_ros.ros.frame_processor as frame_processor
import semsam_ros.ros.outputs as outputs
import semsam_ros.ros.pipeline as pipeline
from semsam_ros.ros.convert import PromptRequest, make_header
from semsam_ros.ros.images import rgb_to_compressed, rgb_to_image
from semsam_ros.ros.typestore import make_typestore, message_types
from semsam_ros.testing import make_tiny_checkpoint

TOPIC = "/camera/image_raw"


def synthetic_frame(k: int, height: int, width: int) -> np.ndarray:
    """Gradients with a few flat rectangles that drift with ``k``."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    for _ in range(8):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x0 = (x0 + 3 * k) % (width - 40)
        image[y0:y0 + rng.integers(20, height // 2), x0:x0 + rng.integers(20, width // 2)] = rng.integers(0, 255, 3)
    return image.astype(np.uint8)


def write_input(path: Path, storage: str, frames: int, height: int, width: int, compressed: bool) -> str:
    """A bag of ``frames`` frames at 10 Hz and a 100 Hz std_msgs/Header side topic; returns the image topic."""
    store, types = make_typestore(), message_types()
    topic = f"{TOPIC}/compressed" if compressed else TOPIC
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        image_conn = writer.add_connection(topic, msgtype, typestore=store)
        side_conn = writer.add_connection("/tick", "std_msgs/msg/Header", typestore=store)
        for k in range(frames):
            time_ns = 1_700_000_000 * 10**9 + k * 10**8
            header = make_header(types, time_ns, "camera_optical")
            rgb = synthetic_frame(k, height, width)
            msg = rgb_to_compressed(types, rgb, header) if compressed else rgb_to_image(types, rgb, header)
            writer.write(image_conn, time_ns, store.serialize_cdr(msg, msgtype))
            for j in range(10):
                tick = make_header(types, time_ns + j * 10**7, "base_link")
                writer.write(side_conn, time_ns + j * 10**7, store.serialize_cdr(tick, "std_msgs/msg/Header"))
    return topic


class Timers:
    """Seconds spent in wrapped callables, by name; calls made off the main thread are counted under
    ``"<name> (background)"`` (they overlap the main thread's work)."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = {}
        self.device = device

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                if self.device.type == "cuda" and name == "model":
                    torch.cuda.synchronize(self.device)
                return result
            finally:
                key = name if threading.current_thread() is threading.main_thread() else f"{name} (background)"
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="weights to time (default: a tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--points", type=int, default=4, help="click prompts per frame (all six levels each)")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--compressed", action="store_true", help="jpeg CompressedImage frames instead of rgb8")
    parser.add_argument("--no-overlay", action="store_true")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or make_tiny_checkpoint(Path(tmp) / "tiny.pth")
        model = semsam_ros.load_model(checkpoint)
        predictor = semsam_ros.Predictor(model, device=args.device, short_side=args.input_size)
        predictor.set_image(synthetic_frame(0, height, width))  # warm-up outside the timed run
        predictor.predict(points=[[width / 2, height / 2]])
        src = Path(tmp) / "in"
        topic = write_input(src, args.storage, args.frames, height, width, args.compressed)

        timers = Timers(predictor.device)
        predictor.encode = timers.wrap("model", predictor.encode)
        predictor.predict = timers.wrap("model", predictor.predict)
        pipeline.ModelPipeline.postprocess = timers.wrap("postprocess", pipeline.ModelPipeline.postprocess)
        frame_processor.image_to_rgb = timers.wrap("image_decode", frame_processor.image_to_rgb)
        frame_processor.segments_to_msg = timers.wrap("message_build", frame_processor.segments_to_msg)
        render.render_overlay = timers.wrap("overlay", render.render_overlay)
        outputs.rgb_to_image = timers.wrap("overlay", outputs.rgb_to_image)
        Typestore.serialize_cdr = timers.wrap("serialize", Typestore.serialize_cdr)
        Typestore.deserialize_cdr = timers.wrap("deserialize", Typestore.deserialize_cdr)
        Writer.write = timers.wrap("write", Writer.write)

        rng = np.random.default_rng(1)
        clicks = rng.uniform((0, 0), (width, height), size=(args.points, 2))
        prompts = {topic: [PromptRequest(i, clicks[i: i + 1]) for i in range(args.points)]}
        options = bag.BagOptions([topic], prompts=prompts, overlay=not args.no_overlay)
        start = time.perf_counter()
        summary = bag.process_bag(src, Path(tmp) / "out", predictor, options, log=lambda line: None)
        total = time.perf_counter() - start
        segments_topic = f"{TOPIC}/segments"
        out_bytes = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir())
    seconds = dict(timers.seconds)
    seconds["other"] = total - sum(v for k, v in seconds.items() if not k.endswith("(background)"))
    seconds["total"] = total
    outside = 1 - seconds["model"] / total
    report = {
        "model": model.model_id, "device": args.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or None,
        "frames": args.frames, "image_size": [height, width], "input_size": args.input_size,
        "encoding": "jpeg CompressedImage" if args.compressed else "rgb8 Image", "storage": args.storage,
        "prompts_per_frame": args.points, "overlay": not args.no_overlay, "segmented": summary.segmented,
        "segments_topic": segments_topic, "output_mb": round(out_bytes / 2**20, 2),
        "frames_per_s": round(summary.segmented / total, 3),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "ms_per_frame": {k: round(1000 * v / max(1, summary.segmented), 2) for k, v in seconds.items()},
        "outside_model_share": round(outside, 4),
        "bag_overhead_share": round(outside - seconds.get("postprocess", 0.0) / total, 4),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
