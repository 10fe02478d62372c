"""Engine benchmark: every backend x precision -> latency, throughput, memory, build time, accuracy vs fp32 eager.

    python3 bench/engine.py [--model swint|tiny] [--checkpoint CKPT] [--input-size 640x960] [--device cuda|cpu]
        [--backends eager,compile,tensorrt] [--precisions fp32,fp16,bf16] [--prompts 1,10,60]
        [--iters N] [--warmup N] [--threads N] [--cache-dir DIR] [--out results.json] [--markdown results.md]

Per combination: image encoder and prompt decoder (each prompt count) median and p99 latency, throughput, peak
memory (GPU: PyTorch allocator peak, plus device memory in use, which includes TensorRT's own; CPU: peak resident
set size), build time (``Backend.prepare``: TensorRT export + compile + accuracy guard or loading cached engines,
torch.compile code generation, CUDA graph capture) and the accuracy guard's figures against fp32 eager. Without a
GPU it runs the CPU backends and says so; a backend that cannot run is listed with the reason. TensorRT builds
into a fresh temporary cache unless --cache-dir is given. Prints JSON, then the Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from typing import Any

import torch

from benchlib import MODELS, command_line, latency, machine, make_model, parse_size, peak_memory, time_ms, write_json
from semsam_ros.inference.backends.accuracy import evaluate, guard_images, guard_prompts
from semsam_ros.inference.backends import BACKENDS, PRECISIONS, BackendError, EagerBackend, create_backend
from semsam_ros.model.semantic_sam import SemanticSam

TARGETS = {"encoder_ms": 4.0, "decoder_10_ms": 1.0, "speedup_vs_eager_fp32": 10.0}  # H100, SwinT 640x960, TRT fp16


def bench_backend(
    model: SemanticSam,
    name: str,
    precision: str,
    device: torch.device,
    shape: tuple[int, int],
    prompts: list[int],
    iters: int,
    warmup: int,
    options: dict[str, Any],
    reference: EagerBackend,
) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": name, "precision": precision}
    try:
        backend = create_backend(name, model, device, precision, **options.get(name, {}))
    except BackendError as exc:
        row["skipped"] = str(exc)
        return row
    return measure(row, backend, model, device, shape, prompts, iters, warmup, reference)


def measure(
    row: dict[str, Any],
    backend: Any,
    model: SemanticSam,
    device: torch.device,
    shape: tuple[int, int],
    prompts: list[int],
    iters: int,
    warmup: int,
    reference: EagerBackend,
) -> dict[str, Any]:
    """Fill ``row`` with the build time, latencies, peak memory and accuracy of ``backend`` (a Backend, or
    anything with its ``prepare``, ``describe``, ``image_encoder`` and ``prompt_decoder``)."""
    row["config"] = backend.describe()
    try:
        start = time.perf_counter()
        backend.prepare(shape)
        row["build_s"] = round(time.perf_counter() - start, 2)
        image = model.preprocess(torch.from_numpy(guard_images(shape)[0]).to(device).permute(2, 0, 1))
        boxes = guard_prompts().to(device)
        with torch.inference_mode(), peak_memory(device) as memory:
            times = time_ms(lambda: backend.image_encoder(image), device, iters, warmup)
            row["image_encoder"] = latency(times)
            row["image_encoder"]["images_per_s"] = round(1e3 / row["image_encoder"]["median_ms"], 2)
            mask_features, values = backend.image_encoder(image)
            for count in prompts:
                b = boxes[torch.arange(count, device=device) % len(boxes)]
                pb = torch.zeros(count, dtype=torch.long, device=device)
                times = time_ms(
                    lambda b=b, pb=pb: backend.prompt_decoder(b, pb, mask_features, values), device, iters, warmup
                )
                stats = latency(times)
                stats["prompts_per_s"] = round(count * 1e3 / stats["median_ms"], 1)
                row[f"prompt_decoder_{count}"] = stats
        row["memory"] = memory
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            row["memory"]["gpu_in_use_mb"] = round((total - free) / 2**20, 1)
        row["accuracy"] = evaluate(reference, backend, model.preprocess, shape, device).summary()
    except Exception as exc:  # report the failure of one combination and go on with the others
        traceback.print_exc(file=sys.stderr)
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def add_speedups(rows: list[dict[str, Any]], prompts: list[int]) -> None:
    base = next(
        (r for r in rows if r["backend"] == "eager" and r["precision"] == "fp32" and "image_encoder" in r), None
    )
    if base is None:
        return
    for row in rows:
        if "image_encoder" not in row:
            continue
        speedup = {"image_encoder": round(base["image_encoder"]["median_ms"] / row["image_encoder"]["median_ms"], 2)}
        for count in prompts:
            key = f"prompt_decoder_{count}"
            speedup[key] = round(base[key]["median_ms"] / row[key]["median_ms"], 2)
        row["speedup_vs_eager_fp32"] = speedup


def markdown(result: dict[str, Any]) -> str:
    prompts = result["prompts"]
    m = result["machine"]
    lines = [
        f"{result['model']} at {result['input_size'][0]}x{result['input_size'][1]}, {m['device']}"
        f" ({m['gpu'] or m['cpu']}, {m['cpu_cores_available']} CPU cores), torch {m['torch']}, {m['date']}",
        "",
    ]
    if result.get("note"):
        lines += [f"**{result['note']}**", ""]
    head = ["backend", "precision", "build s", "encoder ms (p99)", "img/s"]
    head += [f"decoder {n} ms (p99)" for n in prompts]
    head += [f"prompts/s @{prompts[-1]}", "peak MB", "mask IoU mean (min)", "max IoU-score diff", "speedup enc / dec"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["backend"], row["precision"]]
        if "image_encoder" not in row:
            reason = row.get("skipped") or row.get("error", "")
            cells.append(("not run: " if "skipped" in row else "failed: ") + reason.replace("|", "/"))
            cells += [""] * (len(head) - 3)
        else:
            enc, acc = row["image_encoder"], row.get("accuracy") or {}
            mem = row["memory"]
            cells += [
                f"{row['build_s']:.1f}",
                f"{enc['median_ms']:.2f} ({enc['p99_ms']:.2f})",
                f"{enc['images_per_s']:.1f}",
            ]
            for n in prompts:
                d = row[f"prompt_decoder_{n}"]
                cells.append(f"{d['median_ms']:.2f} ({d['p99_ms']:.2f})")
            cells.append(f"{row[f'prompt_decoder_{prompts[-1]}']['prompts_per_s']:.0f}")
            cells.append(f"{mem.get('peak_gpu_mb', mem.get('peak_rss_mb'))}")
            cells.append(f"{acc['mean_mask_iou']:.4f} ({acc['min_mask_iou']:.3f})" if acc else "")
            cells.append(f"{acc['max_iou_score_diff']:.2g}" if acc else "")
            speed = row.get("speedup_vs_eager_fp32", {})
            dec_key = f"prompt_decoder_{10 if 10 in prompts else prompts[0]}"
            cells.append(f"{speed.get('image_encoder', 0):.2f}x / {speed.get(dec_key, 0):.2f}x" if speed else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="swint", help="random weights of this config")
    parser.add_argument("--checkpoint", default=None, help="real weights instead of random ones")
    parser.add_argument("--input-size", type=parse_size, default=(640, 960), metavar="HxW", help="padded model input")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--prompts", default="1,10,60")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default 50 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5 on GPU, 2 on CPU)")
    parser.add_argument("--buckets", default="1,8,64", help="decoder prompt buckets of the static paths")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--cache-dir", default=None, help="TensorRT engine cache (default: a fresh temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--markdown", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    iters = args.iters or (50 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    prompts = [int(p) for p in args.prompts.split(",")]
    shape = args.input_size
    buckets = tuple(int(b) for b in args.buckets.split(","))
    model = make_model(args.model, args.checkpoint).to(device).eval()
    reference = EagerBackend(model, device, "fp32", cuda_graphs=False)
    evaluate(reference, reference, model.preprocess, shape, device)  # the process's first-call costs, off the table
    with tempfile.TemporaryDirectory(prefix="semsam-engines-") as tmp:
        options = {
            "eager": {"buckets": buckets},
            "compile": {"buckets": buckets, "mode": args.compile_mode},
            "tensorrt": {"buckets": buckets, "cache_dir": args.cache_dir or tmp, "on_accuracy_failure": "warn"},
        }
        rows = [
            bench_backend(model, name, precision, device, shape, prompts, iters, warmup, options, reference)
            for name in args.backends.split(",")
            for precision in args.precisions.split(",")
        ]
    add_speedups(rows, prompts)
    result = {
        "benchmark": "engine",
        "command": command_line(),
        "machine": machine(device),
        "model": args.checkpoint or f"{args.model} (random weights)",
        "input_size": list(shape),
        "prompts": prompts,
        "note": None if gpu else "no GPU on this machine: CPU backends only (TensorRT needs CUDA)",
        "targets_h100_swint_640x960_tensorrt_fp16": TARGETS if gpu else None,
        "rows": rows,
    }
    write_json(result, args.out)
    table = markdown(result)
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
