"""Inference backends behind one interface: eager PyTorch, ``torch.compile`` and TensorRT.

:func:`create_backend` picks one by name. The interface, prompt buckets and CUDA graphs are in :mod:`.base`,
low precision in :mod:`.precision`, the PyTorch backends in :mod:`.eager`, the TensorRT path in
:mod:`.tensorrt` (engines by Torch-TensorRT, or from ONNX by :mod:`.onnx_tensorrt`) with its :mod:`.engine_cache`
and the :mod:`.accuracy` guard.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from ...model.semantic_sam import SemanticSam
from ...types import BACKENDS, ENGINE_ROUTES, PRECISIONS
from .accuracy import AccuracyError, AccuracyReport
from .base import Backend, BackendError, CudaGraphDecoder, ImageUploader, bucket_plan, decode_in_buckets, pad_prompts
from .eager import CompileBackend, EagerBackend
from .engine_cache import EngineCache, EngineKey
from .onnx_tensorrt import (
    ONNX_ROUTE_HINT,
    OnnxTensorRTCompiler,
    TensorRTEngine,
    TensorRTPythonBuilder,
    TrtexecBuilder,
    find_trtexec,
)
from .precision import DTYPES, Fp32Islands, with_precision
from .tensorrt import (
    TENSORRT_HINT,
    EngineCompiler,
    TensorRTBackend,
    TorchTensorRTCompiler,
    pytorch_ops,
    tensorrt_precision_settings,
)

__all__ = [
    "AccuracyError",
    "AccuracyReport",
    "BACKENDS",
    "Backend",
    "BackendError",
    "CompileBackend",
    "CudaGraphDecoder",
    "DTYPES",
    "EagerBackend",
    "ENGINE_ROUTES",
    "EngineCache",
    "EngineCompiler",
    "EngineKey",
    "Fp32Islands",
    "ImageUploader",
    "OnnxTensorRTCompiler",
    "PRECISIONS",
    "TensorRTBackend",
    "TensorRTEngine",
    "TensorRTPythonBuilder",
    "TorchTensorRTCompiler",
    "TrtexecBuilder",
    "backend_problems",
    "bucket_plan",
    "create_backend",
    "decode_in_buckets",
    "find_trtexec",
    "pad_prompts",
    "pytorch_ops",
    "tensorrt_precision_settings",
    "with_precision",
]

log = logging.getLogger(__name__)


def _import_problem(module: str, hint: str) -> list[str]:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or an ABI mismatch
        return [f"{module} cannot be imported ({type(exc).__name__}: {exc}); {hint}"]
    return []


def backend_problems(name: str, device: torch.device, precision: str, engine_route: str = "torch") -> list[str]:
    """Why backend ``name`` at ``precision`` (TensorRT: built by ``engine_route``) cannot run on ``device``
    (empty when it can)."""
    problems = []
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if device.type == "cuda" and not cuda:
        problems.append(f"CUDA is not available (torch {torch.__version__}, no usable GPU)")
    if name == "tensorrt":
        if device.type != "cuda":
            problems.append(f"TensorRT needs a CUDA device, got {device}")
        if engine_route == "torch":
            problems += _import_problem("torch_tensorrt", TENSORRT_HINT)
        else:
            missing = [p for m in ("onnx", "onnxscript") for p in _import_problem(m, "pip install onnx onnxscript")]
            if _import_problem("tensorrt", "") and find_trtexec() is None:
                missing.append("neither the tensorrt package nor trtexec is installed")
            problems += [f"{'; '.join(missing)}; {ONNX_ROUTE_HINT}"] if missing else []
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        problems.append("this GPU does not support bfloat16")
    return problems


def create_backend(
    name: str,
    model: SemanticSam,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    *,
    fallback: bool = False,
    **options: Any,
) -> Backend:
    """The backend ``name`` ("eager", "compile", "tensorrt") for ``model`` on ``device``.

    When it cannot run here (see :func:`backend_problems`) this raises :class:`BackendError` naming every reason,
    or with ``fallback=True`` logs them as a warning and returns the eager backend (at ``precision`` when the
    device supports it, else fp32; backend-specific ``options`` are dropped). ``options`` go to the backend
    class: ``buckets``, ``cuda_graphs`` for all; ``mode``, ``compiler`` for compile; ``engine_route`` ("torch",
    the default, or "onnx"), ``cache_dir``, ``min_mean_iou``, ``on_accuracy_failure``, ``allow_build``,
    ``compiler`` for tensorrt.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    route = options.get("engine_route", "torch")
    if route not in ENGINE_ROUTES:
        raise ValueError(f"engine_route must be one of {ENGINE_ROUTES}, got {route!r}")
    problems = backend_problems(name, device, precision, route)
    if problems:
        message = f"backend {name!r} ({precision}) cannot run on {device}: " + "; ".join(problems)
        if not fallback:
            raise BackendError(message)
        eager_precision = "fp32" if backend_problems("eager", device, precision) else precision
        log.warning("%s; falling back to the eager backend (%s)", message, eager_precision)
        common = {k: v for k, v in options.items() if k in ("buckets", "cuda_graphs")}
        return EagerBackend(model, device, eager_precision, **common)
    if name == "tensorrt" and route == "onnx" and options.get("compiler") is None:
        options["compiler"] = OnnxTensorRTCompiler(device=device)
    classes: dict[str, type[Backend]] = {"eager": EagerBackend, "compile": CompileBackend, "tensorrt": TensorRTBackend}
    return classes[name](model, device, precision, **options)
