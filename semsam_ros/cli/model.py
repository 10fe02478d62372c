"""``semsam info``, ``convert`` and ``download``: checkpoints on disk (docs/cli.md)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from semsam_ros.cli.args import UserError


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official .pth or converted .safetensors")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def run_info(args: argparse.Namespace) -> int:
    from semsam_ros.io.checkpoint import CheckpointError, checkpoint_info

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


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth checkpoint")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--config", help="swint, swinl or an official YAML (default: inferred)")


def run_convert(args: argparse.Namespace) -> int:
    from semsam_ros.io.checkpoint import CheckpointError, convert_checkpoint
    from semsam_ros.io.hashing import file_sha256

    if not args.dst.endswith(".safetensors"):
        raise UserError(f"the output must be a .safetensors file, got {args.dst}")
    if not Path(args.dst).absolute().parent.is_dir():
        raise UserError(f"cannot write {args.dst}: the folder {Path(args.dst).parent} does not exist")
    try:
        dst = convert_checkpoint(args.src, args.dst, args.config)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {args.dst}: {exc}") from None
    print(f"wrote {dst} (sha256 {file_sha256(Path(dst))})")
    return 0


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=("swint", "swinl"), help="which release checkpoint")
    parser.add_argument("--cache-dir", help="download folder (default: $SEMSAM_CACHE or ~/.cache/semsam_ros)")
    parser.add_argument("--url", help="an https mirror or a local file path instead of the GitHub release "
                                      "(needs --sha256)")
    parser.add_argument("--sha256", help="expected sha256 (default: the one pinned in models/checkpoints.yaml, "
                                         "else the one recorded at the first download)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_download(args: argparse.Namespace) -> int:
    from semsam_ros.io.download import DownloadError, download_checkpoint

    try:
        path, digest, how = download_checkpoint(args.name, args.cache_dir, args.url, args.sha256,
                                                progress=not args.quiet)
    except DownloadError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write to the cache folder: {exc}") from None
    print(path)
    if how == "first use":
        print(f"sha256 {digest} (nothing pinned to verify against: trusted on first use and recorded in "
              f"{path.name}.sha256; compare it with a value you trust)")
    else:
        print(f"sha256 {digest} (verified: {how})")
    return 0
