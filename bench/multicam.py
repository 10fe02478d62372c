"""Several cameras, one model: the image encoder for 1, 2 and 4 cameras, batched (``Predictor.encode_batch``, one
encoder call) against one camera after another (``Predictor.encode`` per image).

    python3 bench/multicam.py [--models tiny,swint] [--image 480x640] [--short-side 640] [--cameras 1,2,4]
        [--device cpu|cuda] [--iters 5] [--threads N] [--out FILE]

Random weights; every camera sends a different image of the same size. The two ways are timed alternately.
Prints JSON: per camera count, the median time of one step (all cameras) and per frame, each way, and the
batched step's time relative to the first camera count.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchlib import MODELS, command_line, latency, machine, make_model, parse_size, time_ms, write_json
from semsam_ros.inference.predictor import Predictor


def camera_images(shape: tuple[int, int], count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


@torch.inference_mode()
def bench(name: str, shape: tuple[int, int], short_side: int, counts: list[int], device: torch.device, iters: int,
          warmup: int) -> dict:
    predictor = Predictor(make_model(name), device=device, short_side=short_side)
    result: dict = {}
    for count in counts:
        images = camera_images(shape, count)
        ways = {"batched": lambda: predictor.encode_batch(images),
                "sequential": lambda: [predictor.encode(image) for image in images]}
        times: dict[str, list[float]] = {way: time_ms(run, device, 0, warmup) for way, run in ways.items()}
        for _ in range(iters):  # alternated, so that a busy machine slows both ways alike
            for way, run in ways.items():
                times[way] += time_ms(run, device, 1, 0)
        batched, sequential = (latency(times[way])["median_ms"] for way in ways)
        result[f"cameras_{count}"] = {
            "batched_step_ms": round(batched, 2),
            "sequential_step_ms": round(sequential, 2),
            "batched_per_frame_ms": round(batched / count, 2),
            "sequential_per_frame_ms": round(sequential / count, 2),
        }
    one = result[f"cameras_{counts[0]}"]["batched_step_ms"]
    for entry in result.values():
        entry["batched_step_vs_first"] = round(entry["batched_step_ms"] / one, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--image", default="480x640", help="camera image size HxW")
    parser.add_argument("--short-side", type=int, default=640)
    parser.add_argument("--cameras", default="1,2,4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape, counts = parse_size(args.image), [int(c) for c in args.cameras.split(",")]
    result = {
        "command": command_line(),
        "machine": machine(device),
        "image": list(shape),
        "short_side": args.short_side,
        "models": {name: bench(name, shape, args.short_side, counts, device, args.iters, args.warmup)
                   for name in args.models.split(",")},
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
