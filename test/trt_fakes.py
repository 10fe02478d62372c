"""Stand-ins for TensorRT, so the TensorRT backend runs on CPU with TensorRT alone faked.

Torch-TensorRT route: a fake ``torch_tensorrt`` package. ONNX route: :class:`CpuOnnxCompiler`, the real compiler
whose builder runs ``fake_trtexec.py`` (a fake ``trtexec``) and whose engines run with onnxruntime.

The backend's own code runs as it does on a GPU: it exports each part with ``torch.export``, and
:class:`~semsam_ros.inference.backends.TorchTensorRTCompiler` calls ``torch_tensorrt.dynamo.compile``,
``torch_tensorrt.save(..., output_format="exported_program")`` and ``torch_tensorrt.load``. Here the "engine" is
the exported program's own module (its numerics are what runs), and save / load write and read real ``.pt2``
archives with ``torch.export.save`` / ``torch.export.load``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import torch
from torch import Tensor, nn

from semsam_ros.inference.backends import OnnxTensorRTCompiler, TorchTensorRTCompiler, TrtexecBuilder
from semsam_ros.inference.onnx_runtime import OrtPart

FAKE_TRTEXEC = Path(__file__).with_name("fake_trtexec.py")
FAKE_GPU = {"gpu": "Fake GPU", "compute_capability": "8.7"}  # a Jetson Orin


class Negated(nn.Module):
    """A decoder engine that flips the sign of its mask logits: an inaccurate engine for the accuracy guard."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        logits, ious = self.inner(*args)
        return -logits, ious


class FakeTorchTensorRT(types.ModuleType):
    """What the backend uses of ``torch_tensorrt``: ``__version__``, ``dynamo.compile``, ``save`` and ``load``.

    ``compiled`` lists each compiled part (None: image encoder; else the decoder's prompt count) and ``settings``
    the builder settings it got. ``negate`` makes decoder engines :class:`Negated`.
    """

    def __init__(self, version: str = "2.8.0", negate: bool = False) -> None:
        super().__init__("torch_tensorrt")
        self.__version__ = version
        self.negate = negate
        self.compiled: list[int | None] = []
        self.settings: list[dict[str, Any]] = []
        self.dynamo = types.SimpleNamespace(compile=self.compile)

    def compile(
        self,
        exported_program: torch.export.ExportedProgram,
        inputs: Sequence[Tensor] | None = None,
        *,
        arg_inputs: Sequence[Tensor],
        device: torch.device | None = None,
        **settings: Any,
    ) -> nn.Module:
        if not isinstance(exported_program, torch.export.ExportedProgram):
            raise TypeError(f"expected an ExportedProgram, got {type(exported_program).__name__}")
        decoder = len(arg_inputs) == 4
        self.compiled.append(len(arg_inputs[0]) if decoder else None)
        self.settings.append(settings)
        engine = exported_program.module()
        return Negated(engine) if decoder and self.negate else engine

    def save(
        self,
        module: nn.Module,
        file_path: str,
        *,
        output_format: str = "exported_program",
        arg_inputs: Sequence[Tensor],
    ) -> None:
        if output_format != "exported_program":
            raise NotImplementedError(f"the fake writes exported programs only, not {output_format!r}")
        if Path(file_path).suffix != ".pt2":
            raise ValueError(f"an exported program is saved as .pt2, got {file_path}")
        torch.export.save(torch.export.export(module, tuple(arg_inputs), strict=False), file_path)

    def load(self, file_path: str) -> torch.export.ExportedProgram:
        return torch.export.load(file_path)


class FakeCompiler(TorchTensorRTCompiler):
    """The backend's real compiler over :class:`FakeTorchTensorRT` (``trt``), on a fake GPU."""

    def __init__(self, torch_tensorrt: str = "2.8.0", negate: bool = False, **settings: Any) -> None:
        with mock.patch.dict(sys.modules, {"torch_tensorrt": FakeTorchTensorRT(torch_tensorrt, negate)}):
            super().__init__(**settings)

    def environment(self, device: torch.device) -> dict[str, str]:
        """EngineKey fields of a Jetson Orin (no CUDA device or TensorRT library here)."""
        return {"torch": torch.__version__, "torch_tensorrt": self.trt.__version__, "tensorrt": "10.3.0", **FAKE_GPU}


class CpuOnnxCompiler(OnnxTensorRTCompiler):
    """The ONNX route's real compiler: real ONNX export, :class:`TrtexecBuilder` running ``fake_trtexec.py``, and
    the saved "engines" (ONNX bytes) run by onnxruntime on the CPU in place of the TensorRT runtime."""

    def __init__(self) -> None:
        super().__init__(TrtexecBuilder(str(FAKE_TRTEXEC)), OrtPart, torch.device("cpu"))

    def environment(self, device: torch.device) -> dict[str, str]:
        """The real fields with the GPU's faked (there is no CUDA device here)."""
        with mock.patch("semsam_ros.inference.backends.onnx_tensorrt.gpu_environment", lambda d: FAKE_GPU):
            return super().environment(device)
