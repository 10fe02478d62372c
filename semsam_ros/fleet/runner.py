"""``run_fleet``: many bags through ``process_bag`` on Ray actors, with a manifest, retries and one progress bar.

The only module of the package that imports Ray. The driver plans the work units, starts the workers (actors that
load the model once), hands them units and, once every unit of a bag is done, the bag's finishing step (merge,
Parquet, move into place); it records every result in the manifest as it comes (see docs/fleet.md).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from semsam_ros.bag.options import BagOptions
from semsam_ros.bag.reader import BagError
from semsam_ros.fleet.plan import Unit, output_names, plan_units
from semsam_ros.fleet.work import Layout, finish_bag, process_unit
from semsam_ros.inference.options import ModelOptions
from semsam_ros.text import one_line

MANIFEST_FORMAT = 1
PROGRESS_PERIOD_S = 0.25  # how often a worker reports its frames to the driver
_POOL: dict[tuple, tuple[Any, list[Any]]] = {}  # workers kept between the runs of a process on a Ray instance that
# it did not start (a script, a notebook, the tests), by Ray job, model and resources


class FleetError(Exception):
    """A fleet run that cannot start as asked (an output folder of another run, no worker...)."""


@dataclass
class FleetConfig:
    """How a fleet run is spread: Ray address (None: a local instance), workers and their resources, slices."""

    address: str | None = None
    workers: int | None = None  # None: as many as the cluster's GPUs (or CPUs) allow, at most one per unit
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs and the device is not cpu
    slice_seconds: float | None = None
    retries: int = 1
    progress: bool = True


@ray.remote(num_cpus=0)
class _Progress:
    """Frames processed by the workers since the driver last asked."""

    def __init__(self) -> None:
        self.frames = 0

    def add(self, frames: int) -> None:
        self.frames += frames

    def take(self) -> int:
        frames, self.frames = self.frames, 0
        return frames


@ray.remote
class _Worker:
    """One worker: loads the model once, then processes units and finishes bags."""

    def __init__(self, model: ModelOptions, threads: int, progress: Any) -> None:
        import torch

        from semsam_ros.inference.options import load_predictor

        torch.set_num_threads(max(1, threads))
        self.predictor, self.model_id = load_predictor(model)
        self.progress, self.frames, self.reported = progress, 0, time.monotonic()

    def ready(self) -> str:
        return self.model_id

    def _tick(self) -> None:
        self.frames += 1
        if time.monotonic() - self.reported > PROGRESS_PERIOD_S:
            self._report()

    def _report(self) -> None:
        if self.frames:
            self.progress.add.remote(self.frames)
        self.frames, self.reported = 0, time.monotonic()

    def process(self, src: Path, dst: Path, options: BagOptions, unit: Unit) -> dict:
        try:
            return process_unit(src, dst, self.predictor, options, unit, self._tick)
        finally:
            self._report()

    def finish(self, layout: Layout, name: str, units: int, options: BagOptions) -> dict:
        return finish_bag(layout, name, units, options, self.model_id)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for package in ("semsam_ros", "torch", "ray", "rosbags", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {one_line(str(cause))}"[:2000]


class _Manifest:
    """DIR/fleet.json: written whole, atomically, after every change."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data

    @classmethod
    def open(cls, path: Path, fresh: dict) -> _Manifest:
        if not path.exists():
            return cls(path, fresh)
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in ("options", "weights"):
            if data.get(key) != fresh[key]:
                raise FleetError(f"{path.parent} holds a fleet run with other {key}; resume it with the same ones "
                                 "or choose another --out")
        data["inputs"] = list(dict.fromkeys(data["inputs"] + fresh["inputs"]))
        data["versions"] = fresh["versions"]
        return cls(path, data)

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def run_fleet(bags: list[Path], out: Path, options: BagOptions, model: ModelOptions, config: FleetConfig,
              settings: dict, log: Callable[[str], None] = print) -> dict:
    """Process ``bags`` into ``out`` (see docs/fleet.md); returns the manifest. ``settings``: the options as JSON
    (a re-run resumes only with the same ones). KeyboardInterrupt propagates once the manifest is saved."""
    from tqdm import tqdm

    from semsam_ros.io.hashing import file_sha256

    bags, out = [b.absolute() for b in bags], out.absolute()  # workers may run elsewhere, in another folder
    model = dataclasses.replace(model, checkpoint=str(Path(model.checkpoint).absolute()))
    layout = Layout(out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = {"semsam_fleet": MANIFEST_FORMAT, "inputs": [str(b) for b in bags],
             "weights": {"checkpoint": str(model.checkpoint), "sha256": file_sha256(model.checkpoint)},
             "versions": versions(), "options": settings, "bags": {}, "runs": []}
    manifest = _Manifest.open(layout.manifest, fresh)
    entries = manifest.data["bags"]
    queue: deque[tuple[str, str, int]] = deque()  # (kind, bag name, unit index)
    total = 0
    for name, src in zip(output_names(bags), bags):
        entry = entries.get(name)
        if entry is not None and entry["input"] != str(src):
            raise FleetError(f"output name {name} is taken by {entry['input']} in {layout.manifest}; rename {src}")
        if entry is not None and entry["status"] == "done" and layout.bag(name).exists():
            continue
        if entry is None or not entry.get("units"):
            try:
                units, frames = plan_units(src, options, config.slice_seconds)
            except BagError:  # unreadable: one unit, whose failure the workers retry and record
                units, frames = [Unit(0)], 0
            entry = entries[name] = {"input": str(src), "output": f"bags/{name}", "dataset": f"segments/{name}.parquet",
                                     "frames_estimated": frames,
                                     "units": [{"start": u.start, "stop": u.stop, "status": "pending"} for u in units]}
        entry.update(status="pending", error=None)
        count = len(entry["units"])
        for index, unit in enumerate(entry["units"]):
            if unit["status"] != "done" or not layout.part(name, index, count).exists():
                unit["status"] = "pending"
                queue.append(("process", name, index))
                total += round(entry["frames_estimated"] / count)
        if all(u["status"] == "done" for u in entry["units"]):
            queue.appendleft(("finish", name, 0))
    manifest.save()
    run = {"started": _now(), "address": config.address, "workers": 0, "frames": 0, "seconds": 0.0}
    manifest.data["runs"].append(run)
    if not queue:
        log(f"nothing to do: every bag in {out} is done")
        return manifest.data

    started = not ray.is_initialized()
    if started:
        if config.address is None:  # the local instance's workers import this very package
            _import_path_for_workers()
        ray.init(address=config.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    began, cpu_began = time.perf_counter(), time.process_time()
    bar = tqdm(total=total, unit="frame", desc="semsam fleet", disable=not config.progress, dynamic_ncols=True)
    actors: list[Any] = []
    spare: list[Any] = []
    kept = False
    key = (ray.get_runtime_context().get_job_id(), repr(model), config.cpus_per_worker, config.gpus_per_worker)
    try:
        progress, actors = _POOL.pop(key, (None, []))
        progress = progress or _Progress.remote()
        new_worker = _worker_factory(model, config, progress)
        count = _worker_count(config, model, sum(1 for kind, _, _ in queue if kind == "process") or 1)
        actors += [new_worker() for _ in range(count - len(actors))]
        actors, spare = actors[:count], actors[count:]
        try:
            ray.get([actor.ready.remote() for actor in actors])
        except Exception as exc:  # noqa: BLE001  (the model cannot load: nothing can run)
            raise FleetError(f"the workers cannot load the model: {_error(exc)}") from None
        run["workers"] = count
        _drive(queue, actors, new_worker, progress, bar, layout, entries, options, config, manifest, run)
        if not started:  # the caller's Ray instance: the workers wait, model loaded, for its next run
            _POOL[key], kept = (progress, actors + spare), True
    except KeyboardInterrupt:
        run["interrupted"] = True
        for entry in entries.values():
            if entry["status"] == "pending":
                entry["status"] = "interrupted"
        raise
    finally:
        bar.close()
        if not kept:  # busy ones may be mid-unit; idle spare ones wait for the next run (not after Ray is shut down)
            if spare and not started:
                _POOL[key] = (progress, spare)
            for actor in actors + (spare if started else []):
                ray.kill(actor)
        run["seconds"] = round(time.perf_counter() - began, 3)
        run["driver_cpu_s"] = round(time.process_time() - cpu_began, 3)
        run["frames_per_s"] = round(run["frames"] / run["seconds"], 3) if run["seconds"] else 0.0
        run["finished"] = _now()
        manifest.save()
        if started:
            ray.shutdown()
    return manifest.data


def _worker_factory(model: ModelOptions, config: FleetConfig, progress: Any) -> Callable[[], Any]:
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) and model.device != "cpu" else 0.0
    threads = max(1, int(config.cpus_per_worker))
    return lambda: _Worker.options(num_cpus=config.cpus_per_worker, num_gpus=gpus).remote(
        model, threads, progress)


def _import_path_for_workers() -> None:
    """PYTHONPATH starts with the folder this package is in (the workers of a local instance inherit it)."""
    root = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if paths[0] != root:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])


def _worker_count(config: FleetConfig, model: ModelOptions, units: int) -> int:
    if config.workers:
        return config.workers
    resources = ray.cluster_resources()
    gpus = config.gpus_per_worker if config.gpus_per_worker is not None else 1.0
    if resources.get("GPU", 0) and model.device != "cpu" and gpus > 0:
        count = int(resources["GPU"] // gpus)
    else:
        count = int(resources.get("CPU", 1) // max(config.cpus_per_worker, 1e-3))
    return max(1, min(count, units))


def _drive(queue: deque, actors: list[Any], new_worker: Callable[[], Any], progress: Any, bar: Any, layout: Layout,
           entries: dict, options: BagOptions, config: FleetConfig, manifest: _Manifest, run: dict) -> None:
    """Hand out tasks until none is left: a bag's units, then its finishing step as soon as they are all done."""
    idle = list(enumerate(actors))
    running: dict[Any, tuple[tuple[int, Any], tuple[str, str, int], float]] = {}
    attempts: dict[tuple[str, str, int], int] = {}
    while queue or running:
        while idle and queue:
            task = queue.popleft()
            kind, name, index = task
            entry = entries[name]
            if entry["status"] == "failed":
                continue
            worker = idle.pop()
            units = len(entry["units"])
            if kind == "process":
                unit = entry["units"][index]
                ref = worker[1].process.remote(Path(entry["input"]), layout.part(name, index, units), options,
                                               Unit(index, unit["start"], unit["stop"]))
            else:
                ref = worker[1].finish.remote(layout, name, units, options)
            running[ref] = (worker, task, time.perf_counter())
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
        frames = ray.get(progress.take.remote())
        run["frames"] += frames
        bar.update(frames)
        for ref in done:
            worker, task, t0 = running.pop(ref)
            kind, name, index = task
            entry = entries[name]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError:  # the worker died (e.g. out of memory): a new one, and retry
                worker = (worker[0], new_worker())
                actors[worker[0]] = worker[1]
                result = None
                error = "the worker died"
            except Exception as exc:  # noqa: BLE001  (the unit's own failure: retried, then recorded)
                result, error = None, _error(exc)
            idle.append(worker)
            if entry["status"] == "failed":
                continue
            if result is None:
                attempts[task] = attempts.get(task, 0) + 1
                if attempts[task] <= config.retries:
                    queue.append(task)
                else:
                    entry.update(status="failed", error=error, attempts=attempts[task])
                    bar.write(f"semsam fleet: {name} failed: {error}", file=sys.stderr)
            elif kind == "process":
                entry["units"][index].update(status="done", worker=worker[0], attempts=attempts.get(task, 0) + 1,
                                             **result)
                if all(u["status"] == "done" for u in entry["units"]):
                    queue.appendleft(("finish", name, 0))
            else:
                units = entry["units"]
                entry.update(status="done", rows=result["rows"], finish_seconds=result["seconds"],
                             frames=sum(u["frames"] for u in units), segmented=sum(u["segmented"] for u in units),
                             seconds=round(sum(u["seconds"] for u in units) + result["seconds"], 3))
            manifest.save()
