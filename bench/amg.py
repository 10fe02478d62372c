"""Automatic mask generation timing: encoder, decoder, upsampling and post-processing, as JSON on stdout.

    python3 bench/amg.py                       # tiny random model on CPU, points_per_side 16 and 32
    python3 bench/amg.py --checkpoint swint_only_sam_many2many.pth --image photo.jpg --device cuda

Random weights give IoU scores near 0, so without a checkpoint the filters default to keeping every candidate
(--pred-iou-thresh -1e9 --stability-score-thresh 0): the upsampling and post-processing then do the most work.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import semsam_ros
from semsam_ros.inference.amg import AutomaticMaskGenerator
from semsam_ros.testing import make_tiny_checkpoint


class TimedPredictor:
    """Wraps a Predictor and adds up the seconds spent in each of the generator's calls to it."""

    def __init__(self, predictor: semsam_ros.Predictor) -> None:
        self.predictor = predictor
        self.seconds = {"encoder": 0.0, "decoder": 0.0, "upsample": 0.0}
        self.upsampled = 0

    def _timed(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize(self.predictor.device)
        self.seconds[key] += time.perf_counter() - start
        return result

    def set_image(self, image: np.ndarray) -> None:
        self._timed("encoder", self.predictor.set_image, image)

    def predict_lowres(self, points: Any = None, boxes: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._timed("decoder", self.predictor.predict_lowres, points, boxes)

    def upsample_logits(self, lowres: torch.Tensor) -> torch.Tensor:
        self.upsampled += len(lowres)
        return self._timed("upsample", self.predictor.upsample_logits, lowres)


def synthetic_image(height: int, width: int) -> np.ndarray:
    """Smooth colour gradients with a few flat rectangles: structure for the masks, deterministic."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    for _ in range(8):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        image[y0:y0 + rng.integers(20, height // 2), x0:x0 + rng.integers(20, width // 2)] = rng.integers(0, 255, 3)
    return image.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="weights to time (default: a tiny random model)")
    parser.add_argument("--image", help="image file (default: a synthetic 480x640 image)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--points-per-side", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float)
    parser.add_argument("--stability-score-thresh", type=float)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    random_weights = args.checkpoint is None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or make_tiny_checkpoint(Path(tmp) / "tiny.pth")
        model = semsam_ros.load_model(checkpoint)
    if args.image:
        from semsam_ros.cli.image import read_image

        image = read_image(args.image)
    else:
        image = synthetic_image(480, 640)
    iou_thresh = args.pred_iou_thresh if args.pred_iou_thresh is not None else (-1e9 if random_weights else 0.88)
    stability = args.stability_score_thresh
    stability = stability if stability is not None else (0.0 if random_weights else 0.92)
    report: dict[str, Any] = {
        "model": model.model_id, "random_weights": random_weights, "device": args.device,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or None,
        "image_size": list(image.shape[:2]), "input_size": args.input_size,
        "points_per_batch": args.points_per_batch, "pred_iou_thresh": iou_thresh,
        "stability_score_thresh": stability, "runs": [],
    }
    for n in args.points_per_side:
        timed = TimedPredictor(semsam_ros.Predictor(model, device=args.device, short_side=args.input_size))
        generator = AutomaticMaskGenerator(timed, points_per_side=n, points_per_batch=args.points_per_batch,
                                           pred_iou_thresh=iou_thresh, stability_score_thresh=stability)
        start = time.perf_counter()
        records = generator.generate(image)
        total = time.perf_counter() - start
        seconds = dict(timed.seconds, postprocess=total - sum(timed.seconds.values()), total=total)
        report["runs"].append({
            "points_per_side": n, "prompts": n * n, "candidates": n * n * 6, "upsampled": timed.upsampled,
            "masks": len(records), "seconds": {k: round(v, 4) for k, v in seconds.items()},
        })
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
