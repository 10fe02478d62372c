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

from semsam_ros.types import BACKENDS, DEFAULT_CLIP_MODEL, KIND_NAMES, LEVELS, PRECISIONS


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
    if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVELS):
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
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def make_out_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {path}: {exc}") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --config, --device, --input-size, --backend, --precision (read by :func:`load_predictor`)."""
    parser.add_argument("--checkpoint", required=True, help="official .pth or converted .safetensors")
    parser.add_argument("--config", help="swint, swinl or an official YAML (default: read from the checkpoint)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--input-size", type=int, default=640, help="short side the model sees (default: 640)")
    parser.add_argument("--backend", choices=BACKENDS, default="eager",
                        help="how the model runs (default: eager); tensorrt engines are cached, see docs/deployment.md")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default: fp32)")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--levels", type=parse_levels, default=LEVELS,
                        help="granularity levels, 1 (coarse) .. 6 (fine), e.g. 1,3,6 (default: all)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def resolve_device(args: argparse.Namespace) -> Any:
    """torch.device of --device; UserError when it is malformed or not available."""
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available")
    return device


def load_predictor(args: argparse.Namespace) -> Any:
    """semsam_ros.Predictor for the :func:`add_model_arguments` options; UserError when they are wrong."""

    from semsam_ros.checkpoint import CheckpointError, load_model
    from semsam_ros.inference.backends import BackendError
    from semsam_ros.inference.predictor import Predictor

    device = resolve_device(args)
    if args.input_size < 32:
        raise UserError(f"--input-size must be at least 32, got {args.input_size}")
    try:
        model = load_model(args.checkpoint, args.config)
        return Predictor(model, device=device, short_side=args.input_size, backend=args.backend,
                         precision=args.precision)
    except (CheckpointError, BackendError, ValueError) as exc:
        raise UserError(str(exc)) from None


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


# semantics (segment and auto) ---------------------------------------------------------------------------------



def parse_names(text: str) -> list[str]:
    """'mug,kettle lid,drawer': comma-separated names."""
    names = [" ".join(n.split()) for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"names must be comma-separated and non-empty, like mug,bottle; got {text!r}")
    return names


def _semantics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("semantics", "labels and text selection with a CLIP model (needs transformers "
                                      "and a CLIP model on this machine; see docs/semantics.md)")
    group.add_argument("--labels", action="store_true",
                       help="label every kept mask: object names for levels 1-3, part names for levels 4-6")
    group.add_argument("--text", metavar="TEXT",
                       help='keep the masks that best match TEXT, e.g. "handle", "mug lid" (labels them all too)')
    group.add_argument("--text-top-k", type=int, default=3, metavar="K", help="matches kept for --text (default: 3)")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, metavar="DIR|ID",
                       help=f"a CLIP model folder, or a model id in the local Hugging Face cache "
                            f"(default: {DEFAULT_CLIP_MODEL})")
    group.add_argument("--download-clip", action="store_true",
                       help="download the CLIP model from the Hugging Face Hub if it is not cached")
    group.add_argument("--vocabulary", metavar="YAML", help="vocabulary file (default: the shipped one)")
    group.add_argument("--objects", type=parse_names, metavar="A,B", help="object names replacing the vocabulary's")
    group.add_argument("--parts", type=parse_names, metavar="A,B", help="part names replacing the vocabulary's")
    group.add_argument("--min-label-score", type=float, default=0.3,
                       help='a mask whose best label scores below this is labelled "unknown" (default: 0.3)')


def check_semantics(args: argparse.Namespace) -> Any:
    """The Vocabulary for --labels/--text (None when neither is given), after the cheap checks: the query, the
    options, transformers and the vocabulary. UserError naming what to do otherwise."""
    if not (args.labels or args.text is not None):
        return None
    import yaml

    from semsam_ros.semantics import Vocabulary, default_vocabulary, parse_query
    from semsam_ros.semantics.labeller import _require_transformers

    if args.text is not None:
        try:
            parse_query(args.text)
        except ValueError:
            raise UserError(f"--text {args.text!r} names nothing to select") from None
    if args.text_top_k < 1:
        raise UserError(f"--text-top-k must be at least 1, got {args.text_top_k}")
    if not 0.0 <= args.min_label_score <= 1.0:
        raise UserError(f"--min-label-score must lie in [0, 1], got {args.min_label_score}")
    try:
        _require_transformers()
    except ImportError:
        raise UserError("--labels and --text need Hugging Face transformers: pip install 'transformers>=4.40' "
                        "(or pip install 'semsam_ros[semantics]')") from None
    try:
        base = Vocabulary.from_yaml(args.vocabulary) if args.vocabulary else default_vocabulary()
        return Vocabulary.from_dict({"objects": args.objects, "parts": args.parts}, base=base)
    except FileNotFoundError as exc:
        raise UserError(f"vocabulary not found: {exc.filename or exc}") from None
    except (OSError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"bad vocabulary {args.vocabulary or '(shipped)'}: {exc}") from None


def load_labeller(args: argparse.Namespace, vocabulary: Any) -> Any:
    """RegionLabeller for --clip-model on --device; UserError (one line, what to do) when it does not load."""
    from semsam_ros.semantics import RegionLabeller

    from transformers.utils import logging as hf_logging

    device = resolve_device(args)
    source = args.clip_model
    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        return RegionLabeller(source, vocabulary=vocabulary, device=device, allow_download=args.download_clip,
                              min_score=args.min_label_score)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot load a CLIP model from the folder {source}: {reason}") from None
        if args.download_clip:
            raise UserError(f"cannot download the CLIP model {source!r}: {one_line(str(exc), 200)}") from None
        raise UserError(
            f"the CLIP model {source!r} is not on this machine: download it once with `hf download {source}`, "
            "pass --clip-model DIR (a folder saved with save_pretrained), or add --download-clip"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def annotate_segments(image: np.ndarray, segments: list, labeller: Any) -> None:
    """Part-of links (ids = positions in ``segments``) and labels, in place."""
    from semsam_ros.semantics import build_hierarchy

    build_hierarchy(segments, order="given")
    labeller.label(image, segments)


def semantic_fields(seg: Any) -> dict[str, Any]:
    """What --labels adds to a mask's JSON record."""
    return {
        "id": seg.id, "parent_id": seg.parent_id, "child_ids": list(seg.child_ids), "kind": KIND_NAMES[seg.kind],
        "label": seg.label, "label_score": seg.label_score,
        "top_labels": [[name, score] for name, score in seg.top_labels],
    }


def match_record(selection: Any) -> dict[str, Any]:
    """One --text match in the JSON: the mask's id, level and label, and its scores."""
    seg = selection.segment
    return {"id": seg.id, "level": seg.level, "label": seg.label, "score": selection.score,
            "similarity": selection.similarity, "match": selection.match}


def text_caption(selection: Any) -> str:
    return f"{selection.segment.label} {selection.score:.2f}"


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
    _semantics_arguments(parser)


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
    vocabulary = check_semantics(args)
    with _steps(4 + (vocabulary is not None), "semsam segment", args.quiet) as bar:
        labeller = None
        if vocabulary is not None:  # before the model: a missing CLIP model fails fast
            labeller = load_labeller(args, vocabulary)
            bar.update()
        predictor = load_predictor(args)
        bar.update()
        predictor.set_image(image)
        bar.update()
        make_out_dir(args.out)
        pred = predictor.predict(points=args.point or None, boxes=args.box or None)
        bar.update()
        columns = [level - 1 for level in args.levels]
        prompts: list[dict[str, Any]] = [{"id": i, "point": list(p)} for i, p in enumerate(args.point)]
        prompts += [{"id": len(prompts) + i, "box": list(b)} for i, b in enumerate(args.box)]
        per_prompt = []
        for i, prompt in enumerate(prompts):
            point = tuple(prompt["point"]) if "point" in prompt else None
            per_prompt.append(postprocess_prompt(pred.mask_logits[i, columns], pred.iou_scores[i, columns], params,
                                                 prompt_id=i, point=point, levels=args.levels))
        if labeller is not None:  # part-of links and labels across all prompts
            annotate_segments(image, [s for segments in per_prompt for s in segments], labeller)
        selected, captions = [], []
        for i, (prompt, segments) in enumerate(zip(prompts, per_prompt)):
            point = tuple(prompt["point"]) if "point" in prompt else None
            markers = {"points": [point]} if point else {"boxes": [prompt["box"]]}
            prompt.update(overlay=f"prompt{i}_overlay.png", level_grid=f"prompt{i}_levels.png", segments=[])
            labels = None if labeller is None else [f"L{s.level} {s.label} {s.label_score:.2f}" for s in segments]
            overlay = render_overlay(image, segments, captions=labels, **markers)
            Image.fromarray(overlay).save(args.out / prompt["overlay"])
            grid = render_level_grid(image, segments, args.levels, **markers)
            Image.fromarray(grid).save(args.out / prompt["level_grid"])
            for seg in segments:
                name = f"prompt{i}_level{seg.level}.png"
                Image.fromarray(seg.mask.astype(np.uint8) * 255).save(args.out / name)
                record = {
                    "level": seg.level, "iou_score": seg.iou_score, "area": seg.area, "raw_area": seg.raw_area,
                    "bbox": list(seg.bbox), "centroid": [_finite(c) for c in seg.centroid], "mask": name,
                }
                prompt["segments"].append(record | (semantic_fields(seg) if labeller is not None else {}))
            if args.text is not None:  # the prompt's own masks, those holding its point for a click
                from semsam_ros.semantics import select

                chosen = select(segments, args.text, labeller, point=point, top_k=args.text_top_k, image=image)
                masks = {id(s): r["mask"] for s, r in zip(segments, prompt["segments"])}
                prompt["text_matches"] = [match_record(c) | {"mask": masks[id(c.segment)]} for c in chosen]
                selected += [c.segment for c in chosen]
                captions += [text_caption(c) for c in chosen]
        summary = {
            "image": str(args.image), "image_size": [height, width], "checkpoint": str(args.checkpoint),
            "model_id": predictor.model.model_id, "levels": list(args.levels),
            "postprocess": asdict(params), "prompts": prompts,
        }
        if labeller is not None:
            summary["clip_model"] = labeller.model_id
        if args.text is not None:
            overlay = render_overlay(image, selected, points=args.point, boxes=args.box, captions=captions)
            Image.fromarray(overlay).save(args.out / "text_overlay.png")
            summary["text"] = {"query": args.text, "top_k": args.text_top_k, "overlay": "text_overlay.png"}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        bar.update()
    kept = sum(len(p["segments"]) for p in prompts)
    print(f"{len(prompts)} prompt(s), {kept} mask(s) kept; wrote {args.out / 'summary.json'}")
    if args.text is not None:
        for prompt in prompts:
            best = prompt["text_matches"][0] if prompt["text_matches"] else None
            found = (f"level {best['level']} ({best['label']}), score {best['score']:.3f}, {best['mask']}" if best
                     else "no mask holds the point")
            print(f"prompt {prompt['id']}: {args.text!r} -> {found}")
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
    _semantics_arguments(parser)


def _run_auto(args: argparse.Namespace) -> int:
    from PIL import Image

    from semsam_ros.inference.amg import AutomaticMaskGenerator
    from semsam_ros.inference.postprocess import rle_to_mask
    from semsam_ros.inference.render import render_overlay
    from semsam_ros.types import make_segment

    image = read_image(args.image)
    vocabulary = check_semantics(args)
    with _steps(1 + (vocabulary is not None), "semsam auto: load model", args.quiet) as bar:
        labeller = None
        if vocabulary is not None:
            labeller = load_labeller(args, vocabulary)
            bar.update()
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
    make_out_dir(args.out)
    records = generator.generate(image)
    segments = [make_segment(rle_to_mask(r["segmentation"]), r["level"], r["predicted_iou"], id=i)
                for i, r in enumerate(records)]
    Image.fromarray(render_overlay(image, segments, text=False)).save(args.out / "overlay.png")
    height, width = image.shape[:2]
    annotations = [{"id": i, **r} for i, r in enumerate(records)]
    coco: dict[str, Any] = {
        "image": {"file_name": str(args.image), "height": height, "width": width},
        "checkpoint": str(args.checkpoint), "model_id": predictor.model.model_id, "levels": list(args.levels),
        "annotations": annotations,
    }
    if labeller is not None:
        annotate_segments(image, segments, labeller)  # ids stay the annotation ids
        for ann, seg in zip(annotations, segments):
            ann.update(semantic_fields(seg))
        coco["clip_model"] = labeller.model_id
    written = [args.out / "masks.json", args.out / "overlay.png"]
    best = None
    if args.text is not None:  # no point: every automatic mask competes
        from semsam_ros.semantics import select

        chosen = select(segments, args.text, labeller, top_k=args.text_top_k, image=image)
        overlay = render_overlay(image, [c.segment for c in chosen], captions=[text_caption(c) for c in chosen])
        Image.fromarray(overlay).save(args.out / "text_overlay.png")
        coco["text"] = {"query": args.text, "top_k": args.text_top_k, "overlay": "text_overlay.png",
                        "matches": [match_record(c) for c in chosen]}
        written.append(args.out / "text_overlay.png")
        best = coco["text"]["matches"][0] if chosen else None
    (args.out / "masks.json").write_text(json.dumps(coco), encoding="utf-8")
    print(f"{len(records)} mask(s); wrote {' and '.join(str(w) for w in written)}")
    if args.text is not None:
        found = (f"mask {best['id']}, level {best['level']} ({best['label']}), score {best['score']:.3f}" if best
                 else "no mask")
        print(f"{args.text!r} -> {found}")
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
    from semsam_ros.inference import build_engine_cli

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
        "build-engine": Subcommand(build_engine_cli.HELP, build_engine_cli.add_arguments, build_engine_cli.run),
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
