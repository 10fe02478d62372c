"""The ONNX route to TensorRT (``engine_route="onnx"``): no Torch-TensorRT, so no coupling to torch's version.

Each part is exported to ONNX at the engine's precision (:mod:`~semsam_ros.inference.onnx_export`: fp16 / bf16
with the eager fp32 islands as explicit casts) and built into a serialized TensorRT plan by TensorRT's Python
API (:class:`TensorRTPythonBuilder`) or, where only the command is installed (JetPack), by ``trtexec``
(:class:`TrtexecBuilder`), with ``--fp16`` / ``--bf16`` (``BuilderFlag.FP16`` / ``BF16``) at low precision and
TF32 off at fp32. :class:`TensorRTEngine` runs a plan with the TensorRT runtime on torch's current stream.
"""
from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ...model.semantic_sam import SemanticSam
from .base import BackendError, Shape
from .precision import PRECISION_OF
from .tensorrt import example_inputs, gpu_environment

log = logging.getLogger(__name__)

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)  # where JetPack installs it (not on PATH)
TRTEXEC_FLAGS = {"fp32": "--noTF32", "fp16": "--fp16", "bf16": "--bf16"}
ONNX_ROUTE_HINT = (
    "the ONNX route needs TensorRT's Python package (import tensorrt) or trtexec (JetPack: /usr/src/tensorrt/bin), "
    "and onnx + onnxscript to export; see docs/deployment.md"
)


class EngineBuilder(Protocol):
    """Builds a serialized TensorRT engine from an ONNX file."""

    version: str  # TensorRT version, part of the cache key

    def build(self, onnx_path: Path, engine_path: Path, precision: str) -> None: ...


def find_trtexec() -> str | None:
    """``trtexec`` on PATH, else where JetPack installs it; None when neither exists."""
    found = shutil.which("trtexec")
    return found or next((p for p in TRTEXEC_PATHS if Path(p).is_file()), None)


class TrtexecBuilder:
    """``trtexec --onnx=... --saveEngine=... [--fp16 | --bf16 | --noTF32]`` (static shapes: no ``--shapes``)."""

    def __init__(self, executable: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.executable = executable or find_trtexec()
        if self.executable is None:
            raise BackendError(f"trtexec not found; {ONNX_ROUTE_HINT}")
        self.extra_args = list(extra_args)
        self.version = self._version()

    def _version(self) -> str:
        """From the banner trtexec prints ("TensorRT v100300" -> "10.3.0")."""
        done = subprocess.run([self.executable, "--help"], capture_output=True, text=True, check=False)
        match = re.search(r"TensorRT v(\d+)", done.stdout + done.stderr)
        if not match:
            raise BackendError(f"{self.executable} --help printed no TensorRT version")
        number = int(match.group(1))
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"

    def command(self, onnx_path: Path, engine_path: Path, precision: str) -> list[str]:
        flags = [f"--onnx={onnx_path}", f"--saveEngine={engine_path}", TRTEXEC_FLAGS[precision]]
        return [self.executable, *flags, *self.extra_args]

    def build(self, onnx_path: Path, engine_path: Path, precision: str) -> None:
        command = self.command(onnx_path, engine_path, precision)
        log.info("running %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not engine_path.is_file():
            tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise BackendError(f"trtexec failed (exit status {done.returncode}): {tail}")


class TensorRTPythonBuilder:
    """TensorRT's Python API: ``OnnxParser``, ``BuilderFlag.FP16`` / ``BF16`` (or TF32 cleared at fp32)."""

    def __init__(self, workspace_bytes: int | None = None) -> None:
        self.trt = importlib.import_module("tensorrt")
        self.version = self.trt.__version__
        self.workspace_bytes = workspace_bytes

    def build(self, onnx_path: Path, engine_path: Path, precision: str) -> None:
        trt = self.trt
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # required before TRT 10
        network = builder.create_network(0 if explicit is None else 1 << int(explicit))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        if precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)
        else:
            config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        if self.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
        engine_path.write_bytes(bytes(plan))


def default_builder() -> EngineBuilder:
    """TensorRT's Python API when it imports, else ``trtexec``; BackendError when neither is installed."""
    try:
        return TensorRTPythonBuilder()
    except Exception as exc:  # ImportError, or a library that does not load
        log.debug("tensorrt does not import (%s); trying trtexec", exc)
    return TrtexecBuilder()


class TensorRTEngine:
    """A serialized plan run with the TensorRT runtime: ``engine(*inputs)`` -> new output tensors on ``device``.
    Inputs are cast to the engine's input types (TensorRT 8 turns int64 inputs into int32)."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        trt = importlib.import_module("tensorrt")
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT cannot deserialize {path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                  "INT64": torch.int64, "BOOL": torch.bool}  # fmt: skip
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n).name] for n in names}

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        feeds = [t.to(self.device, self.dtypes[n]).contiguous() for n, t in zip(self.inputs, tensors)]
        for name, tensor in zip(self.inputs, feeds):
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs.append(torch.empty(shape, dtype=self.dtypes[name], device=self.device))
            self.context.set_tensor_address(name, outputs[-1].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise BackendError("TensorRT engine execution failed")
        return tuple(outputs)


class OnnxTensorRTCompiler:
    """The :class:`~.tensorrt.EngineCompiler` of the ONNX route: export to ONNX, build with ``builder``, run with
    ``runner(plan_path, device)`` (default :class:`TensorRTEngine`). ONNX files and fresh plans live in a
    temporary folder until the backend caches them."""

    route = "onnx"

    def __init__(
        self,
        builder: EngineBuilder | None = None,
        runner: Callable[[Path, torch.device], Any] = TensorRTEngine,
        device: str | torch.device = "cuda",
    ) -> None:
        self.builder = builder if builder is not None else default_builder()
        self.runner = runner
        self.device = torch.device(device)
        self._workdir = tempfile.TemporaryDirectory(prefix="semsam-onnx-")
        self._plans: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()

    def environment(self, device: torch.device) -> dict[str, str]:
        return {"torch": torch.__version__, "torch_tensorrt": "", "tensorrt": self.builder.version,
                **gpu_environment(device)}  # fmt: skip

    def example_inputs(
        self, model: SemanticSam, shape: Shape, buckets: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> dict[int | None, tuple[Tensor, ...]]:
        return example_inputs(model, shape, buckets, device, dtype)

    def export(self, model: SemanticSam, part: int | None, inputs: tuple[Tensor, ...], dtype: torch.dtype) -> Path:
        from ..onnx_export import export_part, file_stem

        shape = tuple(inputs[0].shape[-2:]) if part is None else tuple(4 * d for d in inputs[2].shape[-2:])
        path = Path(self._workdir.name) / (file_stem(part, shape, PRECISION_OF[dtype]) + ".onnx")
        return export_part(model, part, inputs, PRECISION_OF[dtype], path)

    def compile(self, exported: Path, inputs: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Any:
        plan = exported.with_suffix(".engine")
        self.builder.build(exported, plan, PRECISION_OF[dtype])
        engine = self.runner(plan, device)
        self._plans[engine] = plan
        return engine

    def save(self, engine: Any, path: Path, inputs: Sequence[Tensor]) -> None:
        shutil.copyfile(self._plans[engine], path)

    def load(self, path: Path) -> Any:
        return self.runner(path, self.device)
