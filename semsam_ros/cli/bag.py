"""``semsam bag`` and ``semsam bag-info``: the front ends of ``semsam_ros.bag`` (docs/bag.md).

``BagError`` from the library reaches ``main``, which prints it as one line like a UserError.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semsam_ros.bag import (
    STORAGES, BagOptions, BagTime, bag_info, load_prompts, parse_topic_map, plan_bag, process_bag,
)
from semsam_ros.cli.args import UserError, add_model_arguments, device, load_predictor, parse_levels
from semsam_ros.ros.params import load_node_params
from semsam_ros.text import one_line


def _time_argument(text: str) -> BagTime:
    try:
        return BagTime.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _setting(text: str) -> tuple[str, Any]:
    """'NAME=VALUE' -> (name, the value read as YAML)."""
    import yaml

    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {one_line(str(exc))}") from None


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="rosbag2 directory, or a single .db3 or .mcap file")
    parser.add_argument("--out", required=True, type=Path, help="output bag directory (must not exist)")
    add_bag_options(parser)


def add_bag_options(parser: argparse.ArgumentParser) -> None:
    """Every option of ``semsam bag`` but the input and --out (``semsam fleet`` takes them too)."""
    parser.add_argument("--image-topic", action="append", required=True, metavar="TOPIC",
                        help="sensor_msgs/Image or CompressedImage topic to segment; repeat for more")
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=Path, metavar="YAML", help="pixel points/boxes per image topic")
    parser.add_argument("--prompt-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="recorded semsam_ros/msg/Prompt topic (bare: for every image topic)")
    parser.add_argument("--auto", action="store_true", help="also segment everything on every processed frame")
    parser.add_argument("--track", action="store_true",
                        help="the prompts of the first prompted frame start tracks followed through the bag "
                             "(Segment.track_id; one image topic); with --depth-topic and --set track_frame=odom "
                             "the bag's /tf compensates camera motion")
    parser.add_argument("--levels", type=parse_levels,
                        help="levels of --auto (default 1,3,6) and of YAML prompts naming none (default all)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="process every N-th frame (default: 1)")
    parser.add_argument("--start", type=_time_argument, metavar="TIME",
                        help="seconds after the bag start, or absolute ns (integer >= 1e15, or with suffix ns)")
    parser.add_argument("--end", type=_time_argument, metavar="TIME", help="end of the window (exclusive), as --start")
    parser.add_argument("--segments-topic", help="default <image topic>/segments (single image topic only)")
    parser.add_argument("--overlay-topic", help="default <image topic>/overlay (single image topic only)")
    parser.add_argument("--no-overlay", action="store_true", help="write no overlay images")
    parser.add_argument("--depth-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="depth registered to the image (16UC1 mm or 32FC1 m), for 3D")
    parser.add_argument("--camera-info-topic", action="append", default=[], metavar="[IMAGE_TOPIC=]TOPIC",
                        help="camera_info for 3D (default: camera_info next to the image topic)")
    parser.add_argument("--storage", choices=STORAGES, help="output storage (default: as the input)")
    parser.add_argument("--distro", choices=("humble", "jazzy"), help="message definitions (default: the bag's)")
    parser.add_argument("--params", type=Path, metavar="YAML",
                        help="node parameter file (e.g. config/semsam.yaml); model parameters in it are ignored")
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="one node parameter, e.g. score_threshold=0.7; repeat for more")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def bag_options(args: argparse.Namespace) -> BagOptions:
    """The BagOptions of the :func:`add_bag_options` options; UserError when they are wrong."""
    if not (args.prompts or args.prompt_topic or args.auto):
        raise UserError("nothing to segment: give --prompts YAML, --prompt-topic TOPIC or --auto")
    if args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    topics = list(dict.fromkeys(args.image_topic))
    overrides = dict(args.set) | ({"auto_levels": list(args.levels)} if args.auto and args.levels else {})
    try:
        params = load_node_params(args.params, overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return BagOptions(
        image_topics=topics,
        prompts=load_prompts(args.prompts, topics, args.levels or ()) if args.prompts else {},
        prompt_topics=parse_topic_map(args.prompt_topic, topics, "--prompt-topic"),
        auto=args.auto, track=args.track, params=params, every=args.every, start=args.start, end=args.end,
        storage=args.storage,
        distro=args.distro, segments_topic=args.segments_topic, overlay_topic=args.overlay_topic,
        overlay=not args.no_overlay, depth_topics=parse_topic_map(args.depth_topic, topics, "--depth-topic"),
        camera_info_topics=parse_topic_map(args.camera_info_topic, topics, "--camera-info-topic"),
        progress=not args.quiet,
    )


def run_bag(args: argparse.Namespace) -> int:
    options = bag_options(args)
    # everything that needs no model is checked first: the model can take many seconds to load
    plan = plan_bag(args.input, args.out, options, device=str(device(args)))
    predictor, _ = load_predictor(args)
    summary = process_bag(args.input, args.out, predictor, options, plan=plan)
    print(summary)
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="rosbag2 directory, or a single .db3 or .mcap file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_info(args: argparse.Namespace) -> int:
    info = bag_info(args.input)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['storage']}, {info['messages']} message(s), {info['duration_s']:.3f} s"
          + (f" from {info['start_ns']} ns" if info["start_ns"] is not None else "")
          + (f", ros_distro {info['ros_distro']}" if info["ros_distro"] else ""))
    width = max([len(e["topic"]) for e in info["topics"]] + [5])
    type_width = max([len(e["type"]) for e in info["topics"]] + [4])
    print(f"{'topic':<{width}}  {'type':<{type_width}}  {'count':>7}  image")
    for entry in info["topics"]:
        image = ""
        if "rate_hz" in entry:
            rate = f"{entry['rate_hz']:.2f} Hz" if entry["rate_hz"] is not None else "- Hz"
            detail = entry.get("format") or (f"{entry['width']}x{entry['height']} {entry['encoding']}"
                                             if "encoding" in entry else entry.get("error", ""))
            image = f"{rate}, {detail}"
        print(f"{entry['topic']:<{width}}  {entry['type']:<{type_width}}  {entry['count']:>7}  {image}".rstrip())
    return 0
