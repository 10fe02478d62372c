"""Per-frame cost of the ROS pipeline outside the model, at 640x480, for 1, 10 and 60 segments. Prints JSON.

Stages: image message -> RGB (rgb8, bgr8, jpeg), SegmentArray assembly (masks cropped to mono8), CDR
serialisation (rosbags), and the node core's whole step with a model that answers instantly (decode +
bookkeeping + assembly). With ``--model-ms`` (the model's own time per frame, e.g. from bench/model.py) the
overhead is also given as a share of it (target: <= 5%).

    python3 bench/pipeline_overhead.py [--repeats 30] [--model-ms 40]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Callable

import numpy as np

from semsam_ros.types import make_segment
from semsam_ros.ros.convert import PromptRequest, make_header, segments_to_msg
from semsam_ros.ros.params import NodeParams
from semsam_ros.ros.pipeline import ModelPipeline
from semsam_ros.ros.scheduler import Scheduler
from semsam_ros.ros.images import image_to_rgb, rgb_to_compressed, rgb_to_image
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.typestore import make_typestore

H, W = 480, 640
SEGMENT_COUNTS = (1, 10, 60)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median and 90th percentile wall time of ``fn`` in ms (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))]}


def make_segments(count: int, rng: np.random.Generator) -> list:
    """``count`` elliptic masks of 10-120 px radii at random places, levels cycling 1..6."""
    ys, xs = np.mgrid[:H, :W]
    segments = []
    for i in range(count):
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        rx, ry = rng.uniform(10, 120, size=2)
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        segments.append(make_segment(mask, i % 6 + 1, 0.9, id=i, prompt_id=0, label="mug",
                                     top_labels=[("mug", 0.7), ("cup", 0.2)]))
    return segments


class InstantModel:
    """A predictor with no cost: the core's own overhead is what is measured."""

    def encode_batch(self, images: list[np.ndarray]) -> list[SimpleNamespace]:
        return [SimpleNamespace(shape=image.shape[:2]) for image in images]

    def set_embedding(self, embedding: SimpleNamespace) -> None:
        self.embedding = embedding

    def predict(self, points: np.ndarray, boxes: np.ndarray) -> SimpleNamespace:
        n = len(points) + len(boxes)
        return SimpleNamespace(mask_logits=np.zeros((n, 6, 1, 1), np.float32), iou_scores=np.zeros((n, 6), np.float32))


def core_step(types: MessageTypes, rgb: np.ndarray, segments: list, repeats: int) -> dict[str, float]:
    """Scheduler.submit_frame + submit_prompt + step on a new rgb8 frame, the real pipeline but for its
    post-processing, which returns (copies of) ``segments``."""
    class Instant(ModelPipeline):
        def postprocess(self, *args: object) -> list:
            return [replace(s) for s in segments]

    params = NodeParams()
    core = Scheduler(params, InstantModel(), types, Instant(params, "cpu"), log=lambda _: None)
    frames = iter([rgb_to_image(types, rgb, make_header(types, i + 1, "cam")) for i in range(repeats + 1)])

    def run() -> None:
        core.submit_frame(next(frames))
        core.submit_prompt(PromptRequest(prompt_id=0, points=np.array([[320.0, 240.0]]), levels=(1,)))
        (out,) = core.step()
        assert len(out.segments) == len(segments)

    return timed(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--model-ms", type=float, default=None, help="the model's own time per frame, ms")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    store = make_typestore("humble")
    types = MessageTypes.from_typestore(store)
    header = make_header(types, 1, "cam")
    rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    rgb_msg = rgb_to_image(types, rgb, header)
    bgr_msg = rgb_to_image(types, rgb[..., ::-1].copy(), header)
    bgr_msg.encoding = "bgr8"
    smooth = np.clip(np.add.outer(np.arange(H), np.arange(W)) // 5, 0, 255).astype(np.uint8)
    jpeg_msg = rgb_to_compressed(types, np.dstack([smooth] * 3), header)

    results: dict[str, object] = {
        "image": f"{W}x{H}",
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "numpy": np.__version__},
        "decode": {
            "rgb8": timed(lambda: image_to_rgb(rgb_msg), args.repeats),
            "bgr8": timed(lambda: image_to_rgb(bgr_msg), args.repeats),
            "jpeg": timed(lambda: image_to_rgb(jpeg_msg), args.repeats),
        },
        "segments": {},
    }
    for count in SEGMENT_COUNTS:
        segments = make_segments(count, rng)
        msg = segments_to_msg(types, segments, header, (H, W), "bench-000000000000")
        raw = store.serialize_cdr(msg, "semsam_ros/msg/SegmentArray")
        case = {
            "assemble": timed(lambda: segments_to_msg(types, segments, header, (H, W), "bench-000000000000"),
                              args.repeats),
            "serialize": timed(lambda: store.serialize_cdr(msg, "semsam_ros/msg/SegmentArray"), args.repeats),
            "core_step": core_step(types, rgb, segments, args.repeats),
            "message_bytes": len(raw),
        }
        case["total_ms"] = (results["decode"]["rgb8"]["median_ms"] + case["assemble"]["median_ms"]
                            + case["serialize"]["median_ms"])
        if args.model_ms:
            case["share_of_model"] = case["total_ms"] / args.model_ms
        results["segments"][str(count)] = case
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
