"""Backends: bucketing, precision, selection and fallback, torch.compile, and the TensorRT build / cache / guard
logic (through a stand-in for torch_tensorrt that needs no GPU). GPU and Torch-TensorRT tests skip without them."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semsam_ros.inference import backends
from semsam_ros.inference.backends import base, tensorrt as trt_backend
from semsam_ros.inference.backends.accuracy import AccuracyError, evaluate
from semsam_ros.inference.backends import (
    BackendError,
    CompileBackend,
    EagerBackend,
    Fp32Islands,
    ImageUploader,
    TensorRTBackend,
    bucket_plan,
    create_backend,
    pad_prompts,
    pytorch_ops,
    tensorrt_precision_settings,
)
from semsam_ros.inference.predictor import Predictor
from trt_fakes import FakeCompiler

SHAPE = (96, 128)
CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
try:
    import torch_tensorrt  # noqa: F401

    HAS_TRT = True
except Exception:  # absent, or built for another torch
    HAS_TRT = False
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs a CUDA device and torch_tensorrt")


def _prompts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)
    return boxes, torch.zeros(n, dtype=torch.long)


@pytest.fixture(scope="module")
def features(tiny_model):
    with torch.no_grad():
        return tiny_model.image_encoder(torch.randn(1, 3, *SHAPE, generator=torch.Generator().manual_seed(1)))


# ------------------------------------------------------------------------------------------------ buckets


@pytest.mark.parametrize(
    "count, plan",
    [
        (0, []),
        (1, [(0, 1, 1)]),
        (3, [(0, 3, 8)]),
        (8, [(0, 8, 8)]),
        (9, [(0, 9, 64)]),
        (60, [(0, 60, 64)]),
        (130, [(0, 64, 64), (64, 64, 64), (128, 2, 8)]),
    ],
)
def test_bucket_plan(count, plan):
    assert bucket_plan(count, (1, 8, 64)) == plan


def test_pad_prompts_repeats_the_first_prompt():
    boxes, pb = _prompts(3)
    padded, padded_pb = pad_prompts(boxes, pb, 8)
    assert padded.shape == (8, 4) and padded_pb.shape == (8,)
    assert torch.equal(padded[:3], boxes) and torch.equal(padded[3:], boxes[:1].expand(5, 4))
    assert pad_prompts(boxes, pb, 3)[0] is boxes


@pytest.mark.parametrize("count", [1, 3, 9, 13])
def test_bucket_padding_gives_the_unpadded_results(tiny_model, features, count):
    mask_features, values = features
    boxes, pb = _prompts(count, seed=count)
    bucketed = EagerBackend(tiny_model, CPU, static_prompts=True, buckets=(1, 4, 8))
    with torch.no_grad():
        expected_logits, expected_ious = tiny_model.prompt_decoder(boxes, pb, mask_features, values)
        logits, ious = bucketed.prompt_decoder(boxes, pb, mask_features, values)
    assert logits.shape == (count, 6, 24, 32) and logits.dtype == torch.float32
    assert (logits - expected_logits).abs().max() <= 1e-5 * expected_logits.abs().max()
    torch.testing.assert_close(ious, expected_ious, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ precision


def test_fp32_eager_backend_runs_the_model_unchanged(tiny_model, features):
    backend = EagerBackend(tiny_model, CPU)
    assert backend.describe() == {
        "backend": "eager",
        "precision": "fp32",
        "device": "cpu",
        "buckets": None,
        "cuda_graphs": False,
    }
    image = torch.randn(1, 3, *SHAPE)
    boxes, pb = _prompts(5)
    with torch.no_grad():
        for got, want in zip(backend.image_encoder(image), tiny_model.image_encoder(image)):
            assert torch.equal(got, want)
        for got, want in zip(
            backend.prompt_decoder(boxes, pb, *features), tiny_model.prompt_decoder(boxes, pb, *features)
        ):
            assert torch.equal(got, want)


def test_fp32_islands_under_autocast():
    x = torch.randn(4, 16)
    weight, bias = torch.randn(16), torch.randn(16)
    grid = torch.rand(1, 3, 5, 2) * 2 - 1
    value = torch.randn(1, 4, 6, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.linear(x, torch.randn(16, 16))
        plain = F.layer_norm(low, (16,), weight, bias)
        with Fp32Islands():
            norm = F.layer_norm(low, (16,), weight, bias)
            soft = low.softmax(-1)
            group = F.group_norm(low.view(1, 16, 2, 2), 4)
            sampled = F.grid_sample(value.bfloat16(), grid.bfloat16(), align_corners=False)
            still_low = F.linear(norm, torch.randn(16, 16))
    assert plain.dtype == torch.bfloat16  # CPU autocast leaves LayerNorm in the low precision
    assert norm.dtype == soft.dtype == group.dtype == sampled.dtype == torch.float32
    assert still_low.dtype == torch.bfloat16  # everything else follows autocast
    torch.testing.assert_close(norm, F.layer_norm(low.float(), (16,), weight, bias))
    torch.testing.assert_close(soft, low.float().softmax(-1))
    torch.testing.assert_close(
        sampled, F.grid_sample(value.bfloat16().float(), grid.bfloat16().float(), align_corners=False)
    )
    with Fp32Islands():  # fp32 inputs: the same ops, bit for bit
        assert torch.equal(F.layer_norm(x, (16,), weight, bias), F.layer_norm(x, (16,), weight, bias))
        assert torch.equal(x.softmax(-1), torch.softmax(x, -1))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_eager_backend_against_fp32(tiny_model, precision):
    backend = EagerBackend(tiny_model, CPU, precision)
    mask_features, values = backend.image_encoder(torch.randn(1, 3, *SHAPE))
    assert mask_features.dtype == values.dtype == backends.DTYPES[precision]
    logits, ious = backend.prompt_decoder(*_prompts(2), mask_features, values)
    assert logits.dtype == ious.dtype == torch.float32
    report = evaluate(EagerBackend(tiny_model, CPU), backend, tiny_model.preprocess, SHAPE, CPU)
    assert report.mean_iou >= 0.98 and report.score_diff.max() < 0.02, report.summary()


# ------------------------------------------------------------------------------------------------ selection


def test_unknown_backend_or_precision(tiny_model):
    with pytest.raises(ValueError, match="backend must be one of"):
        create_backend("onnx", tiny_model)
    with pytest.raises(ValueError, match="precision must be one of"):
        create_backend("eager", tiny_model, precision="int8")
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        create_backend("eager", tiny_model, "cpu", cuda_graphs=True)
    assert isinstance(create_backend("compile", tiny_model, compiler="eager"), CompileBackend)


def test_tensorrt_unavailable_is_a_clear_error(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # as if not installed
    with pytest.raises(BackendError) as err:
        create_backend("tensorrt", tiny_model, "cpu", "fp16")
    message = str(err.value)
    assert "backend 'tensorrt' (fp16) cannot run on cpu" in message
    assert "TensorRT needs a CUDA device, got cpu" in message
    assert "torch_tensorrt cannot be imported" in message and "docs/deployment.md" in message
    with pytest.raises(BackendError, match="torch_tensorrt cannot be imported"):
        Predictor(tiny_model, short_side=96, backend="tensorrt", precision="fp16")
    with pytest.raises(BackendError, match="torch_tensorrt cannot be imported"):
        backends.TorchTensorRTCompiler()


def test_tensorrt_unavailable_falls_back_to_eager_when_asked(tiny_model, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with caplog.at_level(logging.WARNING):
        backend = create_backend(
            "tensorrt", tiny_model, "cpu", "bf16", fallback=True, buckets=(1, 4), cache_dir="/nowhere"
        )
    assert isinstance(backend, EagerBackend) and backend.precision == "bf16" and backend.buckets == (1, 4)
    assert "cannot run on cpu" in caplog.text and "falling back to the eager backend (bf16)" in caplog.text


def test_predictor_with_a_low_precision_backend(tiny_model, test_image):
    predictor = Predictor(tiny_model, short_side=96, backend="eager", precision="bf16")
    assert predictor.backend.describe()["precision"] == "bf16"
    predictor.set_image(test_image)
    pred = predictor.predict(points=[[20, 20], [50, 24]])
    assert pred.mask_logits.shape == (2, 6, 48, 80) and pred.mask_logits.dtype == np.float32
    reference = Predictor(tiny_model, short_side=96)
    reference.set_image(test_image)
    expected = reference.predict(points=[[20, 20], [50, 24]])
    assert (pred.masks == expected.masks).mean() > 0.98


# ------------------------------------------------------------------------------------------------ torch.compile


def test_compile_backend_matches_eager(tiny_model):
    """Dynamo capture of both halves at static bucket shapes (its "eager" backend: no code generation, seconds)."""
    backend = CompileBackend(tiny_model, CPU, compiler="eager", buckets=(1, 4))
    report = evaluate(EagerBackend(tiny_model, CPU), backend, tiny_model.preprocess, SHAPE, CPU)
    assert report.mean_iou == 1.0 and report.score_diff.max() < 1e-5


@pytest.mark.slow  # Inductor code generation takes minutes on a small CPU
def test_compile_backend_with_inductor_matches_eager(tiny_model):
    backend = CompileBackend(tiny_model, CPU, buckets=(1, 8, 64))
    report = evaluate(EagerBackend(tiny_model, CPU), backend, tiny_model.preprocess, SHAPE, CPU)
    assert report.mean_iou >= 0.999 and report.score_diff.max() < 1e-4


# ------------------------------------------------------------------------------------------------ TensorRT logic


def test_tensorrt_precision_settings_follow_the_installed_release():
    old = {"enabled_precisions", "disable_tf32", "use_explicit_typing"}
    new = old | {"enable_autocast", "autocast_low_precision_type", "autocast_excluded_ops"}
    assert tensorrt_precision_settings(torch.float16, old) == {"enabled_precisions": {torch.float16}}
    assert tensorrt_precision_settings(torch.float32, old) == {
        "disable_tf32": True,
        "enabled_precisions": {torch.float32},
    }
    strong = tensorrt_precision_settings(torch.bfloat16, new)
    assert strong["use_explicit_typing"] and strong["enable_autocast"]
    assert strong["autocast_low_precision_type"] is torch.bfloat16
    assert torch.ops.aten.native_layer_norm.default in strong["autocast_excluded_ops"]
    assert torch.ops.aten.grid_sampler_2d.default in strong["autocast_excluded_ops"]
    assert torch.ops.aten._softmax.default in strong["autocast_excluded_ops"]
    assert tensorrt_precision_settings(torch.float32, new) == {"disable_tf32": True, "use_explicit_typing": True}


def test_pytorch_ops_lists_what_runs_outside_engines():
    class Engine(nn.Module):  # an opaque engine, like a TensorRT runtime module
        def forward(self, x):
            return x * 2

    class Fallback(nn.Module):  # a PyTorch-run partition
        def forward(self, x):
            return torch.relu(x)

    inner = torch.fx.symbolic_trace(Fallback())
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_module("_run_on_acc_0", (x,))
    z = graph.call_module("_run_on_gpu_1", (y,))
    w = graph.call_function(torch.ops.aten.sigmoid.default, (z,))
    graph.output(graph.call_function(torch.ops.aten.sigmoid.default, (w,)))
    gm = torch.fx.GraphModule(nn.ModuleDict({"_run_on_acc_0": Engine(), "_run_on_gpu_1": inner}), graph)
    ops = pytorch_ops(gm)
    assert ops["aten.sigmoid.default"] == 2 and sum(ops.values()) == 3  # + relu inside the fallback submodule
    assert pytorch_ops(Engine()) == {}


def _trt(model, cache_dir: Path, compiler: FakeCompiler, **options) -> TensorRTBackend:
    return TensorRTBackend(model, CPU, "fp32", cache_dir=cache_dir, compiler=compiler, buckets=(1, 4), **options)


@pytest.fixture(scope="module")
def built_cache(tiny_model, tmp_path_factory):
    """A cache holding the tiny model's engines (64x96, buckets 1 and 4), and the backend that built them."""
    root = tmp_path_factory.mktemp("engines")
    compiler = FakeCompiler()
    backend = _trt(tiny_model, root, compiler)
    backend.prepare(SHAPE)
    return root, backend, compiler


def _copy(built_cache, tmp_path: Path) -> Path:
    shutil.copytree(built_cache[0], tmp_path / "cache")
    return tmp_path / "cache"


def test_tensorrt_backend_builds_checks_and_caches(tiny_model, built_cache, features):
    root, backend, compiler = built_cache
    assert compiler.trt.compiled == [None, 1, 4]
    assert compiler.trt.settings == [{"disable_tf32": True, "enabled_precisions": {torch.float32}}] * 3
    assert [(r["part"], r["bucket"], r["source"]) for r in backend.records] == [
        ("encoder", None, "built"),
        ("decoder", 1, "built"),
        ("decoder", 4, "built"),
    ]
    assert all(r["size_bytes"] > 0 and Path(r["path"]).is_file() and r["seconds"] > 0 for r in backend.records)
    assert backend.accuracy[SHAPE].mean_iou == 1.0
    manifest = backend.cache.manifest(backend.key(SHAPE, 4))
    assert manifest["accuracy"]["mean_mask_iou"] == 1.0 and manifest["build_seconds"] > 0
    boxes, pb = _prompts(6)
    with torch.no_grad():
        expected = tiny_model.prompt_decoder(boxes, pb, *features)
    logits, ious = backend.prompt_decoder(boxes, pb, *features)  # 6 prompts: bucket 4 + bucket 4 (2 padded)
    assert (logits - expected[0]).abs().max() <= 1e-5 * expected[0].abs().max()
    torch.testing.assert_close(ious, expected[1], rtol=0, atol=1e-5)


def test_engine_key_covers_weights_code_and_environment(tiny_model, built_cache):
    key = built_cache[1].key(SHAPE, 4).to_dict()
    assert key["weights_sha256"] == tiny_model.weights_sha256 and len(key["model_code"]) == 16
    assert (key["torch_tensorrt"], key["tensorrt"], key["gpu"], key["compute_capability"]) == (
        "2.8.0",
        "10.3.0",
        "Fake GPU",
        "8.7",
    )
    assert (key["part"], key["bucket"], key["input_shape"], key["precision"]) == ("decoder", 4, [96, 128], "fp32")
    # a model built in memory (no checkpoint file) is keyed by a digest of its state dict
    torch.manual_seed(0)
    a = nn.Linear(2, 2)
    torch.manual_seed(0)
    b = nn.Linear(2, 2)
    assert trt_backend.weights_digest(a) == trt_backend.weights_digest(b) != trt_backend.weights_digest(nn.Linear(2, 2))


def test_second_start_builds_nothing(tiny_model, built_cache, caplog, monkeypatch):
    root, first, _ = built_cache
    monkeypatch.setattr(base, "_logged", set())
    compiler = FakeCompiler()
    with caplog.at_level(logging.INFO):
        backend = _trt(tiny_model, root, compiler)
        backend.prepare(SHAPE)
        _trt(tiny_model, root, FakeCompiler()).prepare(SHAPE)
    assert compiler.trt.compiled == [] and not backend.accuracy
    assert [r["source"] for r in backend.records] == ["cache"] * 3
    assert "building" not in caplog.text
    # ops left to PyTorch (here: all, nothing is a TensorRT engine) are reported once per engine and process
    ops = pytorch_ops(backend._engines[SHAPE][4])
    assert ops["aten.linear.default"] > 0
    assert caplog.text.count(f"TensorRT 4-prompt decoder (fp32): {sum(ops.values())} ops run in PyTorch: ") == 1
    image = torch.randn(1, 3, *SHAPE)
    for got, want in zip(backend.image_encoder(image), first.image_encoder(image)):  # loaded vs as built
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_corrupt_entry_is_rebuilt_with_a_warning(tiny_model, built_cache, tmp_path, caplog):
    root = _copy(built_cache, tmp_path)
    compiler = FakeCompiler()
    backend = _trt(tiny_model, root, compiler)
    path = backend.cache.engine_path(backend.key(SHAPE, 4))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte differs
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        backend.prepare(SHAPE)
    assert "does not match its manifest" in caplog.text and "decoder-96x128-b4-fp32.pt2" in caplog.text
    assert compiler.trt.compiled == [4]
    assert [r["source"] for r in backend.records] == ["cache", "cache", "built"]
    again = FakeCompiler()
    _trt(tiny_model, root, again).prepare(SHAPE)
    assert again.trt.compiled == []


def test_no_build_at_launch_when_forbidden(tiny_model, tmp_path):
    backend = _trt(tiny_model, tmp_path, FakeCompiler(), allow_build=False)
    with pytest.raises(
        BackendError, match=r"allow_build=False; prebuild with: semsam build-engine .* --input-size 96x128"
    ):
        backend.prepare(SHAPE)


def test_inaccurate_engines_are_refused_and_never_cached(tiny_model, built_cache, tmp_path):
    root = _copy(built_cache, tmp_path)
    backend = _trt(tiny_model, root, FakeCompiler(negate=True))
    backend.cache.manifest_path(backend.key(SHAPE, 4)).unlink()  # one engine to build: the guard checks all
    with pytest.raises(AccuracyError, match="TensorRT fp32 engines for 96x128: mean mask IoU"):
        backend.prepare(SHAPE)
    assert not backend.cache.engine_path(backend.key(SHAPE, 4)).exists()
    assert backend.cache.manifest(backend.key(SHAPE, 1)) is not None  # valid entries stay
    assert [r["source"] for r in backend.records] == ["cache", "cache"]


def test_inaccurate_engines_are_kept_with_a_warning_when_asked(tiny_model, built_cache, tmp_path, caplog):
    root = _copy(built_cache, tmp_path)
    backend = _trt(tiny_model, root, FakeCompiler(negate=True), on_accuracy_failure="warn")
    backend.cache.manifest_path(backend.key(SHAPE, 4)).unlink()
    with caplog.at_level(logging.WARNING):
        backend.prepare(SHAPE)
    assert "kept because on_failure='warn'" in caplog.text
    assert backend.cache.manifest(backend.key(SHAPE, 4))["accuracy"]["mean_mask_iou"] < 0.5


def test_predictor_on_cached_engines(tiny_model, built_cache, test_image):
    """Predictor -> TensorRT backend -> exported programs reloaded from their .pt2 files, against eager (inference
    mode, bucketing, upsampling)."""
    backend = _trt(tiny_model, built_cache[0], FakeCompiler(), allow_build=False)
    predictor = Predictor(tiny_model, short_side=96, backend=backend)
    with pytest.raises(BackendError, match="96x160"):  # 48x80 -> 96x160: never built
        predictor.prepare((48, 80))
    image = np.ascontiguousarray(np.resize(test_image, (96, 128, 3)))
    predictor.set_image(image)  # 96x128: prebuilt
    assert [r["source"] for r in backend.records] == ["cache"] * 3
    for part, engine in backend._engines[SHAPE].items():
        path = backend.cache.engine_path(backend.key(SHAPE, part))
        assert path.suffix == ".pt2" and isinstance(torch.export.load(path), torch.export.ExportedProgram)
        assert isinstance(engine, torch.fx.GraphModule)  # the reloaded program, not the model's own module
        weights = {p.data_ptr() for p in tiny_model.parameters()}
        assert not weights & {t.data_ptr() for t in (*engine.parameters(), *engine.buffers())}
    points, boxes = [[10, 12], [50, 30]], [[30, 10, 70, 40]]
    pred = predictor.predict(points=points, boxes=boxes)  # 3 prompts: the 4-prompt engine
    reference = Predictor(tiny_model, short_side=96)
    reference.set_image(image)
    expected = reference.predict(points=points, boxes=boxes)
    np.testing.assert_allclose(pred.mask_logits, expected.mask_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pred.iou_scores, expected.iou_scores, rtol=1e-4, atol=1e-5)
    assert (pred.masks == expected.masks).mean() > 0.999


# ------------------------------------------------------------------------------------------------ GPU


def test_image_uploader_on_cpu_shares_memory():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    tensor = ImageUploader(CPU)(image)
    assert tensor.data_ptr() == image.ctypes.data


@pytest.mark.gpu
@needs_cuda
def test_pinned_upload_to_gpu():
    upload = ImageUploader(torch.device("cuda"))
    first = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    second = 255 - first
    a, b = upload(first), upload(second)
    assert upload._pinned.is_pinned() and a.is_cuda
    assert np.array_equal(a.cpu().numpy(), first) and np.array_equal(b.cpu().numpy(), second)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_decoder_equals_plain_eager(tiny_model):
    model = tiny_model.to("cuda")
    try:
        graphed = EagerBackend(model, "cuda", buckets=(1, 4))
        plain = EagerBackend(model, "cuda", cuda_graphs=False)
        assert graphed.cuda_graphs and graphed.static_prompts
        report = evaluate(plain, graphed, model.preprocess, SHAPE, torch.device("cuda"))
        assert report.mean_iou >= 0.999 and report.score_diff.max() < 1e-4
        assert all(type(fn).__name__ == "CudaGraphDecoder" for fn in graphed._bucket_fns.values())
    finally:
        tiny_model.to("cpu")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_low_precision_eager_accuracy(tiny_model, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bfloat16")
    model = tiny_model.to("cuda")
    try:
        report = evaluate(
            EagerBackend(model, "cuda"),
            EagerBackend(model, "cuda", precision),
            model.preprocess,
            SHAPE,
            torch.device("cuda"),
        )
        assert report.mean_iou >= 0.98, report.summary()
    finally:
        tiny_model.to("cpu")


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_real_tensorrt_engines_build_once(tiny_model, tmp_path):
    model = tiny_model.to("cuda")
    try:
        first = create_backend("tensorrt", model, "cuda", "fp16", cache_dir=tmp_path, buckets=(1, 8))
        first.prepare(SHAPE)
        assert [r["source"] for r in first.records] == ["built"] * 3
        assert first.accuracy[SHAPE].mean_iou >= 0.98
        second = create_backend(
            "tensorrt", model, "cuda", "fp16", cache_dir=tmp_path, buckets=(1, 8), allow_build=False
        )
        second.prepare(SHAPE)
        assert [r["source"] for r in second.records] == ["cache"] * 3
    finally:
        tiny_model.to("cpu")
