"""ONNX export checked and timed: onnxruntime (CPU) against eager PyTorch, encoder and each decoder bucket.

    python3 bench/onnx_check.py [--model swint|tiny] [--checkpoint CKPT] [--input-size 640x853] [--buckets 1,8,64]
        [--precisions fp32] [--iters N] [--warmup N] [--threads N] [--keep DIR] [--out results.json]

Exports with :func:`semsam_ros.inference.onnx_export.export_onnx` (the code behind ``semsam export-onnx``), then
per file: the largest error of onnxruntime against eager at the same precision (mask logits and features
relative to their largest magnitude, IoU scores absolute), and both latencies (median, p99) on the same threads.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import MODELS, command_line, latency, machine, make_model, parse_size, time_ms, write_json
from semsam_ros.cli.args import padded_size
from semsam_ros.inference.backends.accuracy import guard_images, guard_prompts
from semsam_ros.inference.backends.precision import DTYPES, with_precision
from semsam_ros.inference.onnx_export import export_onnx
from semsam_ros.inference.onnx_runtime import OrtPart

CPU = torch.device("cpu")


def errors(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, float]:
    """Per output: max |got - want| relative to max |want| (IoU scores: absolute)."""
    out = {}
    for name, g, w in zip(names, got, want):
        diff = float((g.float() - w.float()).abs().max())
        out[name] = diff if name == "iou_scores" else diff / max(float(w.float().abs().max()), 1e-12)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="swint", help="random weights of this config")
    parser.add_argument("--checkpoint", default=None, help="real weights instead of random ones")
    parser.add_argument("--input-size", type=parse_size, default=(640, 853), metavar="HxW", help="padded to /32")
    parser.add_argument("--buckets", default="1,8,64", help="decoder prompt counts")
    parser.add_argument("--precisions", default="fp32", help="fp32,fp16,bf16 (onnxruntime CPU: fp32 is the fast one)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads")
    parser.add_argument("--keep", default=None, help="write the ONNX files here (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args.model, args.checkpoint).eval()
    shape = padded_size(args.input_size, model.config.size_divisibility)
    buckets = [int(b) for b in args.buckets.split(",")]
    image = model.preprocess(torch.from_numpy(guard_images(args.input_size)[0]).permute(2, 0, 1))
    prompts = guard_prompts()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="semsam-onnx-") as tmp:
        folder = Path(args.keep or tmp)
        start = time.perf_counter()
        manifest = export_onnx(model, shape, folder, args.precisions.split(","), buckets)
        export_s = round(time.perf_counter() - start, 1)
        features: dict[str, tuple[torch.Tensor, ...]] = {}
        for entry in manifest["files"]:  # each precision's encoder comes before its decoders
            dtype = DTYPES[entry["precision"]]
            part = OrtPart(folder / entry["file"], threads=args.threads or 0)
            eager = with_precision(
                model.image_encoder if entry["bucket"] is None else model.prompt_decoder, "cpu", dtype
            )
            if entry["bucket"] is None:
                inputs: tuple[torch.Tensor, ...] = (image,)
            else:
                n = entry["bucket"]
                boxes = prompts[torch.arange(n) % len(prompts)]
                inputs = (boxes, torch.zeros(n, dtype=torch.long), *features[entry["precision"]])
            with torch.inference_mode():
                want = eager(*inputs)
                got = part(*inputs)
                if entry["bucket"] is None:
                    features[entry["precision"]] = tuple(want)
                row = {
                    "file": entry["file"],
                    "provider": part.provider,
                    "max_error": errors(got, want, [o["name"] for o in entry["outputs"]]),
                    "onnxruntime": latency(time_ms(lambda: part(*inputs), CPU, args.iters, args.warmup)),
                    "eager": latency(time_ms(lambda: eager(*inputs), CPU, args.iters, args.warmup)),
                }
            rows.append(row)
    write_json(
        {
            "benchmark": "onnx",
            "command": command_line(),
            "machine": machine(CPU),
            "model": args.checkpoint or f"{args.model} (random weights)",
            "input_size": list(args.input_size),
            "padded": list(shape),
            "opset": manifest["opset"],
            "export_s": export_s,
            "tolerance": {"relative_logits": 1e-4, "iou_scores": 1e-5},
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
