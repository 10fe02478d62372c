"""The TensorRT backend: export, compile, accuracy guard and engine cache.

Engines are built per padded input shape (the image encoder) and per prompt bucket (the prompt decoder) by a
compiler, checked against fp32 eager (:mod:`.accuracy`) and stored in the :class:`~.engine_cache.EngineCache`.
The default route, Torch-TensorRT, compiles ``torch.export`` programs of the fp32 model with the low precision as
a builder setting (:func:`tensorrt_precision_settings`) into ``.pt2`` archives; the ONNX route is
:mod:`.onnx_tensorrt`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import operator
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Protocol, Sequence

import torch
from torch import Tensor, nn

from ...io.hashing import tensors_sha256
from ...model.semantic_sam import SemanticSam
from ...types import ENGINE_ROUTES, MIN_MEAN_IOU
from .accuracy import AccuracyReport, check, evaluate
from .base import Backend, BackendError, DecoderFn, EncoderFn, Shape, decode_in_buckets, log_once
from .eager import EagerBackend
from .engine_cache import EngineCache, EngineKey
from .precision import with_precision

log = logging.getLogger(__name__)

TENSORRT_HINT = "pip install torch-tensorrt matching your torch version; on Jetson see docs/deployment.md"

SENSITIVE_ATEN_OPS = (
    "native_layer_norm.default",
    "layer_norm.default",
    "native_group_norm.default",
    "group_norm.default",
    "_softmax.default",
    "softmax.int",
    "grid_sampler_2d.default",
    "grid_sampler.default",
)


def _aten(name: str) -> Any:
    packet, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


def tensorrt_precision_settings(dtype: torch.dtype, compile_parameters: Collection[str]) -> dict[str, Any]:
    """Keyword arguments of ``torch_tensorrt.dynamo.compile`` for ``dtype``, given the names it accepts.

    Releases with rule-based autocast (``enable_autocast``; TensorRT >= 10.12 deprecates weak typing) get a
    strongly typed network with the low precision everywhere except :data:`SENSITIVE_ATEN_OPS`. Older ones
    (Torch-TensorRT 2.8 / TensorRT 10.3 on JetPack 6) get weak typing: ``enabled_precisions`` lets TensorRT pick
    the precision per layer, and its normalisation layers compute in fp32 by default. fp32 disables TF32.
    """
    strong = "enable_autocast" in compile_parameters
    if dtype is torch.float32:
        return {"disable_tf32": True, **({"use_explicit_typing": True} if strong else {"enabled_precisions": {dtype}})}
    if strong:
        return {
            "use_explicit_typing": True,
            "enable_autocast": True,
            "autocast_low_precision_type": dtype,
            "autocast_excluded_ops": {_aten(name) for name in SENSITIVE_ATEN_OPS},
        }
    return {"enabled_precisions": {dtype}}


def pytorch_ops(module: nn.Module) -> Counter[str]:
    """Operators of a compiled module that run in PyTorch rather than in an engine: ``call_function`` nodes of its
    FX graphs (recursing into FX submodules) other than ``getitem`` and TensorRT engine calls."""
    counts: Counter[str] = Counter()
    if not isinstance(module, torch.fx.GraphModule):
        return counts
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is not operator.getitem and "tensorrt" not in str(node.target):
            counts[str(node.target)] += 1
        elif node.op == "call_module":
            counts += pytorch_ops(module.get_submodule(str(node.target)))
    return counts


class EngineCompiler(Protocol):
    """What the TensorRT backend needs from a compiler: :class:`TorchTensorRTCompiler` (route "torch") or
    :class:`~.onnx_tensorrt.OnnxTensorRTCompiler` (route "onnx"). An engine is a callable of the part's inputs."""

    route: str

    def environment(self, device: torch.device) -> dict[str, str]:
        """EngineKey fields: torch, torch_tensorrt and tensorrt versions, gpu name, compute_capability."""

    def example_inputs(
        self, model: SemanticSam, shape: Shape, buckets: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> dict[int | None, tuple[Tensor, ...]]: ...

    def export(self, model: SemanticSam, part: int | None, inputs: tuple[Tensor, ...], dtype: torch.dtype) -> Any:
        """What :meth:`compile` builds from (a ``torch.export`` program, an ONNX file)."""

    def compile(self, exported: Any, inputs: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Any: ...

    def save(self, engine: Any, path: Path, inputs: Sequence[Tensor]) -> None: ...

    def load(self, path: Path) -> Any: ...


def gpu_environment(device: torch.device) -> dict[str, str]:
    """EngineKey fields of the GPU: its name and compute capability."""
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


class TorchTensorRTCompiler:
    """The Torch-TensorRT dynamo path: ``torch_tensorrt.dynamo.compile``, ``torch_tensorrt.save`` / ``load``.

    ``settings`` are extra keyword arguments for ``torch_tensorrt.dynamo.compile`` (e.g. ``optimization_level``,
    ``workspace_size``, ``min_block_size``). It compiles fp32 programs with the precision as a builder setting.
    """

    route = "torch"

    def __init__(self, **settings: Any) -> None:
        try:
            self.trt = importlib.import_module("torch_tensorrt")
        except Exception as exc:  # ImportError, or an ABI mismatch with this torch
            raise BackendError(
                f"torch_tensorrt cannot be imported ({type(exc).__name__}: {exc}); {TENSORRT_HINT}"
            ) from exc
        self.settings = settings

    def environment(self, device: torch.device) -> dict[str, str]:
        return {
            "torch": torch.__version__,
            "torch_tensorrt": self.trt.__version__,
            "tensorrt": importlib.import_module("tensorrt").__version__,
            **gpu_environment(device),
        }

    def example_inputs(
        self, model: SemanticSam, shape: Shape, buckets: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> dict[int | None, tuple[Tensor, ...]]:
        return example_inputs(model, shape, buckets, device)

    def export(
        self, model: SemanticSam, part: int | None, inputs: tuple[Tensor, ...], dtype: torch.dtype
    ) -> torch.export.ExportedProgram:
        return export_part(model, part, inputs)

    def compile(
        self, exported: torch.export.ExportedProgram, inputs: Sequence[Tensor], dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        parameters = inspect.signature(self.trt.dynamo.compile).parameters
        settings = {**tensorrt_precision_settings(dtype, parameters), **self.settings}
        return self.trt.dynamo.compile(exported, arg_inputs=list(inputs), device=device, **settings)

    def save(self, engine: nn.Module, path: Path, inputs: Sequence[Tensor]) -> None:
        self.trt.save(engine, str(path), output_format="exported_program", arg_inputs=list(inputs))

    def load(self, path: Path) -> nn.Module:
        return self.trt.load(str(path)).module()


def weights_digest(model: nn.Module) -> str:
    """The checkpoint's sha256 when the model was loaded from a file, else a sha256 of its state dict."""
    known = getattr(model, "weights_sha256", None)
    return str(known) if known else tensors_sha256(model.state_dict())


def model_code_digest() -> str:
    """sha256 (16 hex digits) of the model package's source: engines of older model code are not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(inspect.getfile(SemanticSam)).resolve().parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def example_inputs(
    model: SemanticSam, shape: Shape, buckets: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[int | None, tuple[Tensor, ...]]:
    """Inputs (ordinary tensors, not inference tensors) for exporting and compiling each part at padded ``shape``:
    the image encoder's under None, each prompt bucket's decoder's under its prompt count. The decoder gets the
    encoder's outputs as eager computes them at ``dtype`` (see :func:`~.precision.with_precision`)."""
    with torch.inference_mode(False), torch.no_grad():
        image = torch.zeros(1, 3, *shape, device=device)
        mask_features, values = with_precision(model.image_encoder, device.type, dtype)(image)
        examples: dict[int | None, tuple[Tensor, ...]] = {None: (image,)}
        for bucket in buckets:
            boxes = torch.full((bucket, 4), 0.5, device=device)
            examples[bucket] = (boxes, torch.zeros(bucket, dtype=torch.long, device=device), mask_features, values)
    return examples


def export_part(model: SemanticSam, part: int | None, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """The fp32 program that is compiled for ``part`` (None: the image encoder; a bucket: the prompt decoder)."""
    module = model.image_encoder if part is None else model.prompt_decoder
    with torch.inference_mode(False):
        return torch.export.export(module, inputs, strict=False)


class _Engines:
    """Runs one input shape's engines directly (no CUDA graphs, no preparation): the accuracy guard's candidate."""

    def __init__(self, engines: dict[int | None, nn.Module], buckets: Sequence[int]) -> None:
        self.engines, self.buckets = engines, buckets

    def image_encoder(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.engines[None](image)

    def prompt_decoder(self, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return decode_in_buckets(
            lambda bucket, b, p: self.engines[bucket](b, p, mask_features, values), self.buckets, boxes, pb
        )


class TensorRTBackend(Backend):
    """TensorRT engines: the encoder at each padded input shape, the decoder at each prompt bucket.

    ``engine_route`` "torch" builds them with Torch-TensorRT (``compiler`` default :class:`TorchTensorRTCompiler`),
    "onnx" from ONNX files with TensorRT's own builder (``compiler``: an :class:`~.onnx_tensorrt.OnnxTensorRTCompiler`,
    which :func:`~semsam_ros.inference.backends.create_backend` makes).

    Engines come from the :class:`EngineCache` when a valid entry exists; otherwise they are exported, compiled,
    checked against fp32 eager (:mod:`.accuracy`) and only then cached. ``allow_build=False``
    refuses to compile (a robot should use engines prebuilt with ``semsam build-engine``). ``records`` lists, per
    engine, whether it was built or loaded, how long that took, its file and size; ``accuracy`` holds the guard's
    report per shape built in this process.
    """

    name = "tensorrt"
    encoder_batch = 1  # engines are built for one image

    def __init__(
        self,
        model: SemanticSam,
        device: str | torch.device = "cuda",
        precision: str = "fp16",
        *,
        cache_dir: str | Path | None = None,
        engine_route: str = "torch",
        compiler: EngineCompiler | None = None,
        min_mean_iou: float = MIN_MEAN_IOU,
        on_accuracy_failure: str = "refuse",
        allow_build: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, device, precision, static_prompts=True, **options)
        if engine_route not in ENGINE_ROUTES:
            raise ValueError(f"engine_route must be one of {ENGINE_ROUTES}, got {engine_route!r}")
        if compiler is None and engine_route == "onnx":
            raise ValueError("engine_route='onnx' needs compiler=OnnxTensorRTCompiler(...) (create_backend makes one)")
        self.compiler = compiler if compiler is not None else TorchTensorRTCompiler()
        if self.compiler.route != engine_route:
            raise ValueError(f"engine_route {engine_route!r} but the compiler builds route {self.compiler.route!r}")
        self.cache = EngineCache(cache_dir)
        self.min_mean_iou = min_mean_iou
        self.on_accuracy_failure = on_accuracy_failure
        self.allow_build = allow_build
        self.records: list[dict[str, Any]] = []
        self.accuracy: dict[Shape, AccuracyReport] = {}
        self._engines: dict[Shape, dict[int | None, nn.Module]] = {}
        self._key_fields = {
            "weights_sha256": weights_digest(self.model),
            "model_code": model_code_digest(),
            "route": engine_route,
            **self.compiler.environment(self.device),
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine_route": self.compiler.route, "cache_dir": str(self.cache.root)}

    def key(self, shape: Shape, bucket: int | None) -> EngineKey:
        part = "encoder" if bucket is None else "decoder"
        return EngineKey(part=part, precision=self.precision, input_shape=shape, bucket=bucket, **self._key_fields)

    def _encoder(self, shape: Shape) -> EncoderFn:
        return self._engines[shape][None]

    def _decoder(self, shape: Shape, bucket: int | None) -> DecoderFn:
        return self._engines[shape][bucket]

    def _record(self, key: EngineKey, source: str, seconds: float) -> None:
        path = self.cache.engine_path(key)
        self.records.append(
            {
                "part": key.part,
                "bucket": key.bucket,
                "input_shape": list(key.input_shape),
                "precision": key.precision,
                "source": source,
                "seconds": round(seconds, 3),
                "path": str(path),
                "size_bytes": path.stat().st_size if path.exists() else None,
            }
        )

    def _build(self, shape: Shape) -> None:
        parts: list[int | None] = [None, *self.buckets]
        engines: dict[int | None, nn.Module] = {}
        for part in parts:
            start = time.perf_counter()
            engine = self.cache.lookup(self.key(shape, part), self.compiler.load)
            if engine is not None:
                engines[part] = engine
                self._record(self.key(shape, part), "cache", time.perf_counter() - start)
        missing = [p for p in parts if p not in engines]
        if missing and not self.allow_build:
            raise BackendError(
                f"no valid cached TensorRT engine for {shape[0]}x{shape[1]} {self.precision} in {self.cache.root} and "
                f"allow_build=False; prebuild with: semsam build-engine --checkpoint CKPT --precision {self.precision} "
                f"--input-size {shape[0]}x{shape[1]} --route {self.compiler.route} --cache-dir {self.cache.root}"
            )
        built: dict[int | None, tuple[float, tuple[Tensor, ...]]] = {}
        if missing:
            examples = self.compiler.example_inputs(self.model, shape, self.buckets, self.dtype, self.device)
            for i, part in enumerate(missing, 1):
                what = "image encoder" if part is None else f"prompt decoder, {part} prompts"
                log.info(
                    "TensorRT [%d/%d]: building %s at %dx%d, %s ...", i, len(missing), what, *shape, self.precision
                )
                start = time.perf_counter()
                with torch.inference_mode(False):
                    exported = self.compiler.export(self.model, part, examples[part], self.dtype)
                    engines[part] = self.compiler.compile(exported, examples[part], self.dtype, self.device)
                built[part] = (time.perf_counter() - start, examples[part])
                log.info("TensorRT [%d/%d]: built in %.1f s", i, len(missing), built[part][0])
        for part, engine in engines.items():
            ops = pytorch_ops(engine)
            if ops:
                listed = ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
                what = "image encoder" if part is None else f"{part}-prompt decoder"
                log_once(
                    logging.WARNING,
                    f"TensorRT {what} ({self.precision}): {sum(ops.values())} ops run in PyTorch: {listed}",
                )
        if not built:
            self._engines[shape] = engines
            return
        report = evaluate(
            EagerBackend(self.model, self.device, "fp32", cuda_graphs=False),
            _Engines(engines, self.buckets),
            self.model.preprocess,
            shape,
            self.device,
        )
        self.accuracy[shape] = report
        log.info("TensorRT %dx%d %s accuracy against fp32 eager: %s", *shape, self.precision, report.summary())
        check(
            report,
            f"TensorRT {self.precision} engines for {shape[0]}x{shape[1]}",
            self.min_mean_iou,
            self.on_accuracy_failure,
        )
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for part, (seconds, inputs) in built.items():
            key = self.key(shape, part)
            info = {"build_seconds": round(seconds, 3), "created": created, "accuracy": report.summary()}
            self.cache.store(key, functools.partial(self.compiler.save, engines[part], inputs=inputs), info)
            self._record(key, "built", seconds)
        self._engines[shape] = engines
