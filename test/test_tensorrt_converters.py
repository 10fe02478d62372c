"""Every operator of the exported image encoder and prompt decoder has a Torch-TensorRT converter, in the release
of JetPack 6.2 (2.8) and in 2.13, so no engine breaks into PyTorch partitions. Checked without TensorRT against
the converter lists in ../shared/reference/torch_tensorrt (see its README)."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from semsam_ros.inference.backends.tensorrt import example_inputs, export_part

VERSIONS = ("2.8.0", "2.13.0")
SHAPE = (64, 96)  # the smallest padded input whose coarsest feature map is larger than 1x1 for the tiny config
LOWERED = {
    "torch.ops.aten.view.default",
    "torch.ops.aten._assert_tensor_metadata.default",
    "operator.getitem",
}
"""Handled by Torch-TensorRT's own lowering before conversion (reference README), so not in the lists."""


def op_name(target: Any) -> str:
    """A ``call_function`` target as the converter lists spell it: ``torch.ops.aten.add.Tensor``,
    ``operator.mul``, ``torch.sym_min``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target}"
    return f"{target.__module__.lstrip('_')}.{target.__name__}"


def has_converter(name: str, converters: dict[str, bool]) -> bool:
    """True when the overload, or its whole packet (``torch.ops.aten.grid_sampler``), has a converter."""
    return name in LOWERED or name in converters or name.rsplit(".", 1)[0] in converters


@pytest.fixture(scope="module")
def graph_ops(tiny_model) -> dict[str, set[str]]:
    """Operators of each part, exported as the TensorRT backend exports them, after ``run_decompositions()``."""
    examples = example_inputs(tiny_model, SHAPE, (1,), torch.device("cpu"))
    ops = {}
    for part, what in ((None, "image encoder"), (1, "prompt decoder")):
        graph = export_part(tiny_model, part, examples[part]).run_decompositions().graph
        ops[what] = {op_name(node.target) for node in graph.nodes if node.op == "call_function"}
    return ops


def test_every_operator_has_a_converter(graph_ops, reference_dir):
    assert "torch.ops.aten.convolution.default" in graph_ops["image encoder"]
    assert "torch.ops.aten.grid_sampler_2d.default" in graph_ops["prompt decoder"]  # deformable attention
    missing = {}
    for version in VERSIONS:
        listed = json.loads((reference_dir / "torch_tensorrt" / f"converters_v{version}.json").read_text())
        assert listed["tag"] == f"v{version}" and listed["ops"]
        for what, ops in graph_ops.items():
            if absent := sorted(op for op in ops if not has_converter(op, listed["ops"])):
                missing[f"{what}, Torch-TensorRT {version}"] = absent
    assert not missing, "operators without a converter: " + "; ".join(f"{k}: {v}" for k, v in missing.items())


def test_op_names_match_the_converter_lists():
    assert op_name(torch.ops.aten.add.Tensor) == "torch.ops.aten.add.Tensor"
    assert op_name(__import__("operator").getitem) == "operator.getitem"
    assert op_name(torch.sym_min) == "torch.sym_min"
    assert has_converter("torch.ops.aten.grid_sampler.default", {"torch.ops.aten.grid_sampler": False})
    assert not has_converter("torch.ops.aten.grid_sampler_3d.default", {"torch.ops.aten.grid_sampler": False})
