"""ONNX export (``semsam export-onnx``) checked with onnxruntime against eager, and the ONNX route to TensorRT
through ``semsam build-engine --route onnx`` with a fake ``trtexec`` (the builder alone is faked)."""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from semsam_ros.cli import main  # noqa: E402
from semsam_ros.config import ModelConfig  # noqa: E402
from semsam_ros.inference import backends  # noqa: E402
from semsam_ros.inference.backends import BackendError, TensorRTBackend, TrtexecBuilder  # noqa: E402
from semsam_ros.inference.backends.accuracy import compare, guard_images, guard_prompts  # noqa: E402
from semsam_ros.inference.backends.precision import with_precision  # noqa: E402
from semsam_ros.inference.onnx_runtime import OrtPart  # noqa: E402
from semsam_ros.types import ONNX_OPSET  # noqa: E402
from trt_fakes import FAKE_TRTEXEC, CpuOnnxCompiler  # noqa: E402

SHAPE = (96, 128)  # the tiny model's short side is at least 65
BUCKETS = (1, 3)
ISLAND_OPS = {"LayerNormalization", "Softmax", "GridSample", "InstanceNormalization"}
LOW_OPS = {"MatMul", "Gemm", "Conv"}
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    argv = ["export-onnx", "--checkpoint", str(tiny_checkpoint), "--input-size", "96x120", "--out", str(out)]
    assert main([*argv, "--precisions", "fp32,fp16", "--buckets", ",".join(map(str, BUCKETS))]) == 0
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def inputs(tiny_model):
    image = tiny_model.preprocess(torch.from_numpy(guard_images(SHAPE)[0]).permute(2, 0, 1))
    return image, guard_prompts()


def _file(manifest, part, precision, bucket=None):
    return next(
        f for f in manifest["files"] if (f["part"], f["precision"], f["bucket"]) == (part, precision, bucket)
    )


def test_manifest_describes_every_file(exported, tiny_model):
    out, manifest = exported
    assert manifest["opset"] == ONNX_OPSET >= 16 and manifest["input_shape"] == list(SHAPE)  # 96x120 padded to /32
    assert manifest["weights_sha256"] == tiny_model.weights_sha256
    assert ModelConfig.from_dict(manifest["model_config"]) == tiny_model.config
    assert len(manifest["files"]) == 2 * (1 + len(BUCKETS))
    enc = _file(manifest, "encoder", "fp32")
    assert enc["file"] == "encoder-96x128-fp32.onnx" and (out / enc["file"]).is_file()
    assert enc["inputs"] == [{"name": "image", "shape": [1, 3, 96, 128], "dtype": "float32"}]
    assert [o["name"] for o in enc["outputs"]] == ["mask_features", "values"]
    dec = _file(manifest, "decoder", "fp16", 3)
    assert [(i["name"], i["shape"][0], i["dtype"]) for i in dec["inputs"][:2]] == [
        ("boxes", 3, "float32"),
        ("pb", 3, "int64"),
    ]
    assert dec["inputs"][2]["dtype"] == "float16"  # what the fp16 encoder gives
    assert dec["outputs"][0]["shape"] == [3, 6, 24, 32] and dec["outputs"][1]["shape"] == [3, 6]
    model = onnx.load(str(out / dec["file"]))
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["GridSample"] > 0 and "If" not in ops and "Loop" not in ops  # a flat, static graph


def test_fp32_onnxruntime_matches_eager(exported, tiny_model, inputs):
    out, manifest = exported
    image, prompts = inputs
    encoder = OrtPart(out / _file(manifest, "encoder", "fp32")["file"])
    with torch.no_grad():
        want = tiny_model.image_encoder(image)
        got = encoder(image)
        for g, w in zip(got, want):
            assert (g - w).abs().max() <= 1e-4 * w.abs().max()
        for bucket in BUCKETS:
            decoder = OrtPart(out / _file(manifest, "decoder", "fp32", bucket)["file"])
            args = (prompts[:bucket], torch.zeros(bucket, dtype=torch.long), *want)
            logits, ious = decoder(*args)
            ref_logits, ref_ious = tiny_model.prompt_decoder(*args)
            assert (logits - ref_logits).abs().max() <= 1e-4 * ref_logits.abs().max()
            torch.testing.assert_close(ious, ref_ious, rtol=0, atol=1e-5)


def _elem_types(model):
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_fp16_keeps_the_fp32_islands_and_matches_eager_fp16(exported, tiny_model, inputs):
    out, manifest = exported
    for entry in (f for f in manifest["files"] if f["precision"] == "fp16"):
        model = onnx.load(str(out / entry["file"]))
        types = _elem_types(model)
        seen: dict[str, set[int]] = {}
        for node in model.graph.node:
            if node.op_type in ISLAND_OPS | LOW_OPS:
                seen.setdefault(node.op_type, set()).add(types[node.input[0]])
        assert all(seen[op] == {FLOAT} for op in ISLAND_OPS & seen.keys()), (entry["file"], seen)
        assert all(seen[op] == {FLOAT16} for op in LOW_OPS & seen.keys()), (entry["file"], seen)
        assert "GridSample" in seen and ("LayerNormalization" in seen or "Softmax" in seen)
    image, prompts = inputs
    n = BUCKETS[-1]
    args = (prompts[:n], torch.zeros(n, dtype=torch.long))
    with torch.no_grad():
        features = with_precision(tiny_model.image_encoder, "cpu", torch.float16)(image)
        ref = with_precision(tiny_model.prompt_decoder, "cpu", torch.float16)(*args, *features)
    got = OrtPart(out / _file(manifest, "encoder", "fp16")["file"])(image)
    assert [t.dtype for t in got] == [f.dtype for f in features]
    logits, ious = OrtPart(out / _file(manifest, "decoder", "fp16", n)["file"])(*args, *got)
    report = compare(*(t.float().numpy() for t in (*ref, logits, ious)))
    assert report.mean_iou >= 0.98 and report.score_diff.max() < 0.05, report.summary()


# ------------------------------------------------------------------------------------------------ ONNX route


def test_trtexec_command_and_version():
    builder = TrtexecBuilder(str(FAKE_TRTEXEC))
    assert builder.version == "10.3.0"
    for precision, flag in (("fp32", "--noTF32"), ("fp16", "--fp16"), ("bf16", "--bf16")):
        command = builder.command("m.onnx", "m.engine", precision)
        assert command == [str(FAKE_TRTEXEC), "--onnx=m.onnx", "--saveEngine=m.engine", flag]
    with pytest.raises(BackendError, match="trtexec failed"):
        TrtexecBuilder(str(FAKE_TRTEXEC), extra_args=["--unknown"]).build("m.onnx", "m.engine", "fp16")


def test_build_engine_onnx_route_then_from_the_cache(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    log = tmp_path / "trtexec.jsonl"
    monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(log))

    def fake_backend(name, model, device, precision, **options):
        assert (name, options["engine_route"]) == ("tensorrt", "onnx")
        return TensorRTBackend(model, device, precision, compiler=CpuOnnxCompiler(), **options)

    monkeypatch.setattr(backends, "create_backend", fake_backend)
    cache = tmp_path / "cache"
    argv = ["build-engine", "--checkpoint", str(tiny_checkpoint), "--input-size", "96x128", "--precision", "fp16",
            "--route", "onnx", "--device", "cpu", "--buckets", "1,4", "--cache-dir", str(cache)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"]["engine_route"] == "onnx"
    assert [e["source"] for e in summary["engines"]] == ["built"] * 3
    assert all(e["path"].endswith("-fp16-onnx.engine") and e["size_bytes"] for e in summary["engines"])
    assert summary["accuracy"]["mean_mask_iou"] >= 0.98  # onnxruntime fp16 against eager fp32, for real

    builds = [json.loads(line) for line in log.read_text().splitlines()]
    assert [b["flags"] for b in builds] == [["--fp16"]] * 3
    assert [b["inputs"][0]["shape"] for b in builds] == [[1, 3, 96, 128], [1, 4], [4, 4]]
    assert all(b["inputs"][2]["elem_type"] == 10 for b in builds[1:])  # decoders take the fp16 features
    manifests = sorted(cache.rglob("*-onnx.json"))
    assert len(manifests) == 3 and all(json.loads(m.read_text())["key"]["route"] == "onnx" for m in manifests)

    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [e["source"] for e in summary["engines"]] == ["cache"] * 3
    assert len(log.read_text().splitlines()) == 3  # nothing rebuilt
    os.remove(log)


def test_onnx_route_needs_a_gpu_and_a_builder(tiny_model):
    with pytest.raises(BackendError, match="TensorRT needs a CUDA device"):
        backends.create_backend("tensorrt", tiny_model, "cpu", "fp16", engine_route="onnx")
    with pytest.raises(ValueError, match="engine_route"):
        backends.create_backend("tensorrt", tiny_model, "cpu", "fp16", engine_route="tflite")
