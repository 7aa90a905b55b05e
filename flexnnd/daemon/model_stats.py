"""What one model served since it was loaded: Triton's statistics and the metrics' histograms."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

# Upper bounds of the seconds histograms: 1 ms (a small model on a desktop) to a minute (a swap on a Pi).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Upper bounds of the bytes-read-per-inference histogram: none (all resident), then 64 KiB to 4 GiB by 4x.
BYTES_BUCKETS = (0, *(64 << 10 << 2 * k for k in range(9)))


class Histogram:
    """Observations counted under fixed upper bounds (a value equal to a bound counts under it)."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last counts what lies above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Observations at or below each bound, then the total: Prometheus' `le` buckets."""
        running, out = 0, []
        for n in self.counts:
            running += n
            out.append(running)
        return out


@dataclass
class Duration:
    """A count and the summed duration of its occurrences (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))


class ModelStats:
    """What one model served since it was loaded. Readers hold `lock` to see one consistent state.

    A request's time splits into decoding its inputs, waiting for the arena (another inference or a
    swap), running and encoding its outputs; `success` is the whole of it, `fail` the time of requests
    refused or failed. The warm-up inference at load goes through the session directly: not counted.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.success, self.fail, self.queue = Duration(), Duration(), Duration()
        self.compute_input, self.compute_infer, self.compute_output = Duration(), Duration(), Duration()
        self.inferences = 0  # successful runs
        self.last_inference_ms = 0  # wall clock when the last run ended
        self.last_latency_s: float | None = None  # the last served run's time in the session
        self.latency = Histogram(SECONDS_BUCKETS)
        self.stall = Histogram(SECONDS_BUCKETS)  # per run: how long compute waited for streamed weights
        self.read_bytes = Histogram(BYTES_BUCKETS)  # per run: bytes the loader read
        self.swap_seconds = Histogram(SECONDS_BUCKETS)  # plan swaps of this model (not its first load)

    def ran(self, queue_s: float, infer_s: float, stall_s: float, read_bytes: int) -> None:
        with self.lock:
            self.inferences += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.last_latency_s = infer_s
            self.queue.add(queue_s)
            self.compute_infer.add(infer_s)
            self.latency.observe(infer_s)
            self.stall.observe(stall_s)
            self.read_bytes.observe(read_bytes)

    def answered(self, input_s: float, output_s: float, total_s: float) -> None:
        with self.lock:
            self.compute_input.add(input_s)
            self.compute_output.add(output_s)
            self.success.add(total_s)

    def failed(self, total_s: float) -> None:
        with self.lock:
            self.fail.add(total_s)

    def swapped(self, seconds: float) -> None:
        with self.lock:
            self.swap_seconds.observe(seconds)
