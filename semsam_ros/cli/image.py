"""``semsam segment`` and ``semsam auto``: masks of one image file, at prompts or everywhere (docs/cli.md)."""
from __future__ import annotations

import argparse
import json
import os
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from semsam_ros.cli.args import UserError, add_model_arguments, add_prompt_arguments, load_predictor, parse_levels
from semsam_ros.cli.semantics import (
    add_semantics_arguments, annotate_segments, check_semantics, load_labeller, match_record, semantic_fields,
    text_caption,
)
from semsam_ros.limits import InputRejected, check_long_side
from semsam_ros.ros.images import decode_file, pixels_to_rgb
from semsam_ros.types import DEFAULT_MAX_IMAGE_PIXELS, LEVELS


def read_image(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file (EXIF orientation not applied, alpha dropped, as the official code; 16-bit
    scaled down by 256 as the node does); its size is checked from the header before decoding."""
    try:
        with open(path, "rb") as fp:
            return pixels_to_rgb(decode_file(fp, f"image {path}", max_pixels=max_pixels))
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (InputRejected, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def read_checked_image(args: argparse.Namespace) -> np.ndarray:
    """The image of ``args`` once it fits --max-image-pixels and --max-long-side (before the model is loaded)."""
    image = read_image(args.image, args.max_image_pixels)
    try:
        check_long_side(*image.shape[:2], args.input_size, args.max_long_side)
    except InputRejected as exc:
        raise UserError(str(exc)) from None
    return image


def check_out_dir(path: Path) -> None:
    """UserError unless ``path`` is a folder or can be created as one (checked before the model loads; nothing is
    created)."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the output folder {path}: {existing} is not a writable folder")


def make_out_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {path}: {exc}") from None

def write_json(path: Path, data: Any, **options: Any) -> None:
    """``data`` as strict JSON (never a bare NaN or Infinity); UserError naming the likely cause otherwise."""
    try:
        text = json.dumps(data, allow_nan=False, **options)
    except ValueError:
        raise UserError(f"{path.name}: the model produced non-finite scores (NaN or inf); the checkpoint is "
                        "probably broken, nothing was written") from None
    path.write_text(text, encoding="utf-8")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--levels", type=parse_levels, default=LEVELS,
                        help="granularity levels, 1 (coarse) .. 6 (fine), e.g. 1,3,6 (default: all)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"refuse larger images, read from the header (default: {DEFAULT_MAX_IMAGE_PIXELS})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

def _steps(total: int, desc: str, quiet: bool) -> Any:
    """A tqdm bar over the steps of a command; it only appears after one second."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", delay=1.0, disable=quiet, leave=False)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (any format PIL reads)")
    add_prompt_arguments(parser, "a click in pixels; repeat for more prompts",
                         "a box in pixels; repeat for more prompts")
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
    add_semantics_arguments(parser)


def run_segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt
    from semsam_ros.inference.predictor import prompts_to_boxes
    from semsam_ros.viz.render import render_level_grid, render_overlay

    image = read_checked_image(args)
    if not args.point and not args.box:
        raise UserError("give at least one prompt: --point X,Y or --box X0,Y0,X1,Y1")
    height, width = image.shape[:2]
    try:
        prompts_to_boxes(args.point or None, args.box or None, height, width)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_out_dir(args.out)
    params = PostprocessParams(iou_threshold=args.iou_threshold, dedupe_iou=args.dedupe_iou,
                               hole_area=args.hole_area, island_area=args.island_area, sort=args.sort)
    vocabulary = check_semantics(args)
    with _steps(4 + (vocabulary is not None), "semsam segment", args.quiet) as bar:
        labeller = None
        if vocabulary is not None:  # before the model: a missing CLIP model fails fast
            labeller = load_labeller(args, vocabulary)
            bar.update()
        predictor, model_id = load_predictor(args)
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
            "model_id": model_id, "levels": list(args.levels),
            "postprocess": asdict(params), "prompts": prompts,
        }
        if labeller is not None:
            summary["clip_model"] = labeller.model_id
        if args.text is not None:
            overlay = render_overlay(image, selected, points=args.point, boxes=args.box, captions=captions)
            Image.fromarray(overlay).save(args.out / "text_overlay.png")
            summary["text"] = {"query": args.text, "top_k": args.text_top_k, "overlay": "text_overlay.png"}
        write_json(args.out / "summary.json", summary, indent=2)
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


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (any format PIL reads)")
    _model_arguments(parser)
    parser.add_argument("--points-per-side", type=int, default=32, help="grid of N x N clicks (default: 32)")
    parser.add_argument("--points-per-batch", type=int, default=64, help="clicks decoded at once (default: 64)")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="(default: 0.88)")
    parser.add_argument("--stability-score-thresh", type=float, default=0.92, help="(default: 0.92)")
    parser.add_argument("--box-nms-thresh", type=float, default=0.7, help="(default: 0.7)")
    parser.add_argument("--min-mask-region-area", type=int, default=10, help="(default: 10; 0 disables)")
    parser.add_argument("--crop-n-layers", type=int, default=0, help="extra layers of image crops (default: 0)")
    add_semantics_arguments(parser)


def run_auto(args: argparse.Namespace) -> int:
    from PIL import Image

    from semsam_ros.inference.amg import AutomaticMaskGenerator
    from semsam_ros.inference.postprocess import rle_to_mask
    from semsam_ros.viz.render import render_overlay
    from semsam_ros.types import make_segment

    image = read_checked_image(args)
    vocabulary = check_semantics(args)
    check_out_dir(args.out)
    with _steps(1 + (vocabulary is not None), "semsam auto: load model", args.quiet) as bar:
        labeller = None
        if vocabulary is not None:
            labeller = load_labeller(args, vocabulary)
            bar.update()
        predictor, model_id = load_predictor(args)
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
        "checkpoint": str(args.checkpoint), "model_id": model_id, "levels": list(args.levels),
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
    write_json(args.out / "masks.json", coco)
    print(f"{len(records)} mask(s); wrote {' and '.join(str(w) for w in written)}")
    if args.text is not None:
        found = (f"mask {best['id']}, level {best['level']} ({best['label']}), score {best['score']:.3f}" if best
                 else "no mask")
        print(f"{args.text!r} -> {found}")
    return 0
