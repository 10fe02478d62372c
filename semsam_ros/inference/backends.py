"""Inference backends behind one interface: eager PyTorch, ``torch.compile`` and Torch-TensorRT.

A backend runs the model's two halves for the :class:`~semsam_ros.inference.predictor.Predictor`:

- ``image_encoder(image)``: (1, 3, Hp, Wp) normalised padded image -> (mask_features, values), kept in the
  backend's working precision;
- ``prompt_decoder(boxes, pb, mask_features, values)`` -> mask logits (N, 6, Hp/4, Wp/4) and IoU scores (N, 6),
  always float32.

Precision: "fp32" runs the model as written. "fp16" / "bf16" run under ``torch.autocast``. Eager adds
:class:`Fp32Islands`: LayerNorm, GroupNorm, softmax and the deformable-attention sampling (``grid_sample``) get
fp32 inputs and return fp32 on every device. ``torch.compile`` gets autocast alone, because Dynamo does not trace
a TorchFunctionMode reliably: on CUDA autocast's own policy already runs LayerNorm, GroupNorm and softmax in fp32
and ``grid_sample`` in fp32 (its sampling locations are fp32, and it promotes to the widest input); on CPU
autocast leaves norms and softmax in the low precision. Torch-TensorRT compiles the fp32 graph with the low
precision as a builder setting (see :func:`tensorrt_precision_settings`).

Static prompt counts: TensorRT engines and CUDA graphs have fixed shapes and ``torch.compile`` recompiles for each
new one, so those paths run the decoder at a few prompt-count buckets (default 1, 8, 64). A batch is padded up
to the next bucket with copies of its first prompt (prompts never attend to each other, so padding changes
nothing), larger batches are split, and the results are sliced back. On a CUDA device the bucketed decoders are
replayed from CUDA graphs.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import operator
import time
import weakref
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..model.semantic_sam import SemanticSam
from ..types import BACKENDS, DEFAULT_BUCKETS, MIN_MEAN_IOU, PRECISIONS
from .accuracy import AccuracyReport, check, evaluate
from .engine_cache import EngineCache, EngineKey

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16)))
TENSORRT_HINT = "pip install torch-tensorrt matching your torch version; on Jetson see docs/deployment.md"

Shape = tuple[int, int]
EncoderFn = Callable[[Tensor], tuple[Tensor, Tensor]]
DecoderFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

_logged: set[str] = set()


def log_once(level: int, message: str) -> None:
    """Log ``message`` the first time it occurs in this process."""
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


class BackendError(RuntimeError):
    """The requested backend cannot run here (missing package, device or precision support, no engine)."""


# --------------------------------------------------------------------------------------------- precision


def _to_fp32(x: Any) -> Any:
    return x.float() if isinstance(x, Tensor) and x.is_floating_point() else x


class Fp32Islands(TorchFunctionMode):
    """Inside autocast: LayerNorm, GroupNorm, softmax and ``grid_sample`` run on fp32 inputs and return fp32.

    Everything else follows autocast (matmuls and convolutions in the low precision). With fp32 inputs this mode
    changes nothing, so the model code needs no casts.
    """

    FUNCTIONS = frozenset({F.layer_norm, F.group_norm, F.softmax, torch.softmax, Tensor.softmax, F.grid_sample})

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.FUNCTIONS:
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def with_precision(
    fn: Callable[..., Any], device_type: str, dtype: torch.dtype, islands: bool = True
) -> Callable[..., Any]:
    """``fn`` itself for fp32; otherwise ``fn`` run under autocast to ``dtype`` (with :class:`Fp32Islands`
    unless ``islands`` is False). The autocast weight cache is off: it must not outlive a CUDA graph capture."""
    if dtype is torch.float32:
        return fn
    if not islands:

        def run_autocast(*args: Any) -> Any:
            with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
                return fn(*args)

        return run_autocast

    def run(*args: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False), Fp32Islands():
            return fn(*args)

    return run


# --------------------------------------------------------------------------------------------- buckets


def bucket_plan(count: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, size, bucket) chunks covering ``count`` prompts: as many largest buckets as needed, then the rest
    in the smallest bucket that holds it."""
    largest, plan, start = max(buckets), [], 0
    while count - start > largest:
        plan.append((start, largest, largest))
        start += largest
    if count > start:
        rest = count - start
        plan.append((start, rest, min(b for b in buckets if b >= rest)))
    return plan


def pad_prompts(boxes: Tensor, pb: Tensor, bucket: int) -> tuple[Tensor, Tensor]:
    """Pad (n, 4) boxes and (n,) prompt types to ``bucket`` rows with copies of the first prompt."""
    extra = bucket - len(boxes)
    if extra == 0:
        return boxes, pb
    return torch.cat([boxes, boxes[:1].expand(extra, -1)]), torch.cat([pb, pb[:1].expand(extra)])


def decode_in_buckets(
    run_bucket: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]],
    buckets: Sequence[int],
    boxes: Tensor,
    pb: Tensor,
) -> tuple[Tensor, Tensor]:
    """Decode ``boxes`` through ``run_bucket(bucket, boxes, pb)`` at static prompt counts; float32 results in
    prompt order (copies, so static output buffers may be reused by the next call)."""
    logits, ious = [], []
    for start, size, bucket in bucket_plan(len(boxes), buckets):
        lg, io = run_bucket(bucket, *pad_prompts(boxes[start : start + size], pb[start : start + size], bucket))
        logits.append(lg[:size].to(torch.float32, copy=True))
        ious.append(io[:size].to(torch.float32, copy=True))
    if len(logits) == 1:
        return logits[0], ious[0]
    return torch.cat(logits), torch.cat(ious)


# --------------------------------------------------------------------------------------------- CUDA graphs


class GraphInputs:
    """Static device copies of one image's decoder inputs, shared by the CUDA graphs of one input shape.

    ``load`` copies a new embedding in; the embedding last loaded is recognised by identity (embeddings are never
    modified in place), so decoding many prompt batches against one image copies its features once.
    """

    def __init__(self, mask_features: Tensor, values: Tensor) -> None:
        self.mask_features = mask_features.clone()
        self.values = values.clone()
        self._source = (weakref.ref(mask_features), weakref.ref(values))

    def load(self, mask_features: Tensor, values: Tensor) -> None:
        if self._source[0]() is mask_features and self._source[1]() is values:
            return
        self.mask_features.copy_(mask_features)
        self.values.copy_(values)
        self._source = (weakref.ref(mask_features), weakref.ref(values))


class CudaGraphDecoder:
    """One decoder bucket replayed from a CUDA graph. Returns the graph's static outputs: copy them before the
    next replay of any graph in the same pool (:func:`decode_in_buckets` does)."""

    def __init__(self, decoder: DecoderFn, boxes: Tensor, pb: Tensor, inputs: GraphInputs, pool: Any) -> None:
        self.boxes, self.pb, self.inputs = boxes.clone(), pb.clone(), inputs
        args = (self.boxes, self.pb, inputs.mask_features, inputs.values)
        side = torch.cuda.Stream(device=self.boxes.device)
        side.wait_stream(torch.cuda.current_stream(self.boxes.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture: library handles, autotuning, lazy compilation
                decoder(*args)
        torch.cuda.current_stream(self.boxes.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = decoder(*args)

    def __call__(self, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        self.inputs.load(mask_features, values)
        self.boxes.copy_(boxes)
        self.pb.copy_(pb)
        self.graph.replay()
        return self.outputs


# --------------------------------------------------------------------------------------------- upload


class ImageUploader:
    """HxWx3 uint8 host image -> tensor on ``device``. On CUDA it is staged in a reused pinned buffer and copied
    without blocking the host; the next upload waits for that copy before overwriting the buffer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned: Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, image: np.ndarray) -> Tensor:
        host = torch.from_numpy(image)
        if self.device.type != "cuda":
            return host.to(self.device)
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()
        self._pinned.copy_(host)
        out = self._pinned.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return out


# --------------------------------------------------------------------------------------------- backends


class Backend:
    """Runs the image encoder and the prompt decoder of ``model`` on ``device`` at ``precision``.

    Subclasses provide ``_encoder(shape)`` and ``_decoder(shape, bucket)`` (bucket None: any prompt count) and may
    build things per padded input shape in ``_build(shape)``. :meth:`prepare` does that ahead of the first frame,
    and on the static-prompt path also compiles or captures every bucket. Not thread-safe (CUDA graphs replay into
    shared static buffers): use one backend per thread.
    """

    name = "base"

    def __init__(
        self,
        model: SemanticSam,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        cuda_graphs: bool | None = None,
        static_prompts: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if not buckets or any(int(b) < 1 for b in buckets):
            raise ValueError(f"buckets must be positive prompt counts, got {list(buckets)}")
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {self.device}")
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.static_prompts = static_prompts or self.cuda_graphs
        self._prepared: set[Shape] = set()
        self._bucket_fns: dict[tuple[Shape, int], DecoderFn] = {}
        self._graph_inputs: dict[Shape, GraphInputs] = {}
        self._graph_pool: Any = None

    def _encoder(self, shape: Shape) -> EncoderFn:
        raise NotImplementedError

    def _decoder(self, shape: Shape, bucket: int | None) -> DecoderFn:
        raise NotImplementedError

    def _build(self, shape: Shape) -> None:
        """Per-shape work before the first run (nothing by default)."""

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "device": str(self.device),
            "buckets": list(self.buckets) if self.static_prompts else None,
            "cuda_graphs": self.cuda_graphs,
        }

    def prepare(self, shape: Shape) -> None:
        """Build or load everything needed for padded inputs of ``shape`` (H, W); idempotent."""
        shape = (int(shape[0]), int(shape[1]))
        if shape in self._prepared:
            return
        self._build(shape)
        self._prepared.add(shape)
        if not self.static_prompts:
            return
        try:
            with torch.inference_mode():
                mask_features, values = self.image_encoder(torch.zeros(1, 3, *shape, device=self.device))
                for bucket in self.buckets:
                    boxes = torch.full((bucket, 4), 0.5, device=self.device)
                    self.prompt_decoder(
                        boxes, torch.zeros(bucket, dtype=torch.long, device=self.device), mask_features, values
                    )
        except BaseException:
            self._prepared.discard(shape)
            raise

    def image_encoder(self, image: Tensor) -> tuple[Tensor, Tensor]:
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        self.prepare(shape)
        return self._encoder(shape)(image)

    def prompt_decoder(self, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        shape = (4 * int(mask_features.shape[-2]), 4 * int(mask_features.shape[-1]))
        self.prepare(shape)
        if not self.static_prompts:
            logits, ious = self._decoder(shape, None)(boxes, pb, mask_features, values)
            return logits.float(), ious.float()

        def run_bucket(bucket: int, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
            fn = self._bucket_fns.get((shape, bucket))
            if fn is None:
                fn = self._decoder(shape, bucket)
                if self.cuda_graphs:
                    fn = self._capture(shape, bucket, fn, b, p, mask_features, values)
                self._bucket_fns[(shape, bucket)] = fn
            return fn(b, p, mask_features, values)

        return decode_in_buckets(run_bucket, self.buckets, boxes, pb)

    def _capture(
        self, shape: Shape, bucket: int, fn: DecoderFn, boxes: Tensor, pb: Tensor, mask_features: Tensor, values: Tensor
    ) -> DecoderFn:
        if shape not in self._graph_inputs:
            self._graph_inputs[shape] = GraphInputs(mask_features, values)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        try:
            return CudaGraphDecoder(fn, boxes, pb, self._graph_inputs[shape], self._graph_pool)
        except Exception as exc:  # capture support differs between PyTorch kernels, Inductor and TensorRT
            log_once(
                logging.WARNING,
                f"{self.name}: CUDA graph capture of the {bucket}-prompt decoder failed "
                f"({type(exc).__name__}: {exc}); running it without a graph",
            )
            return fn


class EagerBackend(Backend):
    """The PyTorch modules as they are (autocast + fp32 islands for fp16 / bf16)."""

    name = "eager"

    def __init__(
        self, model: SemanticSam, device: str | torch.device = "cpu", precision: str = "fp32", **options: Any
    ) -> None:
        super().__init__(model, device, precision, **options)
        self._encode = with_precision(self.model.image_encoder, self.device.type, self.dtype)
        self._decode = with_precision(self.model.prompt_decoder, self.device.type, self.dtype)

    def _encoder(self, shape: Shape) -> EncoderFn:
        return self._encode

    def _decoder(self, shape: Shape, bucket: int | None) -> DecoderFn:
        return self._decode


class CompileBackend(Backend):
    """``torch.compile`` of both halves with static shapes: one graph per input shape and prompt bucket (mind
    Dynamo's recompile limit, 8 by default, when serving many image sizes). Low precision is plain autocast (see
    the module docstring). ``mode`` and ``compiler`` are ``torch.compile``'s ``mode`` and ``backend``."""

    name = "compile"

    def __init__(
        self,
        model: SemanticSam,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        *,
        mode: str | None = None,
        compiler: str = "inductor",
        **options: Any,
    ) -> None:
        super().__init__(model, device, precision, static_prompts=True, **options)
        encode = with_precision(self.model.image_encoder, self.device.type, self.dtype, islands=False)
        decode = with_precision(self.model.prompt_decoder, self.device.type, self.dtype, islands=False)
        self._encode = torch.compile(encode, dynamic=False, mode=mode, backend=compiler)
        self._decode = torch.compile(decode, dynamic=False, mode=mode, backend=compiler)

    def _encoder(self, shape: Shape) -> EncoderFn:
        return self._encode

    def _decoder(self, shape: Shape, bucket: int | None) -> DecoderFn:
        return self._decode


# --------------------------------------------------------------------------------------------- TensorRT

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
    """What the TensorRT backend needs from a compiler; tests substitute one that needs no GPU."""

    def environment(self, device: torch.device) -> dict[str, str]:
        """EngineKey fields: torch, torch_tensorrt and tensorrt versions, gpu name, compute_capability."""

    def compile(
        self, exported: torch.export.ExportedProgram, inputs: Sequence[Tensor], dtype: torch.dtype, device: torch.device
    ) -> nn.Module: ...

    def save(self, engine: nn.Module, path: Path, inputs: Sequence[Tensor]) -> None: ...

    def load(self, path: Path) -> nn.Module: ...


class TorchTensorRTCompiler:
    """The Torch-TensorRT dynamo path: ``torch_tensorrt.dynamo.compile``, ``torch_tensorrt.save`` / ``load``.

    ``settings`` are extra keyword arguments for ``torch_tensorrt.dynamo.compile`` (e.g. ``optimization_level``,
    ``workspace_size``, ``min_block_size``).
    """

    def __init__(self, **settings: Any) -> None:
        try:
            self.trt = importlib.import_module("torch_tensorrt")
        except Exception as exc:  # ImportError, or an ABI mismatch with this torch
            raise BackendError(
                f"torch_tensorrt cannot be imported ({type(exc).__name__}: {exc}); {TENSORRT_HINT}"
            ) from exc
        self.settings = settings

    def environment(self, device: torch.device) -> dict[str, str]:
        props = torch.cuda.get_device_properties(device)
        return {
            "torch": torch.__version__,
            "torch_tensorrt": self.trt.__version__,
            "tensorrt": importlib.import_module("tensorrt").__version__,
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
        }

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
    if known:
        return str(known)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_code_digest() -> str:
    """sha256 (16 hex digits) of the model package's source: engines of older model code are not reused."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "model").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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
    """Torch-TensorRT engines: the encoder at each padded input shape, the decoder at each prompt bucket.

    Engines come from the :class:`EngineCache` when a valid entry exists; otherwise they are exported, compiled,
    checked against fp32 eager (:mod:`~semsam_ros.inference.accuracy`) and only then cached. ``allow_build=False``
    refuses to compile (a robot should use engines prebuilt with ``semsam build-engine``). ``records`` lists, per
    engine, whether it was built or loaded, how long that took, its file and size; ``accuracy`` holds the guard's
    report per shape built in this process.
    """

    name = "tensorrt"

    def __init__(
        self,
        model: SemanticSam,
        device: str | torch.device = "cuda",
        precision: str = "fp16",
        *,
        cache_dir: str | Path | None = None,
        compiler: EngineCompiler | None = None,
        min_mean_iou: float = MIN_MEAN_IOU,
        on_accuracy_failure: str = "refuse",
        allow_build: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, device, precision, static_prompts=True, **options)
        self.compiler = compiler if compiler is not None else TorchTensorRTCompiler()
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
            **self.compiler.environment(self.device),
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cache_dir": str(self.cache.root)}

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
                f"--input-size {shape[0]}x{shape[1]} --cache-dir {self.cache.root}"
            )
        built: dict[int | None, tuple[float, tuple[Tensor, ...]]] = {}
        if missing:
            examples = self._examples(shape)
            for i, part in enumerate(missing, 1):
                what = "image encoder" if part is None else f"prompt decoder, {part} prompts"
                log.info(
                    "TensorRT [%d/%d]: building %s at %dx%d, %s ...", i, len(missing), what, *shape, self.precision
                )
                start = time.perf_counter()
                module = self.model.image_encoder if part is None else self.model.prompt_decoder
                with torch.inference_mode(False):
                    exported = torch.export.export(module, examples[part], strict=False)
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

    def _examples(self, shape: Shape) -> dict[int | None, tuple[Tensor, ...]]:
        """Example inputs (ordinary tensors, not inference tensors) for exporting and compiling each part."""
        with torch.inference_mode(False), torch.no_grad():
            image = torch.zeros(1, 3, *shape, device=self.device)
            mask_features, values = self.model.image_encoder(image)
            examples: dict[int | None, tuple[Tensor, ...]] = {None: (image,)}
            for bucket in self.buckets:
                boxes = torch.full((bucket, 4), 0.5, device=self.device)
                examples[bucket] = (
                    boxes,
                    torch.zeros(bucket, dtype=torch.long, device=self.device),
                    mask_features,
                    values,
                )
        return examples


# --------------------------------------------------------------------------------------------- selection


def backend_problems(name: str, device: torch.device, precision: str) -> list[str]:
    """Why backend ``name`` at ``precision`` cannot run on ``device`` (empty when it can)."""
    problems = []
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if device.type == "cuda" and not cuda:
        problems.append(f"CUDA is not available (torch {torch.__version__}, no usable GPU)")
    if name == "tensorrt":
        if device.type != "cuda":
            problems.append(f"Torch-TensorRT needs a CUDA device, got {device}")
        try:
            importlib.import_module("torch_tensorrt")
        except Exception as exc:
            problems.append(f"torch_tensorrt cannot be imported ({type(exc).__name__}: {exc}); {TENSORRT_HINT}")
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
    class: ``buckets``, ``cuda_graphs`` for all; ``mode``, ``compiler`` for compile; ``cache_dir``,
    ``min_mean_iou``, ``on_accuracy_failure``, ``allow_build``, ``compiler`` for tensorrt.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    problems = backend_problems(name, device, precision)
    if problems:
        message = f"backend {name!r} ({precision}) cannot run on {device}: " + "; ".join(problems)
        if not fallback:
            raise BackendError(message)
        eager_precision = "fp32" if backend_problems("eager", device, precision) else precision
        log.warning("%s; falling back to the eager backend (%s)", message, eager_precision)
        common = {k: v for k, v in options.items() if k in ("buckets", "cuda_graphs")}
        return EagerBackend(model, device, eager_precision, **common)
    classes: dict[str, type[Backend]] = {"eager": EagerBackend, "compile": CompileBackend, "tensorrt": TensorRTBackend}
    return classes[name](model, device, precision, **options)
