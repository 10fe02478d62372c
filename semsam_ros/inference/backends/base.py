"""The backend interface and what every backend shares: static prompt buckets, CUDA graphs, the image upload.

A backend runs the model's two halves for the :class:`~semsam_ros.inference.predictor.Predictor`:

- ``image_encoder(images)``: (B, 3, Hp, Wp) normalised padded images -> (mask_features, values), batch first,
  kept in the backend's working precision; B is at most ``encoder_batch`` (None: any);
- ``prompt_decoder(boxes, pb, mask_features, values)`` -> mask logits (N, 6, Hp/4, Wp/4) and IoU scores (N, 6),
  always float32.

Static prompt counts: TensorRT engines and CUDA graphs have fixed shapes and ``torch.compile`` recompiles for each
new one, so those paths run the decoder at a few prompt-count buckets (default 1, 8, 64). A batch is padded up
to the next bucket with copies of its first prompt (prompts never attend to each other, so padding changes
nothing), larger batches are split, and the results are sliced back. On a CUDA device the bucketed decoders are
replayed from CUDA graphs.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...model.semantic_sam import SemanticSam
from ...types import DEFAULT_BUCKETS, PRECISIONS
from .precision import DTYPES

log = logging.getLogger(__name__)

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
    encoder_batch: int | None = None  # images per image_encoder call (None: any number)

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
