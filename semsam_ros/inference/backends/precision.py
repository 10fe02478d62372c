"""Low precision: ``torch.autocast`` with fp32 islands.

"fp32" runs the model as written. "fp16" / "bf16" run under ``torch.autocast``. Eager adds :class:`Fp32Islands`:
LayerNorm, GroupNorm, softmax and the deformable-attention sampling (``grid_sample``) get fp32 inputs and return
fp32 on every device. ``torch.compile`` gets autocast alone, because Dynamo does not trace a TorchFunctionMode
reliably: on CUDA autocast's own policy already runs LayerNorm, GroupNorm and softmax in fp32 and ``grid_sample``
in fp32 (its sampling locations are fp32, and it promotes to the widest input); on CPU autocast leaves norms and
softmax in the low precision. Torch-TensorRT compiles the fp32 graph with the low precision as a builder setting
(see :func:`~semsam_ros.inference.backends.tensorrt.tensorrt_precision_settings`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ...types import PRECISIONS

DTYPES: dict[str, torch.dtype] = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16)))
PRECISION_OF: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


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
