"""``semsam fleet``: the front end of ``semsam_ros.fleet`` (docs/fleet.md); ``semsam bag``'s options, many bags."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from semsam_ros.cli.args import UserError, model_options
from semsam_ros.cli.bag import add_bag_options, bag_options

HELP = "segment many rosbag2 recordings on Ray (a local instance or a cluster), as `semsam bag` does each"
RUN_KEYS = ("input", "out", "address", "workers", "cpus_per_worker", "gpus_per_worker", "retries", "quiet", "run",
            "command", "device")  # how the work is spread and shown: a resumed run may change them


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="+", help="bag folders or .db3/.mcap files, globs, or text files listing them")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: bags/<name>/, segments/<name>.parquet, fleet.json (a re-run resumes)")
    parser.add_argument("--address", help="join a Ray cluster (auto, ray://HOST:10001); default: a local instance")
    parser.add_argument("--workers", type=int, help="worker actors (default: one per GPU, else per CPU)")
    parser.add_argument("--cpus-per-worker", type=_positive, default=1.0, help="(default: 1; also torch threads)")
    parser.add_argument("--gpus-per-worker", type=float,
                        help="(default: 1 when the cluster has GPUs and --device is not cpu, else 0)")
    parser.add_argument("--slice-seconds", type=_positive, metavar="S",
                        help="split long bags into units of S seconds of bag time (one image topic, no --track, "
                             "--prompt-topic or --depth-topic)")
    parser.add_argument("--retries", type=int, default=1, help="tries again after a unit fails (default: 1)")
    add_bag_options(parser)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide the outputs, as JSON (the manifest's ``options``)."""
    return {key: (value if isinstance(value, (bool, int, float, str, type(None))) else str(value))
            for key, value in sorted(vars(args).items()) if key not in RUN_KEYS}


def run(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401  (the workers write Parquet)

        from semsam_ros.fleet.runner import FleetConfig, FleetError, run_fleet
    except ImportError as exc:
        raise UserError(f"semsam fleet needs Ray and pyarrow: pip install 'semsam_ros[fleet]' ({exc})") from None
    from semsam_ros.fleet.plan import expand_inputs

    options = bag_options(args)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        bags = expand_inputs(args.input)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    config = FleetConfig(args.address, args.workers, args.cpus_per_worker, args.gpus_per_worker, args.slice_seconds,
                         max(0, args.retries), not args.quiet)
    try:
        manifest = run_fleet(bags, args.out, options, model_options(args), config, settings(args))
    except FleetError as exc:
        raise UserError(str(exc)) from None
    bags_done = manifest["bags"]
    failed = {name: entry for name, entry in bags_done.items() if entry["status"] == "failed"}
    last = manifest["runs"][-1]
    print(f"{len(bags_done) - len(failed)} of {len(bags_done)} bag(s) done, {last['frames']} frame(s) in "
          f"{last['seconds']:.1f} s with {last['workers']} worker(s) -> {args.out}")
    for name, entry in failed.items():
        print(f"  failed: {name} ({entry['input']}): {entry['error']}", file=sys.stderr)
    return 1 if failed else 0
