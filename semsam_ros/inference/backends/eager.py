"""PyTorch backends: eager (autocast + fp32 islands for fp16 / bf16) and ``torch.compile``."""
from __future__ import annotations

from typing import Any

import torch

from ...model.semantic_sam import SemanticSam
from .base import Backend, DecoderFn, EncoderFn, Shape
from .precision import with_precision


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
    :mod:`.precision`). ``mode`` and ``compiler`` are ``torch.compile``'s ``mode`` and ``backend``."""

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
