"""How a predictor is built: the one way the CLI, the ROS node and the bag tools load the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from semsam_ros.inference.predictor import Predictor


@dataclass(frozen=True)
class ModelOptions:
    """Checkpoint and how to run it (CLI: --checkpoint, --config, --device, --input-size, --backend, --precision;
    node: the parameters of the same names, ``input_size`` for ``short_side``)."""

    checkpoint: str | Path
    config: str | None = None  # swint, swinl, an official YAML; None: read from the checkpoint
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:N
    short_side: int = 640
    backend: str = "eager"
    precision: str = "fp32"
    cache_dir: str | Path | None = None  # TensorRT engine cache (None: the default one)


def resolve_device(name: str) -> Any:
    """torch.device of ``name`` ('auto': cuda when available, else cpu); ValueError when malformed or absent."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"bad device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available")
    return device


def load_predictor(options: ModelOptions) -> tuple[Predictor, str]:
    """(Predictor, model id) for ``options``. ValueError for a bad device or size, CheckpointError for unusable
    weights, BackendError when the backend cannot run here."""
    from semsam_ros.checkpoint import load_model
    from semsam_ros.inference.predictor import MIN_SHORT_SIDE, Predictor

    device = resolve_device(options.device)
    if options.short_side < MIN_SHORT_SIDE:  # before the (slow) load; the model's own minimum is checked after
        raise ValueError(f"the input size (short side) must be at least {MIN_SHORT_SIDE}, got {options.short_side}")
    model = load_model(options.checkpoint, options.config)
    predictor = Predictor(model, device=device, short_side=options.short_side, backend=options.backend,
                          precision=options.precision, cache_dir=options.cache_dir)
    return predictor, model.model_id
