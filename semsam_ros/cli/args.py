"""What every command shares: UserError, argument types, the model options and the predictor they build."""
from __future__ import annotations

import argparse
import math
from typing import Any

from semsam_ros.inference.options import ModelOptions
from semsam_ros.types import BACKENDS, DEFAULT_MAX_LONG_SIDE, LEVELS, PRECISIONS


class UserError(Exception):
    """A mistake of the user (missing file, bad image, prompt outside the image, wrong checkpoint...)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float]:
    """'X,Y' in pixels."""
    x, y = _numbers(text, 2, "a point (X,Y)")
    return x, y


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'X0,Y0,X1,Y1' in pixels."""
    x0, y0, x1, y1 = _numbers(text, 4, "a box (X0,Y0,X1,Y1)")
    return x0, y0, x1, y1


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,3,6': distinct granularity levels among 1..6."""
    try:
        levels = tuple(int(v) for v in text.split(","))
    except ValueError:
        levels = ()
    if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVELS):
        raise argparse.ArgumentTypeError(f"levels must be distinct numbers among 1..6 like 1,3,6, got {text!r}")
    return levels


def parse_size(text: str) -> tuple[int, int]:
    """ "640x960" -> (640, 960)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 640x960, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def parse_buckets(text: str) -> tuple[int, ...]:
    """ "1,8,64" -> (1, 8, 64)."""
    try:
        buckets = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated prompt counts such as 1,8,64, got {text!r}"
        ) from None
    if not buckets or buckets[0] < 1:
        raise argparse.ArgumentTypeError(f"prompt counts must be positive, got {text!r}")
    return buckets


def padded_size(size: tuple[int, int], divisibility: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``divisibility``: the model input after padding."""
    return (-(-size[0] // divisibility) * divisibility, -(-size[1] // divisibility) * divisibility)


def add_prompt_arguments(parser: argparse.ArgumentParser, point_help: str, box_help: str) -> None:
    """--point X,Y and --box X0,Y0,X1,Y1, each repeatable (lists, empty by default)."""
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y", help=point_help)
    parser.add_argument("--box", type=parse_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help=box_help)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --config, --device, --input-size, --max-long-side, --backend, --precision (read by
    :func:`model_options`)."""
    parser.add_argument("--checkpoint", required=True, help="official .pth or converted .safetensors")
    parser.add_argument("--config", help="swint, swinl or an official YAML (default: read from the checkpoint)")
    parser.add_argument("--device", default="auto",
                        help="torch device, e.g. cpu, cuda or cuda:1; auto: cuda when available (default: auto)")
    parser.add_argument("--input-size", type=int, default=640, help="short side the model sees (default: 640)")
    parser.add_argument("--max-long-side", type=int, default=DEFAULT_MAX_LONG_SIDE,
                        help="refuse images whose long side at --input-size would exceed this "
                             f"(extreme aspect ratios; default: {DEFAULT_MAX_LONG_SIDE})")
    parser.add_argument("--backend", choices=BACKENDS, default="eager",
                        help="how the model runs (default: eager); tensorrt engines are cached, see docs/deployment.md")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default: fp32)")


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The ModelOptions of the :func:`add_model_arguments` options."""
    return ModelOptions(args.checkpoint, args.config, args.device, args.input_size, args.backend, args.precision,
                        max_long_side=args.max_long_side)


def device(args: argparse.Namespace) -> Any:
    """torch.device of --device; UserError when it is malformed or not available."""
    from semsam_ros.inference.options import resolve_device

    try:
        return resolve_device(args.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_predictor(args: argparse.Namespace) -> tuple[Any, str]:
    """(Predictor, model id) for the :func:`add_model_arguments` options; UserError when they are wrong."""
    from semsam_ros.io.checkpoint import CheckpointError
    from semsam_ros.inference import options
    from semsam_ros.inference.backends import BackendError

    try:
        return options.load_predictor(model_options(args))
    except (CheckpointError, BackendError, ValueError) as exc:
        raise UserError(str(exc)) from None
