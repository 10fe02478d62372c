"""`semsam fleet` scaling: frames/s with 1 and 2 workers on a local Ray instance, and the driver's cost per frame.

    python3 bench/fleet.py                                 # tiny random model, 4 bags x 24 frames 192x256, 2 clicks
    python3 bench/fleet.py --workers 1 2 4 --bags 8 --frames 50 --checkpoint swint.pth --device cuda

Bags are written first (bench/bag.py's synthetic ones). A local Ray instance with as many CPUs as the most workers
asked for is started once; for each worker count a warm-up run on one bag starts the workers (their start, model
load included, is reported as ``startup_s``), then the timed run processes every bag with those workers (kept
between runs). ``frames_per_s``: processed frames / wall time of the timed run; ``driver_cpu_ms_per_frame``: the
driver process's CPU time (planning, scheduling, progress, manifest) per frame. ``single_process_frames_per_s``:
``process_bag`` on the same bags in this process, one bag after another, as ``semsam bag`` would.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bag import write_input  # noqa: E402  (bench/bag.py: the synthetic recordings)

from semsam_ros.bag import BagOptions, process_bag  # noqa: E402
from semsam_ros.inference.options import ModelOptions, load_predictor  # noqa: E402
from semsam_ros.ros.convert import PromptRequest  # noqa: E402
from semsam_ros.ros.params import NodeParams  # noqa: E402
from semsam_ros.testing import make_tiny_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="weights (default: a tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="frames per bag")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from semsam_ros.fleet.runner import FleetConfig, _import_path_for_workers, run_fleet

    import ray

    root = Path(tempfile.mkdtemp(prefix="semsam-fleet-bench-"))
    checkpoint = args.checkpoint or str(make_tiny_checkpoint(root / "tiny.pth"))
    bags = []
    for n in range(args.bags):
        topic = write_input(root / f"in{n}", "sqlite3", args.frames, *args.size, False)
        bags.append(root / f"in{n}")
    height, width = args.size
    points = np.array([[width * 0.3, height * 0.4], [width * 0.7, height * 0.6]])
    options = BagOptions([topic], prompts={topic: [PromptRequest(1, points)]}, params=NodeParams(score_threshold=-1))
    model = ModelOptions(checkpoint, device=args.device, short_side=args.input_size)
    frames = args.bags * args.frames

    torch.set_num_threads(1)
    predictor, _ = load_predictor(model)
    began = time.perf_counter()
    for n, bag in enumerate(bags):
        process_bag(bag, root / f"single{n}", predictor, options, log=lambda message: None)
    single = frames / (time.perf_counter() - began)

    _import_path_for_workers()
    ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results = []
    for workers in args.workers:
        config = FleetConfig(workers=workers, progress=False)
        began = time.perf_counter()
        run_fleet(bags[:1], root / f"warm{workers}", options, model, config, {}, log=lambda message: None)
        startup = time.perf_counter() - began
        manifest = run_fleet(bags, root / f"fleet{workers}", options, model, config, {}, log=lambda message: None)
        run = manifest["runs"][-1]
        results.append({"workers": workers, "frames": run["frames"], "seconds": run["seconds"],
                        "frames_per_s": round(run["frames"] / run["seconds"], 2),
                        "driver_cpu_ms_per_frame": round(1000 * run["driver_cpu_s"] / max(1, run["frames"]), 2),
                        "startup_s": round(startup, 2)})
    ray.shutdown()
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_avg_1m": round(os.getloadavg()[0], 1), "torch": torch.__version__, "ray": ray.__version__},
        "setup": {"bags": args.bags, "frames_per_bag": args.frames, "size": args.size, "input_size": args.input_size,
                  "checkpoint": args.checkpoint or "tiny random", "device": args.device, "clicks_per_frame": 2},
        "single_process_frames_per_s": round(single, 2),
        "fleet": results,
    }, indent=1))


if __name__ == "__main__":
    main()
