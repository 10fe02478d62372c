"""Run an exported ONNX part with onnxruntime, tensors in and out, so it can stand where a backend's part does."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA first when asked for and installed, always CPU."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    return [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


class OrtPart:
    """An ONNX file (or its bytes) in an ``onnxruntime.InferenceSession``; ``part(*tensors)`` returns its outputs
    as tensors on ``device``. Inputs are given in the file's input order and must have its dtypes."""

    def __init__(self, model: str | Path | bytes, device: str | torch.device = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers(self.device))
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        feed: dict[str, Any] = {
            name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, tensors)
        }
        return tuple(torch.from_numpy(out).to(self.device) for out in self.session.run(None, feed))
