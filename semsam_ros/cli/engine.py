"""``semsam build-engine``: build and cache the TensorRT engines ahead of time, so a robot never compiles at launch.

Registered in ``semsam_ros.cli.main`` as ``Subcommand(HELP, add_arguments, run)``; torch and the model are
imported in :func:`run` (``semsam --help`` stays fast). Exit status: 0 engines ready (built now or already
cached), 1 nothing can be built here (unreadable checkpoint, no CUDA, no Torch-TensorRT / TensorRT), 3 the accuracy guard
refused the engines (nothing was cached).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from semsam_ros.cli.args import UserError, padded_size, parse_buckets, parse_size
from semsam_ros.types import DEFAULT_BUCKETS, ENGINE_ROUTES, MIN_MEAN_IOU, ON_FAILURE, PRECISIONS


HELP = "build and cache TensorRT engines for a checkpoint, input size, precision and route"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="official .pth or semsam .safetensors")
    parser.add_argument(
        "--config", default=None, help="swint, swinl or an official YAML (default: from the checkpoint)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument(
        "--route",
        choices=ENGINE_ROUTES,
        default="torch",
        help="torch: Torch-TensorRT (default); onnx: ONNX export built by TensorRT's Python API or trtexec",
    )
    parser.add_argument(
        "--input-size",
        type=parse_size,
        required=True,
        metavar="HxW",
        help="model input after the short-side resize, e.g. 640x960 (3:2 camera) or 640x853 (4:3); padded to /32",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="engine cache (default: $SEMSAM_ENGINE_CACHE or ~/.cache/semsam_ros/engines)",
    )
    parser.add_argument(
        "--buckets",
        type=parse_buckets,
        default=DEFAULT_BUCKETS,
        metavar="N,N,...",
        help="decoder prompt counts (default 1,8,64)",
    )
    parser.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    parser.add_argument(
        "--accuracy",
        choices=ON_FAILURE,
        default="refuse",
        help="when masks differ from fp32 eager: refuse (default) or warn",
    )
    parser.add_argument(
        "--min-iou",
        type=float,
        default=MIN_MEAN_IOU,
        help=f"mean mask IoU the engines must reach (default {MIN_MEAN_IOU})",
    )


def _summary(backend: Any, shape: tuple[int, int]) -> dict[str, Any]:
    records = [r for r in backend.records if tuple(r["input_shape"]) == shape]
    report = backend.accuracy.get(shape)
    if report is not None:
        accuracy = report.summary()
    else:  # everything came from the cache: the guard's figures were stored when the engines were built
        manifest = backend.cache.manifest(backend.key(shape, None)) or {}
        accuracy = manifest.get("accuracy")
    return {"backend": backend.describe(), "input_shape": list(shape), "engines": records, "accuracy": accuracy}


def _print_table(summary: dict[str, Any]) -> None:
    print(f"{'engine':<22} {'source':<6} {'seconds':>8} {'MB':>8}  path")
    for r in summary["engines"]:
        name = "image encoder" if r["bucket"] is None else f"decoder x{r['bucket']} prompts"
        size = f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "-"
        print(f"{name:<22} {r['source']:<6} {r['seconds']:>8.1f} {size:>8}  {r['path']}")
    if summary["accuracy"]:
        a = summary["accuracy"]
        print(
            f"accuracy vs fp32 eager ({a['prompts']} prompt masks x 6 levels): mean mask IoU {a['mean_mask_iou']:.4f}, "
            f"min {a['min_mask_iou']:.4f}, max IoU-score difference {a['max_iou_score_diff']:.4g}"
        )


def run(args: argparse.Namespace) -> int:
    from semsam_ros.io.checkpoint import CheckpointError, load_model
    from semsam_ros.inference.backends import BackendError, create_backend
    from semsam_ros.inference.backends.accuracy import AccuracyError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = load_model(args.checkpoint, args.config)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    h, w = args.input_size
    shape = padded_size(args.input_size, model.config.size_divisibility)
    start = time.perf_counter()
    try:
        backend = create_backend(
            "tensorrt",
            model,
            args.device,
            args.precision,
            buckets=args.buckets,
            engine_route=args.route,
            cache_dir=args.cache_dir,
            min_mean_iou=args.min_iou,
            on_accuracy_failure=args.accuracy,
        )
        backend.prepare(shape)
    except BackendError as exc:
        raise UserError(str(exc)) from None
    except AccuracyError as exc:
        raise UserError(str(exc), 3) from None
    summary = _summary(backend, shape)
    built = sum(r["source"] == "built" for r in summary["engines"])
    print(
        f"{h}x{w} (padded {shape[0]}x{shape[1]}), {args.precision}: {built} engines built, "
        f"{len(summary['engines']) - built} from the cache, {time.perf_counter() - start:.1f} s"
    )
    _print_table(summary)
    print(json.dumps(summary))
    return 0
