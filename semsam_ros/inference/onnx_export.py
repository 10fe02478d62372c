"""ONNX export of the model's two halves, with a JSON manifest describing the files.

The image encoder is exported at one padded input size, the prompt decoder at each prompt bucket (static shapes
throughout). "fp32" is the model as written; "fp16" / "bf16" are traced under the eager backend's autocast with
its fp32 islands (:mod:`.backends.precision`), so norms, softmax and ``GridSample`` get explicit casts to fp32
in the graph and matmuls and convolutions run in the low precision.

The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript): a flat static graph with
``GridSample`` and ``LayerNormalization`` nodes. The TorchScript exporter leaves ``If`` nodes and shape
arithmetic in the graph, one branch of which divides by zero when onnxruntime folds it.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..io.hashing import file_sha256
from ..model.semantic_sam import SemanticSam
from ..types import DEFAULT_BUCKETS, ONNX_OPSET
from .backends.precision import DTYPES, with_precision
from .backends.tensorrt import example_inputs, weights_digest

log = logging.getLogger(__name__)

ENCODER_IO = (("image",), ("mask_features", "values"))
DECODER_IO = (("boxes", "pb", "mask_features", "values"), ("mask_logits", "iou_scores"))
MANIFEST_NAME = "manifest.json"
Part = int | None  # None: the image encoder; a prompt count: the decoder at that bucket


class AtPrecision(nn.Module):
    """One half of the model run as the eager backend runs it at ``dtype`` (autocast + fp32 islands)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.module = module
        self._run = with_precision(module, device_type, dtype)

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(*args)


def file_stem(part: Part, shape: tuple[int, int], precision: str) -> str:
    """``encoder-640x864-fp16`` or ``decoder-640x864-b8-fp16``."""
    h, w = shape
    return f"encoder-{h}x{w}-{precision}" if part is None else f"decoder-{h}x{w}-b{part}-{precision}"


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes of an ONNX file's inputs and outputs, as the file declares them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def entries(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            }
            for v in values
        ]

    return {"inputs": entries(graph.input), "outputs": entries(graph.output)}


def export_part(
    model: SemanticSam, part: Part, inputs: Sequence[Tensor], precision: str, path: str | Path, opset: int = ONNX_OPSET
) -> Path:
    """Write the ONNX file of ``part`` for ``inputs`` (see :func:`~.backends.tensorrt.example_inputs`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.image_encoder if part is None else model.prompt_decoder
    names = ENCODER_IO if part is None else DECODER_IO
    wrapped = AtPrecision(module, DTYPES[precision], inputs[0].device.type).eval()
    chatter = logging.getLogger("onnxscript")  # one "skipping constant folding" warning per Split node
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            torch.onnx.export(
                wrapped,
                tuple(inputs),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=list(names[0]),
                output_names=list(names[1]),
                external_data=False,
                verbose=False,
            )
    finally:
        chatter.setLevel(level)
    return path


def export_onnx(
    model: SemanticSam,
    shape: tuple[int, int],
    out_dir: str | Path,
    precisions: Sequence[str] = ("fp32",),
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Export the encoder at padded ``shape`` and the decoder at each bucket, per precision, into ``out_dir``;
    write and return the manifest (files with their inputs, outputs, sha256; opset, weights, model config)."""
    out_dir, device = Path(out_dir), torch.device(device)
    model = model.to(device).eval()
    files = []
    for precision in precisions:
        examples = example_inputs(model, shape, buckets, device, DTYPES[precision])
        for part, inputs in examples.items():
            path = out_dir / (file_stem(part, shape, precision) + ".onnx")
            log.info("exporting %s ...", path.name)
            export_part(model, part, inputs, precision, path)
            files.append(
                {
                    "file": path.name,
                    "part": "encoder" if part is None else "decoder",
                    "bucket": part,
                    "precision": precision,
                    "sha256": file_sha256(path),
                    **describe_io(path),
                }
            )
    manifest = {
        "format": 1,
        "opset": ONNX_OPSET,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "input_shape": list(shape),
        "buckets": sorted(set(buckets)),
        "weights_sha256": weights_digest(model),
        "model_config": model.config.to_dict(),
        "files": files,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest
