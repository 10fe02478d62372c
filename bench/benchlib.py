"""Shared helpers of the benchmark scripts: models, timing, peak memory, machine description, output files."""
from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the source tree this script belongs to

from semsam_ros.io.checkpoint import load_model  # noqa: E402
from semsam_ros.config import ModelConfig  # noqa: E402
from semsam_ros.model.semantic_sam import SemanticSam  # noqa: E402
from semsam_ros.testing import random_model, tiny_config  # noqa: E402

MODELS = ("tiny", "swint")


def make_model(name: str, checkpoint: str | None = None) -> SemanticSam:
    """A checkpoint's model, or random weights for the "tiny" test config or the "swint" preset."""
    if checkpoint:
        return load_model(checkpoint)
    config = tiny_config() if name == "tiny" else ModelConfig.preset(name)
    return random_model(config)


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of ``fn()`` per call (device synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def latency(times: list[float]) -> dict[str, float]:
    """Median and p99 (nearest rank) of per-call milliseconds."""
    arr = np.sort(np.asarray(times))
    p99 = arr[min(len(arr) - 1, int(np.ceil(0.99 * len(arr))) - 1)]
    return {"median_ms": round(float(np.median(arr)), 3), "p99_ms": round(float(p99), 3), "iters": len(arr)}


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """Peak resident set size of this process over a ``with`` block, in MB (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, value 5) and reads ``VmHWM`` afterwards; where
    the reset is not permitted it samples ``VmRSS`` every millisecond on a thread instead.
    """

    def __init__(self) -> None:
        self.start_mb = self.peak_mb = 0.0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self.start_mb = _status_kb("VmRSS") / 1024
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, _status_kb("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._sampled, _status_kb("VmRSS")) / 1024
        else:
            self.peak_mb = _status_kb("VmHWM") / 1024

    @property
    def extra_mb(self) -> float:
        """Peak above the resident size at the start of the block (0 when memory was only released)."""
        return max(0.0, self.peak_mb - self.start_mb)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict filled on exit: GPU ``peak_gpu_mb`` (allocator peak) or CPU ``peak_rss_mb``, ``extra_rss_mb``."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        synchronize(device)
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        with PeakRSS() as rss:
            yield out
        out["peak_rss_mb"] = round(rss.peak_mb, 1)
        out["extra_rss_mb"] = round(rss.extra_mb, 1)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        import torch_tensorrt

        info["torch_tensorrt"] = torch_tensorrt.__version__
    except Exception:
        info["torch_tensorrt"] = None
    return info


def command_line() -> str:
    return "python3 " + " ".join(sys.argv)


def write_json(result: dict[str, Any], path: str | None) -> None:
    """Print the JSON; also write it to ``path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")
