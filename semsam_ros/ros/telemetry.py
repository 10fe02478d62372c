"""What the node tells about itself: errors counted per cause (logged at most once per period), output rate and
latency, counters, and the /diagnostics summary built from them."""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

import numpy as np

COUNTERS = ("frames_received", "frames_skipped", "frames_dropped", "frames_encoded", "results", "prompts_received",
            "prompts_answered", "prompts_rejected")


class ErrorLog:
    """Counts errors per cause and logs each cause at most once per ``period_s`` (bad input never kills the node)."""

    def __init__(self, log: Callable[[str], None], period_s: float, clock: Callable[[], float]) -> None:
        self._log, self.period_s, self._clock = log, period_s, clock
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def report(self, cause: str, message: str) -> None:
        with self._lock:
            count = self.counts[cause] = self.counts.get(cause, 0) + 1
            now = self._clock()
            due = cause not in self._last or now - self._last[cause] >= self.period_s
            if due:
                self._last[cause] = now
        if due:
            self._log(f"{message} [{cause}: {count} so far]")


class RateMeter:
    """Outputs per second and mean latency over a sliding window (the worker adds, diagnostics read)."""

    def __init__(self, clock: Callable[[], float], window_s: float = 5.0) -> None:
        self._clock, self._window = clock, window_s
        self._events: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, latency_ms: float) -> None:
        with self._lock:
            self._events.append((self._clock(), latency_ms))

    def summary(self) -> tuple[float, float]:
        """(rate in Hz, mean latency in ms) of the last window; zeros when empty."""
        now = self._clock()
        with self._lock:
            while self._events and now - self._events[0][0] > self._window:
                self._events.popleft()
            latencies = [lat for _, lat in self._events]
        if not latencies:
            return 0.0, 0.0
        return len(latencies) / self._window, float(np.mean(latencies))


class Telemetry:
    """Counters, the error log and the rate meter of one node (or one offline run)."""

    def __init__(self, log: Callable[[str], None], error_log_period: float, clock: Callable[[], float]) -> None:
        self.errors = ErrorLog(log, error_log_period, clock)
        self.rate = RateMeter(clock)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._errors_reported = 0

    def report(self, stage: str, exc: Exception) -> None:
        """Count and log a failure once per cause: its stage, exception type, and encoding or prompt problem."""
        detail = getattr(exc, "cause", None) or getattr(exc, "encoding", None)
        cause = f"{stage}/{type(exc).__name__}" + (f"/{detail}" if detail else "")
        if stage == "prompt":
            self.counters["prompts_rejected"] += 1
            self.errors.report(cause, f"prompt rejected: {exc}")
        else:
            self.errors.report(cause, f"{stage} error: {exc}")

    def stats(self, **state: Any) -> dict[str, Any]:
        """Counters, errors per cause, output rate and latency, and the caller's ``state`` values."""
        rate, latency = self.rate.summary()
        return {**self.counters, "rate_hz": rate, "latency_ms": latency, **state, "errors": dict(self.errors.counts)}

    def diagnostics(self, model_id: str, **state: Any) -> tuple[int, str, dict[str, str]]:
        """(level 0 OK / 1 WARN, summary, key-values) for /diagnostics; WARN when errors happened since the last
        call."""
        stats = self.stats(**state)
        errors = stats.pop("errors")
        total = sum(errors.values())
        new, self._errors_reported = total - self._errors_reported, total
        values = {k: (f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in stats.items()}
        values.update({f"errors/{cause}": str(count) for cause, count in sorted(errors.items())})
        values["model_id"] = model_id
        if new:
            return 1, f"{new} error(s) since the last report; causes: {', '.join(sorted(errors))}", values
        return 0, f"{stats['rate_hz']:.1f} results/s, {stats['latency_ms']:.0f} ms", values
