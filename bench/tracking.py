"""Tracking cost per frame: the tracker's own work outside the model (image motion, prompts, association, interior
points) for 1, 8 and 32 tracks on 640x480 frames, and the prompt decoder for 32 tracks against 1 (one call).

    python3 bench/tracking.py [--model tiny|swint] [--device cpu|cuda] [--iters N] [--threads N] [--out FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import command_line, latency, machine, make_model, time_ms, write_json  # noqa: E402

from semsam_ros.inference.predictor import Predictor  # noqa: E402
from semsam_ros.tracking import Tracker  # noqa: E402
from semsam_ros.types import make_segment  # noqa: E402

H, W, RADIUS = 480, 640, 14


def scene(count: int, frame: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured frame panning 2 px per frame with ``count`` discs on a grid swinging 1 px per frame, and each
    disc's mask."""
    rng = np.random.default_rng(0)
    background = np.kron(rng.integers(30, 220, (H // 8 + 2, W // 8 + 2, 3)), np.ones((8, 8, 1)))
    rgb = np.ascontiguousarray(background[:H, 2 * frame % 8:][:, :W]).astype(np.uint8)
    ys, xs = np.mgrid[:H, :W]
    masks = []
    for i in range(count):
        cx, cy = 40 + (i % 8) * 75 + abs(frame % 40 - 20), 40 + (i // 8) * 110
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= RADIUS ** 2
        rgb[mask] = (230, 40, 40)
        masks.append(mask)
    return rgb, masks


def tracker_ms(count: int, iters: int) -> dict[str, float]:
    """Tracker.prompts + Tracker.update per frame, each track given its true mask at level 3 (the model's part)."""
    frames = [scene(count, f) for f in range(iters + 2)]
    tracker = Tracker(max_tracks=32)
    for mask in frames[0][1]:
        ys, xs = np.nonzero(mask)
        tracker.add(point=(xs.mean(), ys.mean()), levels=(3,))
    decoded = [{i: [make_segment(m, 3, 0.9)] for i, m in enumerate(masks)} for _, masks in frames]
    state = {"frame": 0}

    def one() -> None:
        f = state["frame"]
        tracker.prompts(frames[f][0])
        tracker.update(decoded[f], f / 30.0)
        state["frame"] = f + 1

    times = time_ms(one, torch.device("cpu"), iters, warmup=2)
    assert len(tracker.tracks) == count and tracker.counts()["tracking"] == count, tracker.counts()
    return latency(times)


def decoder_ms(predictor: Predictor, count: int, iters: int, device: torch.device) -> dict[str, float]:
    """One predictor.predict call (decoder + upsampling of one level) for ``count`` point prompts."""
    points = np.stack([np.linspace(20, W - 20, count), np.full(count, H / 2)], axis=1)
    return latency(time_ms(lambda: predictor.predict(points=points, levels=(3,)), device, iters, warmup=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=("tiny", "swint"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"command": command_line(), "machine": machine(device), "frame": f"{W}x{H}",
              "tracker_ms": {str(n): tracker_ms(n, args.iters) for n in (1, 8, 32)}}
    predictor = Predictor(make_model(args.model), device=args.device, short_side=H)
    predictor.set_image(scene(0, 0)[0])
    decoder = {str(n): decoder_ms(predictor, n, args.iters, device) for n in (1, 32)}
    result["decoder_ms"] = {"model": args.model, **decoder,
                            "ratio_32_to_1": decoder["32"]["median_ms"] / decoder["1"]["median_ms"]}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
