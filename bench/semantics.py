"""Region-labelling cost per mask and per frame, as JSON on stdout.

    python3 bench/semantics.py                       # random-weight CLIPs (+ a real one if on disk)
    python3 bench/semantics.py --device cuda --model openai/clip-vit-base-patch32 --masks 16 64

Measures, per model: the cold text encoding of the default vocabulary (objects, parts alone), and for frames of
N masks (nested objects and parts, 480x640): build_hierarchy, then RegionLabeller.label with a warm text cache
(the steady state of a robot whose vocabulary does not change), median (and min) over repeats. The 1-minute load average
is recorded: CPU timings taken while other processes run are not comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semsam_ros.types import make_segment  # noqa: E402
from semsam_ros.semantics import DEFAULT_MODEL, RegionLabeller, build_hierarchy  # noqa: E402


def synthetic_frame(n_masks: int, seed: int = 0, shape: tuple[int, int] = (480, 640)):
    """A noise image and ``n_masks`` masks: objects (level 3) each holding two parts (levels 4 and 5)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    segments = []
    while len(segments) < n_masks:
        bw, bh = rng.integers(60, 200), rng.integers(60, 200)
        x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        boxes = [(3, x0, y0, x0 + bw, y0 + bh), (4, x0, y0, x0 + bw // 2, y0 + bh // 2),
                 (5, x0 + bw // 2, y0 + bh // 2, x0 + bw, y0 + bh)]
        for level, a, b, c, d in boxes[: n_masks - len(segments)]:
            m = np.zeros(shape, bool)
            m[b:d, a:c] = True
            segments.append(make_segment(m, level, 0.9))
    return image, segments


def _times_ms(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_model(name: str, source: str, device: str, masks: list[int], repeats: int, batch_size: int) -> dict:
    """Timings for one CLIP model."""
    start = time.perf_counter()
    labeller = RegionLabeller(source, device=device, batch_size=batch_size)
    load_s = time.perf_counter() - start
    vocab = labeller.vocabulary
    start = time.perf_counter()
    labeller.object_text_embeddings()
    labeller.part_text_embeddings(None)
    text_cold_ms = (time.perf_counter() - start) * 1e3
    frames = []
    for n in masks:
        image, segments = synthetic_frame(n)
        hierarchy_ms = statistics.median(_times_ms(lambda: build_hierarchy(segments), repeats))
        ordered = build_hierarchy(segments)
        labeller.label(image, ordered)  # warm-up; encodes the part-in-object prompts of the parents seen
        times = _times_ms(lambda: labeller.label(image, ordered), repeats)
        frames.append({
            "masks": n,
            "hierarchy_ms": round(hierarchy_ms, 3),
            "label_frame_ms": round(statistics.median(times), 2),
            "label_frame_min_ms": round(min(times), 2),
            "label_per_mask_ms": round(statistics.median(times) / n, 3),
        })
    return {
        "model": name,
        "dtype": str(labeller.dtype).replace("torch.", ""),
        "image_size": labeller.image_size,
        "load_s": round(load_s, 2),
        "vocabulary": {"objects": len(vocab.objects), "parts": len(vocab.parts),
                       "prompts": len(vocab.objects) * len(vocab.object_templates)
                       + len(vocab.parts) * len(vocab.part_templates)},
        "text_cold_ms": round(text_cold_ms, 1),
        "frames": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="real CLIP model (folder or cached id); 'none' skips")
    parser.add_argument("--masks", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--random", nargs="*", default=["tiny", "base"], choices=["tiny", "base"],
                        help="random-weight models to time (no download)")
    args = parser.parse_args()

    from huggingface_hub import try_to_load_from_cache
    from transformers.utils import logging

    from semsam_ros.semantics.testing import make_tiny_clip

    logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, name in [("tiny", "tiny random CLIP (2 layers, width 32, 32 px): the crop/plumbing floor"),
                           ("base", "random-weight ViT-B/32 CLIP (clip-vit-base-patch32 architecture; "
                                    "char tokenizer, so text timings are pessimistic)")]:
            if size in args.random:
                folder = make_tiny_clip(Path(tmp) / size, size=size)
                results.append(bench_model(name, str(folder), args.device, args.masks, args.repeats,
                                           args.batch_size))
    skipped = None
    if args.model != "none":
        if Path(args.model).is_dir() or isinstance(try_to_load_from_cache(args.model, "config.json"), str):
            results.append(bench_model(args.model, args.model, args.device, args.masks, args.repeats,
                                       args.batch_size))
        else:
            skipped = f"{args.model} is not on this machine (hf download {args.model})"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(json.dumps({
        "bench": "semantics",
        "device": args.device,
        "device_name": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "results": results,
        "real_model_skipped": skipped,
    }, indent=2))


if __name__ == "__main__":
    main()
