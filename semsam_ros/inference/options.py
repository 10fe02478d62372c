"""How a predictor is built: the one way the CLI, the ROS node and the bag tools load the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semsam_ros.types import DEFAULT_MAX_LONG_SIDE

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
    max_long_side: int = DEFAULT_MAX_LONG_SIDE  # encoder input long side cap (limits.check_long_side)


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
    from semsam_ros.io.checkpoint import load_model
    from semsam_ros.inference.predictor import MIN_SHORT_SIDE, Predictor
    from semsam_ros.limits import check_long_side

    device = resolve_device(options.device)
    if options.short_side < MIN_SHORT_SIDE:  # before the (slow) load; the model's own minimum is checked after
        raise ValueError(f"the input size (short side) must be at least {MIN_SHORT_SIDE}, got {options.short_side}")
    check_long_side(1, 1, options.short_side, options.max_long_side)  # a square image must fit
    model = load_model(options.checkpoint, options.config)
    predictor = Predictor(model, device=device, short_side=options.short_side, backend=options.backend,
                          precision=options.precision, cache_dir=options.cache_dir,
                          max_long_side=options.max_long_side)
    check_finite_outputs(predictor)
    return predictor, model.model_id


def check_finite_outputs(predictor: Predictor, size: int = 128) -> None:
    """CheckpointError unless every weight is finite and a tiny forward pass (a grey ``size`` square, one click)
    gives finite logits and scores: a broken checkpoint is refused at load, not found in the first output."""
    import torch

    from semsam_ros.io.checkpoint import CheckpointError

    model = predictor.model
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"the checkpoint is broken: {len(bad)} weight tensor(s) hold NaN or inf values, "
                              f"e.g. {', '.join(bad[:3])}")
    with torch.inference_mode():
        image = torch.full((3, size, size), 128, dtype=torch.uint8, device=predictor.device)
        box = torch.tensor([[0.5, 0.5, 0.005, 0.005]], device=predictor.device)
        logits, scores = model(model.preprocess(image), box, torch.zeros(1, dtype=torch.long, device=box.device))
        finite = bool(torch.isfinite(logits).all()) and bool(torch.isfinite(scores).all())
    if not finite:
        raise CheckpointError("the model gives NaN or inf logits/scores on a plain grey image: the checkpoint (or "
                              "its config) is probably broken")
