"""``semsam track VIDEO_OR_DIR``: start prompts tracked through an image sequence with ``semsam_ros.Tracker``
(docs/cli.md). A folder of images is read in name order; a file is read frame by frame when PIL reads several
frames from it (animated GIF, APNG, WebP, multi-page TIFF). Other videos need a decoder (ffmpeg, OpenCV, PyAV)
that semsam_ros does not depend on: extract their frames into a folder first."""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from semsam_ros.cli.args import UserError, add_model_arguments, add_prompt_arguments, load_predictor, parse_levels
from semsam_ros.cli.image import check_out_dir, make_out_dir
from semsam_ros.limits import InputRejected, check_long_side
from semsam_ros.ros.images import decode_file, pixels_to_rgb
from semsam_ros.types import DEFAULT_MAX_IMAGE_PIXELS, TRACK_STATE_NAMES

HELP = "track point/box prompts through an image folder or an animated image (ids per frame, overlays)"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder of images (name order) or an animated GIF/PNG/WebP or multi-page TIFF")
    add_prompt_arguments(parser, "start a track at this pixel of the first frame; repeat for more",
                         "start a track from this box of the first frame; repeat for more")
    parser.add_argument("--prompts", type=Path, metavar="YAML",
                        help="a list of prompts as in `semsam bag --prompts` (points, boxes, levels, id)")
    parser.add_argument("--levels", type=parse_levels,
                        help="levels the tracks follow, e.g. 5,6 for parts (default: all; a YAML prompt may name "
                             "its own)")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate, for the stamps (default: 30)")
    parser.add_argument("--max-tracks", type=int, default=32, help="(default: 32)")
    parser.add_argument("--lost-after", type=int, default=3, help="misses before a track is lost (default: 3)")
    parser.add_argument("--forget-s", type=float, default=5.0, help="a lost track ends after this (default: 5)")
    parser.add_argument("--min-iou", type=float, default=0.3,
                        help="overlap with the expected mask to keep a track (default: 0.3)")
    parser.add_argument("--no-overlay", action="store_true", help="write no overlay images")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"refuse larger frames, read from the header (default: {DEFAULT_MAX_IMAGE_PIXELS})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def frame_sources(path: Path) -> list[tuple[str, Path, int]]:
    """(name, file, frame index in the file) of every frame of a folder (images in name order, hidden files and
    files PIL does not claim skipped) or of one image file; UserError when there is none or it is a video."""
    from PIL import Image

    if path.is_dir():
        known = Image.registered_extensions()
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in known)
        if not files:
            raise UserError(f"no image files in {path}")
        return [(p.name, p, 0) for p in files]
    if not path.exists():
        raise UserError(f"not found: {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise UserError(f"{path.name}: video files are not supported (decoding them needs ffmpeg, OpenCV or PyAV, "
                        "which semsam_ros does not depend on); extract the frames into a folder, e.g. "
                        "ffmpeg -i VIDEO frames/%06d.png, and track the folder")
    try:
        with Image.open(path) as img:
            count = getattr(img, "n_frames", 1)
    except OSError as exc:
        raise UserError(f"cannot read {path} as images: {exc}") from None
    return [(f"{path.stem}_{i:06d}", path, i) for i in range(count)]


def read_frame(source: tuple[str, Path, int], max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 RGB of one frame, decoded as every image file is (size checked from the header first; 16-bit
    scaled down by 256); UserError when it cannot be read."""
    name, path, index = source
    try:
        with open(path, "rb") as fp:
            return pixels_to_rgb(decode_file(fp, f"frame {name}", max_pixels=max_pixels, frame=index))
    except (InputRejected, OSError) as exc:
        raise UserError(f"cannot read frame {name}: {exc}") from None


def frames(sources: list[tuple[str, Path, int]], max_pixels: int) -> Iterator[tuple[str, np.ndarray]]:
    """Each frame's name and pixels; UserError when a frame's size differs from the first's."""
    size = None
    for source in sources:
        rgb = read_frame(source, max_pixels)
        if size is not None and rgb.shape != size:
            raise UserError(f"frame {source[0]} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                            f"{size[1]}x{size[0]}: all frames must have one size")
        size = rgb.shape
        yield source[0], rgb


def start_prompts(args: argparse.Namespace) -> list[Any]:
    """The PromptRequests that start the tracks: the YAML file's, then one per --point and --box."""
    from semsam_ros.bag import load_prompts
    from semsam_ros.ros.convert import PromptRequest

    prompts = list(load_prompts(args.prompts, ["frames"], args.levels or ())["frames"]) if args.prompts else []
    levels = tuple(args.levels or ())
    for point in args.point:
        prompts.append(PromptRequest(len(prompts), np.array([point]), np.zeros((0, 4)), levels, ""))
    for box in args.box:
        prompts.append(PromptRequest(len(prompts), np.zeros((0, 2)), np.array([box]), levels, ""))
    if not prompts:
        raise UserError("nothing to track: give --point X,Y, --box X0,Y0,X1,Y1 or --prompts YAML")
    return prompts


def track_records(segments: list[Any], tracker: Any, before: set[int]) -> list[dict[str, Any]]:
    """One record per track of the frame: found (with its mask as compressed COCO RLE), missed, or ended since the
    previous frame (``before``: the ids live then)."""
    from semsam_ros.inference.postprocess import compress_rle, mask_to_rle

    found = {s.track_id: s for s in segments}
    records = []
    for tid in sorted(before | set(tracker.tracks)):
        track, seg = tracker.tracks.get(tid), found.get(tid)
        record: dict[str, Any] = {"id": tid, "state": TRACK_STATE_NAMES[track.state] if track else "ended",
                                  "found": seg is not None}
        if track is not None:
            record["prompt_id"] = track.origin.prompt_id
        if seg is not None:
            record |= {"level": seg.level, "score": round(float(seg.iou_score), 4), "area": seg.area,
                       "bbox": list(seg.bbox), "mask": compress_rle(mask_to_rle(seg.mask))}
        records.append(record)
    return records


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from semsam_ros.ros.scheduler import start_tracks
    from semsam_ros.tracking import Tracker
    from semsam_ros.viz.render import level_caption, render_overlay

    if args.fps <= 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    prompts = start_prompts(args)
    sources = frame_sources(Path(args.input))
    first = read_frame(sources[0], args.max_image_pixels)
    height, width = first.shape[:2]
    try:
        check_long_side(height, width, args.input_size, args.max_long_side)
        tracker = Tracker(max_tracks=args.max_tracks, lost_after=args.lost_after, forget_s=args.forget_s,
                          min_iou=args.min_iou)
        for prompt in prompts:
            for x, y in prompt.points:
                if not (0 <= x < width and 0 <= y < height):
                    raise ValueError(f"prompt {prompt.prompt_id}: point ({x:g}, {y:g}) is outside the "
                                     f"{width}x{height} first frame")
            start_tracks(tracker, prompt)
    except (InputRejected, ValueError) as exc:
        raise UserError(str(exc)) from None
    check_out_dir(args.out)
    tracker.predictor, _ = load_predictor(args)
    make_out_dir(args.out)
    if not args.no_overlay:
        make_out_dir(args.out / "overlays")
    found = 0
    with open(args.out / "tracks.jsonl", "w", encoding="utf-8") as out, \
            tqdm(total=len(sources), desc="semsam track", unit="frame", delay=1.0, disable=args.quiet) as bar:
        for index, (name, rgb) in enumerate(frames(sources, args.max_image_pixels)):
            before = set(tracker.tracks)
            stamp_s = index / args.fps
            segments = [replace(s, id=s.track_id) for s in tracker.step(rgb, stamp_s=stamp_s)]
            found += len(segments)
            out.write(json.dumps({"frame": index, "name": name, "stamp_s": round(stamp_s, 6),
                                  "tracks": track_records(segments, tracker, before)}) + "\n")
            if not args.no_overlay:
                captions = [f"T{s.track_id} {level_caption(s)}" for s in segments]
                overlay = render_overlay(rgb, segments, captions=captions)
                Image.fromarray(overlay).save(args.out / "overlays" / f"{index:06d}.png")
            bar.update()
    counts = tracker.counts()
    print(f"{len(sources)} frame(s), {len(tracker.tracks) + counts['ended']} track(s), {found} tracked mask(s); "
          f"at the end {counts['tracking']} tracking, {counts['lost']} lost, {counts['ended']} ended; "
          f"wrote {args.out / 'tracks.jsonl'}")
    return 0
