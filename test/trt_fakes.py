"""Test stand-ins for Torch-TensorRT: no GPU needed, same backend code paths (export, cache, guard, fallback log)."""
from __future__ import annotations

import operator

import torch
from torch import nn


def _partitioned(engine: nn.Module, inputs: int) -> torch.fx.GraphModule:
    """What Torch-TensorRT returns, in miniature: an FX graph calling an engine submodule, one op left in PyTorch."""
    graph = torch.fx.Graph()
    out = graph.call_module("_run_on_acc_0", tuple(graph.placeholder(f"x{i}") for i in range(inputs)))
    first, second = (graph.call_function(operator.getitem, (out, i)) for i in range(2))
    graph.output((graph.call_function(torch.ops.aten.clone.default, (first,)), second))
    return torch.fx.GraphModule({"_run_on_acc_0": engine}, graph)


class Negated(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        logits, ious = self.inner(*args)
        return -logits, ious


class FakeCompiler:
    """Stands in for Torch-TensorRT on CPU. The backend exports as for the real one; the 'engine' runs the eager
    module, and its file names the part it stands for. ``negate`` flips decoder logits (an inaccurate engine)."""

    def __init__(self, model, torch_tensorrt: str = "2.8.0", negate: bool = False) -> None:
        self.model, self.version, self.negate = model, torch_tensorrt, negate
        self.compiled: list[int | None] = []

    def environment(self, device):
        return {
            "torch": torch.__version__,
            "torch_tensorrt": self.version,
            "tensorrt": "10.3.0",
            "gpu": "Fake GPU",
            "compute_capability": "8.7",
        }

    def _engine(self, part: str) -> torch.fx.GraphModule:
        if part == "encoder":
            return _partitioned(self.model.image_encoder, 1)
        decoder = Negated(self.model.prompt_decoder) if self.negate else self.model.prompt_decoder
        return _partitioned(decoder, 4)

    def compile(self, exported, inputs, dtype, device):
        assert isinstance(exported, torch.export.ExportedProgram)
        self.compiled.append(len(inputs[0]) if len(inputs) == 4 else None)
        return self._engine("decoder" if len(inputs) == 4 else "encoder")

    def save(self, engine, path, inputs):
        path.write_text("decoder" if len(inputs) == 4 else "encoder")

    def load(self, path):
        return self._engine(path.read_text())
