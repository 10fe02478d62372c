"""The ``semsam`` command: segment, auto, info, convert, download, bag, bag-info, fleet, track, build-engine,
export-onnx (docs/cli.md).

A subcommand is a ``Subcommand(help, add_arguments, run)`` entry of :func:`subcommands`. ``run`` returns the exit
status and raises ``UserError`` (or the bag library's ``BagError``) for a user mistake, which :func:`main` prints
as one line ``semsam: error: ...`` (exit status 1; command-line syntax errors exit with 2). Command modules
import their heavy dependencies (torch, the model) inside ``run`` so that ``semsam --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from semsam_ros.bag.reader import BagError
from semsam_ros.cli.args import UserError
from semsam_ros.text import one_line


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UserErrors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise UserError(f"{command}: {message}" if command else message, 2)


def subcommands() -> dict[str, Subcommand]:
    """Every subcommand by name (the command modules are imported here, when the parser is built)."""
    from semsam_ros.cli import bag, engine, fleet, image, model, onnx, track

    return {
        "segment": Subcommand("segment an image at point/box prompts, every chosen level",
                              image.add_segment_arguments, image.run_segment),
        "auto": Subcommand("segment everything at the chosen levels (COCO RLE JSON + overlay)",
                           image.add_auto_arguments, image.run_auto),
        "info": Subcommand("preset, parameter count and sha256 of a checkpoint", model.add_info_arguments,
                           model.run_info),
        "convert": Subcommand("official .pth -> .safetensors", model.add_convert_arguments, model.run_convert),
        "download": Subcommand("fetch an official release checkpoint into the cache",
                               model.add_download_arguments, model.run_download),
        "bag": Subcommand("segment the image topics of a rosbag2 into a new bag (no ROS needed)",
                          bag.add_bag_arguments, bag.run_bag),
        "bag-info": Subcommand("topics, types, counts and image rates of a rosbag2", bag.add_info_arguments,
                               bag.run_info),
        "track": Subcommand(track.HELP, track.add_arguments, track.run),
        "build-engine": Subcommand(engine.HELP, engine.add_arguments, engine.run),
        "export-onnx": Subcommand(onnx.HELP, onnx.add_arguments, onnx.run),
        "fleet": Subcommand(fleet.HELP, fleet.add_arguments, fleet.run),
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
    except (UserError, BagError) as exc:
        print(f"semsam: error: {one_line(str(exc))}", file=sys.stderr)
        return getattr(exc, "status", 1)
    except KeyboardInterrupt:
        print("semsam: interrupted", file=sys.stderr)
        return 130
