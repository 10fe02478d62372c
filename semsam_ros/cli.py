"""The ``semsam`` command: segment, auto, info, convert, download, bag, bag-info (see docs/cli.md, docs/bag.md).

A subcommand is a ``Subcommand(help, add_arguments, run)`` entry of ``subcommands()``. ``run`` returns the exit
status and raises ``UserError`` for a user mistake, which ``main`` prints as one line ``semsam: error: ...``
(exit status 1; command-line syntax errors exit with 2). Modules import their heavy dependencies (torch, the
model) inside ``run`` so that ``semsam --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np

LEVEL_CHOICES = (1, 2, 3, 4, 5, 6)


class UserError(Exception):
    """A mistake of the user (missing file, bad image, prompt outside the image, wrong checkpoint...)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UserErrors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise UserError(f"{command}: {message}" if command else message, 2)


# argument types ----------------------------------------------------------------------------------------------


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
    if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVEL_CHOICES):
        raise argparse.ArgumentTypeError(f"levels must be distinct numbers among 1..6 like 1,3,6, got {text!r}")
    return levels


# shared steps -------------------------------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file (EXIF orientation not applied, alpha dropped, as the official code)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="official .pth or converted .safetensors")
    parser.add_argument("--config", help="swint, swinl or an official YAML (default: read from the checkpoint)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--input-size", type=int, default=640, help="short side the model sees (default: 640)")
    parser.add_argument("--levels", type=parse_levels, default=LEVEL_CHOICES,
                        help="granularity levels, 1 (coarse) .. 6 (fine), e.g. 1,3,6 (default: all)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def load_predictor(args: argparse.Namespace) -> Any:
    """semsam_ros.Predictor for --checkpoint/--config/--device/--input-size; UserError when they are wrong."""
    import torch

    from semsam_ros.checkpoint import CheckpointError, load_model
    from semsam_ros.inference.predictor import Predictor

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available")
    if args.input_size < 32:
        raise UserError(f"--input-size must be at least 32, got {args.input_size}")
    try:
        model = load_model(args.checkpoint, args.config)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return Predictor(model, device=device, input_size=args.input_size)


def one_line(message: str, limit: int = 300) -> str:
    """A message on one line of at most ``limit`` characters (long checkpoint reports are cut with "...")."""
    text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 4].rstrip() + " ..."


def _steps(total: int, desc: str, quiet: bool) -> Any:
    """A tqdm bar over the steps of a command; it only appears after one second."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", delay=1.0, disable=quiet, leave=False)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# segment -------------------------------------------------------------------------------------------------------


def _segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (any format PIL reads)")
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y",
                        help="a click in pixels; repeat for more prompts")
    parser.add_argument("--box", type=parse_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="a box in pixels; repeat for more prompts")
    _model_arguments(parser)
    parser.add_argument("--iou-threshold", type=float, default=0.5,
                        help="drop masks whose IoU score (rounded to 2 decimals) is below (default: 0.5)")
    parser.add_argument("--dedupe-iou", type=float, default=0.95,
                        help="drop masks overlapping a kept one above this IoU (default: 0.95)")
    parser.add_argument("--hole-area", type=int, default=100, help="fill holes smaller than this (default: 100)")
    parser.add_argument("--island-area", type=int, default=100,
                        help="remove islands smaller than this (default: 100)")
    parser.add_argument("--sort", choices=("score", "area"), default="score",
                        help="segment order: descending score or ascending area (default: score)")


def _run_segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt
    from semsam_ros.inference.predictor import prompts_to_boxes
    from semsam_ros.inference.render import render_level_grid, render_overlay

    image = read_image(args.image)
    if not args.point and not args.box:
        raise UserError("give at least one prompt: --point X,Y or --box X0,Y0,X1,Y1")
    height, width = image.shape[:2]
    try:
        prompts_to_boxes(args.point or None, args.box or None, height, width)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    params = PostprocessParams(iou_threshold=args.iou_threshold, dedupe_iou=args.dedupe_iou,
                               hole_area=args.hole_area, island_area=args.island_area, sort=args.sort)
    with _steps(4, "semsam segment", args.quiet) as bar:
        predictor = load_predictor(args)
        bar.update()
        predictor.set_image(image)
        bar.update()
        pred = predictor.predict(points=args.point or None, boxes=args.box or None)
        bar.update()
        args.out.mkdir(parents=True, exist_ok=True)
        columns = [level - 1 for level in args.levels]
        prompts = [{"id": i, "point": list(p)} for i, p in enumerate(args.point)]
        prompts += [{"id": len(prompts) + i, "box": list(b)} for i, b in enumerate(args.box)]
        for i, prompt in enumerate(prompts):
            point = tuple(prompt["point"]) if "point" in prompt else None
            segments = postprocess_prompt(pred.mask_logits[i, columns], pred.iou_scores[i, columns], params,
                                          prompt_id=i, point=point, levels=args.levels)
            markers = {"points": [point]} if point else {"boxes": [prompt["box"]]}
            prompt.update(overlay=f"prompt{i}_overlay.png", level_grid=f"prompt{i}_levels.png", segments=[])
            Image.fromarray(render_overlay(image, segments, **markers)).save(args.out / prompt["overlay"])
            grid = render_level_grid(image, segments, args.levels, **markers)
            Image.fromarray(grid).save(args.out / prompt["level_grid"])
            for seg in segments:
                name = f"prompt{i}_level{seg.level}.png"
                Image.fromarray(seg.mask.astype(np.uint8) * 255).save(args.out / name)
                prompt["segments"].append({
                    "level": seg.level, "iou_score": seg.iou_score, "area": seg.area, "raw_area": seg.raw_area,
                    "bbox": list(seg.bbox), "centroid": [_finite(c) for c in seg.centroid], "mask": name,
                })
        summary = {
            "image": str(args.image), "image_size": [height, width], "checkpoint": str(args.checkpoint),
            "model_id": predictor.model.model_id, "levels": list(args.levels),
            "postprocess": asdict(params), "prompts": prompts,
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        bar.update()
    kept = sum(len(p["segments"]) for p in prompts)
    print(f"{len(prompts)} prompt(s), {kept} mask(s) kept; wrote {args.out / 'summary.json'}")
    return 0


# auto ----------------------------------------------------------------------------------------------------------


def _auto_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (any format PIL reads)")
    _model_arguments(parser)
    parser.add_argument("--points-per-side", type=int, default=32, help="grid of N x N clicks (default: 32)")
    parser.add_argument("--points-per-batch", type=int, default=64, help="clicks decoded at once (default: 64)")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="(default: 0.88)")
    parser.add_argument("--stability-score-thresh", type=float, default=0.92, help="(default: 0.92)")
    parser.add_argument("--box-nms-thresh", type=float, default=0.7, help="(default: 0.7)")
    parser.add_argument("--min-mask-region-area", type=int, default=10, help="(default: 10; 0 disables)")
    parser.add_argument("--crop-n-layers", type=int, default=0, help="extra layers of image crops (default: 0)")


def _run_auto(args: argparse.Namespace) -> int:
    from PIL import Image

    from semsam_ros.inference.amg import AutomaticMaskGenerator
    from semsam_ros.inference.postprocess import rle_to_mask
    from semsam_ros.inference.render import render_overlay
    from semsam_ros.inference.segments import make_segment

    image = read_image(args.image)
    with _steps(1, "semsam auto: load model", args.quiet) as bar:
        predictor = load_predictor(args)
        bar.update()
    try:
        generator = AutomaticMaskGenerator(
            predictor, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            levels=args.levels, pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh, box_nms_thresh=args.box_nms_thresh,
            min_mask_region_area=args.min_mask_region_area, crop_n_layers=args.crop_n_layers,
            output_mode="coco_rle", progress=not args.quiet,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    records = generator.generate(image)
    args.out.mkdir(parents=True, exist_ok=True)
    segments = [make_segment(rle_to_mask(r["segmentation"]), r["level"], r["predicted_iou"], id=i)
                for i, r in enumerate(records)]
    Image.fromarray(render_overlay(image, segments, text=False)).save(args.out / "overlay.png")
    height, width = image.shape[:2]
    coco = {
        "image": {"file_name": str(args.image), "height": height, "width": width},
        "checkpoint": str(args.checkpoint), "model_id": predictor.model.model_id, "levels": list(args.levels),
        "annotations": [{"id": i, **r} for i, r in enumerate(records)],
    }
    (args.out / "masks.json").write_text(json.dumps(coco), encoding="utf-8")
    print(f"{len(records)} mask(s); wrote {args.out / 'masks.json'} and {args.out / 'overlay.png'}")
    return 0


# info, convert, download ---------------------------------------------------------------------------------------


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official .pth or converted .safetensors")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def _run_info(args: argparse.Namespace) -> int:
    from semsam_ros.checkpoint import CheckpointError, checkpoint_info

    try:
        info = checkpoint_info(args.checkpoint)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in ("path", "format", "preset", "parameters", "sha256", "model_id"):
            value = info[key]
            print(f"{key:<10} {value:,}" if isinstance(value, int) else f"{key:<10} {value}")
    return 0


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth checkpoint")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--config", help="swint, swinl or an official YAML (default: inferred)")


def _run_convert(args: argparse.Namespace) -> int:
    from semsam_ros.checkpoint import CheckpointError, convert_checkpoint
    from semsam_ros.download import file_sha256

    if not args.dst.endswith(".safetensors"):
        raise UserError(f"the output must be a .safetensors file, got {args.dst}")
    try:
        dst = convert_checkpoint(args.src, args.dst, args.config)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {args.dst}: {exc}") from None
    print(f"wrote {dst} (sha256 {file_sha256(Path(dst))})")
    return 0


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=("swint", "swinl"), help="which release checkpoint")
    parser.add_argument("--cache-dir", help="download folder (default: $SEMSAM_CACHE or ~/.cache/semsam_ros)")
    parser.add_argument("--url", help="download from this URL (a mirror) instead of the GitHub release")
    parser.add_argument("--sha256", help="expected sha256 (default: the one pinned in models/checkpoints.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _run_download(args: argparse.Namespace) -> int:
    from semsam_ros.download import DownloadError, download_checkpoint

    try:
        path, digest, pinned = download_checkpoint(args.name, args.cache_dir, args.url, args.sha256,
                                                   progress=not args.quiet)
    except DownloadError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write to the cache folder: {exc}") from None
    print(path)
    if pinned:
        print(f"sha256 {digest} (verified)")
    else:
        print(f"sha256 {digest} (no pinned value to verify against; recorded in {path.name}.sha256)")
    return 0


# entry point ---------------------------------------------------------------------------------------------------


def subcommands() -> dict[str, Subcommand]:
    """Every subcommand by name (other modules' commands are imported here, when the parser is built)."""
    from semsam_ros import bag

    return {
        "segment": Subcommand("segment an image at point/box prompts, every chosen level",
                              _segment_arguments, _run_segment),
        "auto": Subcommand("segment everything at the chosen levels (COCO RLE JSON + overlay)",
                           _auto_arguments, _run_auto),
        "info": Subcommand("preset, parameter count and sha256 of a checkpoint", _info_arguments, _run_info),
        "convert": Subcommand("official .pth -> .safetensors", _convert_arguments, _run_convert),
        "download": Subcommand("fetch an official release checkpoint into the cache",
                               _download_arguments, _run_download),
        "bag": Subcommand("segment the image topics of a rosbag2 into a new bag (no ROS needed)",
                          bag.add_bag_arguments, bag.run_bag),
        "bag-info": Subcommand("topics, types, counts and image rates of a rosbag2", bag.add_info_arguments,
                               bag.run_info),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="semsam", description="Semantic-SAM: segment anything at any granularity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in subcommands().items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``semsam``; returns the exit status (0 ok, 1 user error, 2 bad command line, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserError as exc:
        print(f"semsam: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("semsam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main: other modules (semsam_ros.bag) raise semsam_ros.cli.UserError, which is not
    # this __main__ module's class.
    from semsam_ros.cli import main as package_main

    sys.exit(package_main())
