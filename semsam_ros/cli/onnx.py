"""``semsam export-onnx``: the image encoder and the prompt decoder buckets as ONNX files, with a JSON manifest.

Registered in ``semsam_ros.cli.main``; torch, onnx and the model are imported in :func:`run`. Exit status: 0 the
files and ``manifest.json`` are written, 1 the checkpoint cannot be read or onnx / onnxscript are missing.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from semsam_ros.cli.args import UserError, padded_size, parse_buckets, parse_size
from semsam_ros.types import DEFAULT_BUCKETS, ONNX_OPSET, PRECISIONS

HELP = f"export the image encoder and the prompt decoder to ONNX (opset {ONNX_OPSET}) with a manifest"


def parse_precisions(text: str) -> tuple[str, ...]:
    """ "fp32,fp16" -> ("fp32", "fp16")."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not names or not set(names) <= set(PRECISIONS):
        raise argparse.ArgumentTypeError(f"precisions must be among {','.join(PRECISIONS)}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="official .pth or semsam .safetensors")
    parser.add_argument("--config", default=None, help="swint, swinl or an official YAML (default: from the checkpoint)")
    parser.add_argument("--input-size", type=parse_size, required=True, metavar="HxW",
                        help="model input after the short-side resize, e.g. 640x853; padded to /32")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx files and manifest.json")
    parser.add_argument("--precisions", type=parse_precisions, default=("fp32", "fp16"), metavar="P,P",
                        help="fp32, fp16, bf16 (default fp32,fp16; low precision keeps eager's fp32 islands)")
    parser.add_argument("--buckets", type=parse_buckets, default=DEFAULT_BUCKETS, metavar="N,N,...",
                        help="decoder prompt counts (default 1,8,64)")


def run(args: argparse.Namespace) -> int:
    from semsam_ros.io.checkpoint import CheckpointError, load_model

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import onnx  # noqa: F401  (the exporter's dependencies)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"{exc}; pip install onnx onnxscript (or semsam_ros[onnx])") from None
    from semsam_ros.inference.onnx_export import export_onnx

    try:
        model = load_model(args.checkpoint, args.config)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    shape = padded_size(args.input_size, model.config.size_divisibility)
    manifest = export_onnx(model, shape, args.out, args.precisions, args.buckets)
    for entry in manifest["files"]:
        shapes = ", ".join(f"{io['name']} {'x'.join(map(str, io['shape']))} {io['dtype']}" for io in entry["outputs"])
        print(f"{args.out / entry['file']}: {shapes}")
    print(f"{args.out / 'manifest.json'}: {len(manifest['files'])} files, opset {manifest['opset']}")
    return 0
