"""One-shot GPU check: every backend that runs here, SwinT (random weights), one JSON and one Markdown table.

    PYTHONPATH=. python3 bench/gpu_check.py [--model swint|tiny] [--input-size 640x853] [--device cuda]
        [--iters N] [--frames N] [--no-compile] [--out FILE.json] [--markdown FILE.md]

Rows (bench/engine.py's measurements: encoder, decoder at 1/10/32/60 prompts, peak memory, accuracy against fp32
eager): eager fp32/fp16/bf16 with and without CUDA graphs, ``torch.compile`` fp16, TensorRT by both routes and
onnxruntime-gpu where installed (else listed with the reason). Then the node core's latency per frame: the
Scheduler with the real Predictor and ModelPipeline, frames offered at 30 Hz (the core keeps the latest), 10 sticky
clicks; p50/p99 from a frame's arrival to its Output. Needs no rosbags: messages are SimpleNamespaces.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchlib import MODELS, command_line, latency, machine, make_model, parse_size, write_json
from engine import bench_backend, markdown, measure
from semsam_ros.cli.args import padded_size
from semsam_ros.inference.backends import EagerBackend, decode_in_buckets
from semsam_ros.inference.backends.accuracy import guard_images
from semsam_ros.inference.predictor import Predictor
from semsam_ros.model.semantic_sam import SemanticSam
from semsam_ros.ros.convert import PromptRequest, make_header
from semsam_ros.ros.images import rgb_to_image
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.ros.params import NodeParams
from semsam_ros.ros.pipeline import ModelPipeline
from semsam_ros.ros.scheduler import Scheduler

PROMPTS = [1, 10, 32, 60]
BUCKETS = (1, 16, 64)
HZ = 30.0


class OrtBackend:
    """onnxruntime (CUDA provider) over the exported files of one shape: the measured object of one row."""

    def __init__(self, model: SemanticSam, shape: tuple[int, int], precision: str, device: torch.device, folder: Path):
        from semsam_ros.inference.onnx_export import export_onnx
        from semsam_ros.inference.onnx_runtime import OrtPart

        manifest = export_onnx(model, shape, folder, (precision,), BUCKETS, device)
        self.parts = {f["bucket"]: OrtPart(folder / f["file"], device) for f in manifest["files"]}
        self.precision = precision

    def describe(self) -> dict[str, Any]:
        return {"backend": "onnxruntime", "provider": self.parts[None].provider, "buckets": list(BUCKETS)}

    def prepare(self, shape: tuple[int, int]) -> None:
        """Everything was built in the constructor."""

    def image_encoder(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.parts[None](image)

    def prompt_decoder(self, boxes, pb, mask_features, values) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_in_buckets(lambda n, b, p: self.parts[n](b, p, mask_features, values), BUCKETS, boxes, pb)


def ort_rows(model, device, shape, iters, warmup, reference) -> list[dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return [{"backend": "onnxruntime", "precision": "all", "skipped": f"onnxruntime not installed ({exc})"}]
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return [{"backend": "onnxruntime", "precision": "all", "skipped": "onnxruntime without CUDA (CPU build)"}]
    rows = []
    for precision in ("fp32", "fp16") if device.type == "cuda" else ("fp32",):
        row: dict[str, Any] = {"backend": "onnxruntime", "precision": precision}
        with tempfile.TemporaryDirectory(prefix="semsam-onnx-") as tmp:
            try:
                start = time.perf_counter()
                backend = OrtBackend(model, shape, precision, device, Path(tmp))
                row["export_s"] = round(time.perf_counter() - start, 1)
            except Exception as exc:  # onnxscript absent, an exporter failure: report it, go on
                row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                continue
            rows.append(measure(row, backend, model, device, shape, PROMPTS, iters, warmup, reference))
    return rows


def node_latency(model: SemanticSam, device: torch.device, precision: str, frames: int, size: tuple[int, int]):
    """Latency from arrival to Output of frames offered at 30 Hz to the Scheduler (real Predictor and pipeline)."""
    types = MessageTypes(lambda name: SimpleNamespace, "rosbags")
    params = NodeParams(input_size=min(size))
    predictor = Predictor(model, device=device, short_side=min(size), backend="eager", precision=precision)
    core = Scheduler(params, predictor, types, ModelPipeline(params, str(device)), log=lambda _: None)
    rgb = guard_images(size)[0]
    messages = [rgb_to_image(types, rgb, make_header(types, i + 1, "cam")) for i in range(2)]
    clicks = np.stack([np.linspace(0.1, 0.9, 10) * size[1], np.full(10, 0.5 * size[0])], axis=1)
    core.submit_prompt(PromptRequest(prompt_id=1, points=clicks, levels=(1, 3, 6), sticky=True))
    core.submit_frame(messages[0])
    core.step()  # first-call costs
    waits, dropped, start, offered, segments = [], 0, time.perf_counter(), 0, 0
    while len(waits) < frames:
        now = time.perf_counter() - start
        latest = int(now * HZ)  # the newest frame that has arrived
        if latest < offered:
            time.sleep((offered / HZ) - now)
            continue
        dropped += latest - offered
        core.submit_frame(messages[latest % 2])
        outputs = core.step()
        assert outputs, "the node core produced no output"
        segments = len(outputs[0].segments)  # random weights: the score thresholds may keep none
        waits.append((time.perf_counter() - start - latest / HZ) * 1e3)
        offered = latest + 1
    stats = latency(waits)
    p50 = float(np.percentile(waits, 50))
    return {"precision": precision, "frames": frames, "dropped": dropped, "segments": segments,
            "p50_ms": round(p50, 2), **stats}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="swint")
    parser.add_argument("--input-size", type=parse_size, default=(640, 853), metavar="HxW")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--frames", type=int, default=150, help="frames of the node-core measurement")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (its build is minutes)")
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    parser.add_argument("--markdown", default="bench/results/gpu_check.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shape = padded_size(args.input_size, 32)
    model = make_model(args.model).to(device).eval()
    reference = EagerBackend(model, device, "fp32", cuda_graphs=False)
    combos = [("eager", p, {"cuda_graphs": g}) for p in ("fp32", "fp16", "bf16") for g in ((False, True) if cuda else (False,))]
    combos += [] if args.no_compile else [("compile", "fp16", {})]
    combos += [("tensorrt", "fp16", {"engine_route": route}) for route in ("torch", "onnx")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="semsam-engines-") as cache:
        for name, precision, extra in combos:
            options = {name: {"buckets": BUCKETS, **extra, **({"cache_dir": cache} if name == "tensorrt" else {})}}
            row = bench_backend(model, name, precision, device, shape, PROMPTS, args.iters, args.warmup, options, reference)
            rows.append({**row, "backend": "/".join([name, *(f"{k}={v}" for k, v in extra.items())])})
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # what is done survives the time limit
            Path(args.out).write_text(json.dumps({"partial": True, "rows": rows}, indent=2), encoding="utf-8")
    rows += ort_rows(model, device, shape, args.iters, args.warmup, reference)
    node = node_latency(model, device, "fp16" if cuda else "fp32", args.frames, args.input_size)
    result = {
        "benchmark": "gpu_check",
        "command": command_line(),
        "machine": machine(device),
        "model": f"{args.model} (random weights)",
        "input_size": list(args.input_size),
        "prompts": PROMPTS,
        "note": None if cuda else "dry run without a GPU",
        "rows": rows,
        "node_core": node,
    }
    write_json(result, args.out)
    table = markdown(result) + (
        f"\nNode core (Scheduler + Predictor eager {node['precision']} + ModelPipeline, 10 sticky clicks x 3 levels, "
        f"frames at {HZ:.0f} Hz): p50 {node['p50_ms']} ms, p99 {node['p99_ms']} ms per frame, "
        f"{node['dropped']} of {node['frames'] + node['dropped']} frames dropped\n"
    )
    print(table)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
