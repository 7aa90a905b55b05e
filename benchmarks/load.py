"""Load with budget thrash: N clients infer back to back while the budget jumps across the whole ladder.

    python -m benchmarks.load --clients 8 --seconds 600 --model resnet18 --swap-every 3

A daemon serves one model. Client processes (or threads) infer as fast as they are answered; a
budget thread sets a random rung of the ladder every --swap-every seconds (each cycle visits every
rung, the smallest and `auto` included, in a shuffled order) with the Client's set_budget, which
returns once the plan is adopted. A sampler reads the daemon's VmRSS/VmHWM from /proc.

Checks, per request:
- status: OK, or RESOURCE_EXHAUSTED (over capacity: counted as a rejection, the client backs off
  and retries); anything else is a failure.
- plan: the output must equal bit for bit the reference of a plan that may have been active while
  the request was in flight. A plan is possibly active from the start of the set_budget call that
  adopts it to the end of the call that replaces it, so it is one plan, or two around a swap. The
  references come from flexnnd.Session in this process on the daemon's own package and ladder,
  one per rung, with the daemon's thread count.
- tolerance: within max|diff| ≤ 1e-4·max(1, max|ref|) of the all-resident reference.
Memory: RSS − runtime_overhead_bytes (from status) against the budget in force: the rung's budget
when steady; during a set_budget call the larger of the old and new budgets (a lowered budget
waits for the inference in flight on the old arena), or their sum when going to `auto` (no budget:
the old plan serves while the new arena loads). `auto` counts as the top rung's budget. VmHWM is
reset after each swap (clear_refs 5, as root) and read before the next one: the peak of each
steady interval, against that interval's budget.

Writes benchmarks/results/load.json when run with the default --out (results are not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import queue
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tests.daemon.harness import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "load.json"
CACHE = ROOT / "benchmarks" / ".cache" / "daemon"
REJECTED = "RESOURCE_EXHAUSTED"
BACKOFF_S = 0.005  # a rejected client waits this long before it tries again
TOLERANCE = 1e-4  # the engine's: max|diff| ≤ TOLERANCE · max(1, max|ref|)


@dataclass(frozen=True)
class Request:
    client: int
    input_index: int
    start: float  # time.monotonic() when sent (system-wide clock: comparable across processes)
    end: float
    status: str  # "OK", "RESOURCE_EXHAUSTED", or the failure's gRPC code / exception name
    matches: tuple[int, ...] = ()  # arena bytes of every rung whose reference this output equals bit for bit
    diff_over_bound: float = 0.0  # max|out − all-resident ref| / (TOLERANCE · max(1, max|ref|))
    detail: str = ""


@dataclass(frozen=True)
class Change:
    """One set_budget call: the plan before and after, and the VmHWM of the steady interval before it."""

    t0: float
    t1: float
    choice: str  # the budget as sent: bytes, or "auto"
    cost_before: int  # budget in force before (auto: the top rung's budget)
    cost_after: int
    arena_before: int
    arena_after: int  # from status once the call returned
    arena_expected: int  # the rung's arena for this budget
    to_auto: bool
    hwm_before: int | None  # VmHWM read just before the call (peak since the reset after the last change)
    error: str = ""


@dataclass(frozen=True)
class Sample:
    ta: float  # before reading /proc
    tb: float  # after
    rss: int
    rss_anon: int


@dataclass
class References:
    """Per input: the sha256 of each rung's output bytes, and the all-resident reference."""

    digests: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
    full: list[dict[str, np.ndarray]] = field(default_factory=list)
    distinct: int = 0  # how many different outputs the rungs give (bit-identical rungs count once)


def output_digest(outputs: dict[str, np.ndarray], names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(np.ascontiguousarray(outputs[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def build_references(
    package_dir: Path, arenas: list[int], inputs: list[np.ndarray], input_name: str, threads: int = 1
) -> References:
    """Run every input on every rung of the daemon's ladder (matched by arena size) and all resident."""
    import flexnnd

    refs = References()
    with flexnnd.Session(package_dir, budget=None, threads=threads) as sess:
        names = [t.name for t in sess.outputs]
        refs.full = [{k: v.copy() for k, v in sess.run({input_name: x}).items()} for x in inputs]
        by_arena = {p.arena_bytes: p for p in sess.ladder or ()}
        missing = sorted(set(arenas) - set(by_arena))
        if missing:
            raise RuntimeError(
                f"rungs with arenas {missing} are not in the package's ladder {sorted(by_arena)}"
            )
        digests: list[dict[str, list[int]]] = [{} for _ in inputs]
        for arena in arenas:
            sess.adopt(by_arena[arena], None, overlap=False)
            for i, x in enumerate(inputs):
                digests[i].setdefault(output_digest(sess.run({input_name: x}), names), []).append(arena)
    refs.digests = [{k: tuple(v) for k, v in d.items()} for d in digests]
    refs.distinct = max(len(d) for d in digests)
    return refs


def check(
    outputs: dict[str, np.ndarray], digests: dict[str, tuple[int, ...]], full: dict[str, np.ndarray]
) -> tuple[tuple[int, ...], float]:
    """(rungs this output equals bit for bit, max|diff| to the all-resident reference over its bound)."""
    names = list(full)
    worst = 0.0
    for name in names:
        ref = full[name]
        bound = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(outputs[name].astype(np.float64) - ref).max())
        worst = max(worst, diff / bound if np.isfinite(diff) else float("inf"))
    return digests.get(output_digest(outputs, names), ()), worst


def client_loop(
    client: int,
    address: str,
    model: str,
    input_name: str,
    inputs: list[np.ndarray],
    refs: References,
    ready,
    stop,
    put,
) -> None:
    """Infer back to back until `stop` is set; `put` receives the list of Requests at the end."""
    from flexnn_client.client import Client, ClientError

    records: list[Request] = []
    try:
        with Client(address, timeout=300) as c:
            c.model_metadata(model)  # connected before the start signal
            ready()
            n = client
            while not stop.is_set():
                i = n % len(inputs)
                n += 1
                start = time.monotonic()
                try:
                    outputs = c.infer(model, {input_name: inputs[i]})
                except ClientError as e:
                    end = time.monotonic()
                    code = e.code.name if e.code is not None else type(e).__name__
                    records.append(
                        Request(client, i, start, end, code, detail="" if code == REJECTED else str(e))
                    )
                    if code == REJECTED:
                        time.sleep(BACKOFF_S)
                    continue
                end = time.monotonic()
                matches, over = check(outputs, refs.digests[i], refs.full[i])
                records.append(Request(client, i, start, end, "OK", matches, over))
    except Exception as e:  # a client that dies is a failure to report, not a silent gap
        records.append(
            Request(client, -1, time.monotonic(), time.monotonic(), type(e).__name__, detail=repr(e))
        )
    finally:
        put(records)


def _process_client(args, barrier, stop, results) -> None:
    client_loop(*args, ready=barrier.wait, stop=stop, put=results.put)


class Clients:
    """`count` clients in processes (no shared GIL, like separate apps) or threads."""

    def __init__(
        self,
        count: int,
        mode: str,
        address: str,
        model: str,
        input_name: str,
        inputs: list[np.ndarray],
        refs: References,
    ):
        self.mode = mode
        self.records: list[Request] = []
        if mode == "process":
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding grpc and numba
            self._barrier, self._stop, self._results = ctx.Barrier(count + 1), ctx.Event(), ctx.Queue()
            self._workers = [
                ctx.Process(
                    target=_process_client,
                    daemon=True,
                    args=(
                        (i, address, model, input_name, inputs, refs),
                        self._barrier,
                        self._stop,
                        self._results,
                    ),
                )
                for i in range(count)
            ]
        elif mode == "thread":
            self._barrier, self._stop, self._results = (
                threading.Barrier(count + 1),
                threading.Event(),
                queue.Queue(),
            )
            self._workers = [
                threading.Thread(
                    target=client_loop,
                    daemon=True,
                    args=(i, address, model, input_name, inputs, refs),
                    kwargs={"ready": self._barrier.wait, "stop": self._stop, "put": self._results.put},
                )
                for i in range(count)
            ]
        else:
            raise ValueError(f"client mode {mode!r}: use 'process' or 'thread'")

    def start(self, timeout: float = 300) -> None:
        for w in self._workers:
            w.start()
        self._barrier.wait(timeout)

    def stop(self, timeout: float = 300) -> None:
        self._stop.set()
        for _ in self._workers:  # drain before joining: a process with a full pipe cannot exit
            self.records.extend(self._results.get(timeout=timeout))
        for w in self._workers:
            w.join(timeout)


def proc_memory(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_hwm(pid: int) -> bool:
    """VmHWM := current RSS (needs root or the same user)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    def __init__(self, pid: int, every_s: float):
        self.pid, self.every_s = pid, every_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            ta = time.monotonic()
            m = proc_memory(self.pid)
            self.samples.append(Sample(ta, time.monotonic(), m["VmRSS"], m["RssAnon"]))
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def expected_arena(plans: list, budget: int) -> int:
    """The daemon's choice for one model: the rung that fits with the least predicted latency (then the
    largest), not necessarily the largest (flexnnd/daemon/models.py split_budget)."""
    fits = [p for p in plans if p.budget_bytes <= budget]
    return min(fits, key=lambda p: (p.predicted_latency_s, -p.budget_bytes)).arena_bytes


class Thrash:
    """Sets a random rung every `every_s` seconds: the smallest, then auto, then cycles that each visit
    every choice once in a shuffled order."""

    def __init__(self, client, model: str, pid: int, plans: list, every_s: float, seed: int):
        self.c, self.model, self.pid, self.every_s = client, model, pid, every_s
        self.plans = plans
        self.top = max(plans, key=lambda p: p.budget_bytes)
        self.choices = [str(p.budget_bytes) for p in sorted(plans, key=lambda p: p.budget_bytes)] + ["auto"]
        self.rng = random.Random(seed)
        self.changes: list[Change] = []
        self.hwm_available = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.current = ("auto", self.top.budget_bytes, self._arena())

    def _arena(self) -> int:
        return next(m.arena_bytes for m in self.c.status().models if m.name == self.model)

    def _sequence(self):
        yield from (self.choices[0], "auto")  # the two extremes first: the largest swaps, down then up
        while True:
            cycle = list(self.choices)
            self.rng.shuffle(cycle)
            yield from cycle

    def _run(self) -> None:
        self.hwm_available = reset_hwm(self.pid)
        for choice in self._sequence():
            if self._stop.wait(self.every_s):
                return
            cost = self.top.budget_bytes if choice == "auto" else int(choice)
            arena = self.top.arena_bytes if choice == "auto" else expected_arena(self.plans, cost)
            if arena == self.current[2]:
                continue  # the same plan (auto and the top rung): no swap to make
            hwm = proc_memory(self.pid)["VmHWM"] if self.hwm_available else None
            t0 = time.monotonic()
            error = ""
            try:
                self.c.set_budget(choice)
            except Exception as e:
                error = repr(e)
            t1 = time.monotonic()
            self.hwm_available = self.hwm_available and reset_hwm(self.pid)
            now_arena = self._arena()
            before = self.current
            self.changes.append(
                Change(
                    t0, t1, choice, before[1], cost, before[2], now_arena, arena, choice == "auto", hwm, error
                )
            )
            self.current = (choice, cost, now_arena)

    def __enter__(self) -> Thrash:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(300)


class Watch:
    """Swap events from WatchEvents, for their durations and whether the old plan served meanwhile."""

    def __init__(self, daemon: DaemonProcess):
        self._client = daemon.client()
        self.swaps: list = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when the channel closes
            for e in self._client.watch():
                if e.kind == e.KIND_SWAP:
                    self.swaps.append(
                        (e.from_bytes, e.to_bytes, e.duration_s, "old plan served" in e.message)
                    )
                elif e.kind == e.KIND_ERROR:
                    self.errors.append(e.message)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # the last swap's event
        self._client.close()
        self._thread.join(10)


# ----- analysis -------------------------------------------------------------------------------


def possible_plans(changes: list[Change], initial_arena: int):
    """Each plan with the interval in which it may have served: from the start of the call that
    adopted it to the end of the call that replaced it."""
    spans, start, arena = [], -float("inf"), initial_arena
    for ch in changes:
        spans.append((start, ch.t1, arena))
        start, arena = ch.t0, ch.arena_after
    spans.append((start, float("inf"), arena))
    return spans


def bound_at(changes: list[Change], initial_cost: int, ta: float, tb: float) -> tuple[int, str, int]:
    """(budget in force over [ta, tb], "steady" or "swap", the budget the daemon was last told)."""
    cost = initial_cost
    for ch in changes:
        if tb < ch.t0:
            break
        if ta <= ch.t1:  # the sample overlaps this call
            together = ch.cost_before + ch.cost_after if ch.to_auto else max(ch.cost_before, ch.cost_after)
            return together, "swap", ch.cost_after
        cost = ch.cost_after
    return cost, "steady", cost


def pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


def analyse(
    records: list[Request],
    changes: list[Change],
    samples: list[Sample],
    initial: tuple[int, int],
    overhead: int,
    anon_overhead: int,
    seconds: float,
    watch: Watch | None,
    daemon_swaps: int | None,
) -> dict:
    """The report. `anon_overhead` is RssAnon beside the arena before the load: file-backed pages (code,
    mapped libraries) may be reclaimed under the machine's pressure and hide an excess of plain RSS."""
    initial_cost, initial_arena = initial
    ok = [r for r in records if r.status == "OK"]
    rejected = [r for r in records if r.status == REJECTED]
    failed = [r for r in records if r.status not in ("OK", REJECTED)]
    spans = possible_plans(changes, initial_arena)

    wrong_plan, out_of_tolerance, ambiguous, at_completion = [], [], 0, 0
    served = Counter()
    for r in ok:
        candidates = {a for s, e, a in spans if s <= r.end and r.start <= e}
        completion = {a for s, e, a in spans if s <= r.end <= e}
        ambiguous += len(candidates) > 1
        at_completion += bool(completion & set(r.matches))
        if not candidates & set(r.matches):
            wrong_plan.append(
                {
                    "start": r.start,
                    "end": r.end,
                    "client": r.client,
                    "input": r.input_index,
                    "possible_plans": sorted(candidates),
                    "bit_equal_to": list(r.matches),
                }
            )
        if len(candidates) == 1:
            served[next(iter(candidates))] += 1
        if r.diff_over_bound > 1.0:
            out_of_tolerance.append(
                {"start": r.start, "client": r.client, "diff_over_bound": r.diff_over_bound}
            )

    latencies = [r.end - r.start for r in ok]
    worst = {"steady": None, "swap": None, "anon": None}
    per_budget: dict[int, int] = {}
    for s in samples:
        bound, phase, told = bound_at(changes, initial_cost, s.ta, s.tb)
        excess = s.rss - overhead - bound
        if worst[phase] is None or excess > worst[phase]["excess_bytes"]:
            worst[phase] = {
                "excess_bytes": excess,
                "rss_bytes": s.rss,
                "budget_in_force_bytes": bound,
                "t": s.ta,
            }
        anon_excess = s.rss_anon - anon_overhead - bound
        if worst["anon"] is None or anon_excess > worst["anon"]["excess_bytes"]:
            worst["anon"] = {
                "excess_bytes": anon_excess,
                "rss_anon_bytes": s.rss_anon,
                "budget_in_force_bytes": bound,
                "phase": phase,
                "t": s.ta,
            }
        if phase == "steady":
            per_budget[told] = max(per_budget.get(told, -(1 << 62)), excess)
    timeline: dict[int, list] = {}  # per second of the run: the largest RSS − overhead, and the bound
    t_first = samples[0].ta if samples else 0.0
    for s in samples:
        second = int(s.ta - t_first)
        bound, _, _ = bound_at(changes, initial_cost, s.ta, s.tb)
        if second not in timeline or s.rss - overhead > timeline[second][1]:
            timeline[second] = [second, s.rss - overhead, bound]
    hwm = []
    for i, ch in enumerate(changes):
        if ch.hwm_before is not None and i > 0:  # the first interval began before the reset
            hwm.append(
                {
                    "budget_bytes": changes[i - 1].cost_after,
                    "excess_bytes": ch.hwm_before - overhead - changes[i - 1].cost_after,
                }
            )
    swap_durations = [d for _, _, d, _ in watch.swaps] if watch else []
    return {
        "requests": {
            "total": len(records),
            "ok": len(ok),
            "rejected": len(rejected),
            "failed": len(failed),
            "failures": [asdict(r) for r in failed[:20]],
            "failure_kinds": dict(Counter(r.status for r in failed)),
        },
        "throughput_per_s": len(ok) / seconds,
        "latency_s": {
            "p50": pct(latencies, 50),
            "p99": pct(latencies, 99),
            "max": pct(latencies, 100),
            "mean": float(np.mean(latencies)) if latencies else None,
        },
        "swaps": {
            "budget_changes": len(changes),
            "failed_budget_changes": [c.error for c in changes if c.error],
            "plan_changes": sum(c.arena_before != c.arena_after for c in changes),
            "wrong_plan_after_change": [asdict(c) for c in changes if c.arena_after != c.arena_expected],
            "watched": len(swap_durations),
            "overlapped": sum(o for *_, o in watch.swaps) if watch else None,
            "duration_s": {
                "p50": pct(swap_durations, 50),
                "p99": pct(swap_durations, 99),
                "max": pct(swap_durations, 100),
            },
            "daemon_counter": daemon_swaps,
            "choices": dict(Counter(c.choice for c in changes)),
            "error_events": watch.errors[:20] if watch else [],
        },
        "correctness": {
            "checked": len(ok),
            "bit_equal_to_a_possible_plan": len(ok) - len(wrong_plan),
            "bit_equal_to_plan_at_completion": at_completion,
            "possibly_two_plans": ambiguous,
            "within_tolerance_of_all_resident": len(ok) - len(out_of_tolerance),
            "worst_diff_over_bound": max((r.diff_over_bound for r in ok), default=0.0),
            "wrong_plan": wrong_plan[:20],
            "out_of_tolerance": out_of_tolerance[:20],
            "served_by_arena": {str(k): v for k, v in sorted(served.items())},  # requests clear of any swap
        },
        "memory": {
            "runtime_overhead_bytes": overhead,
            "samples": len(samples),
            "worst_steady": worst["steady"],
            "worst_during_swap": worst["swap"],
            "anon_overhead_bytes": anon_overhead,
            "worst_anon": worst["anon"],  # RssAnon − anon_overhead against the budget, steady or swap
            "worst_steady_excess_by_budget": {str(k): v for k, v in sorted(per_budget.items())},
            "hwm_intervals": len(hwm),
            "worst_hwm_excess_bytes": max((h["excess_bytes"] for h in hwm), default=None),
            "worst_hwm_interval": max(hwm, key=lambda h: h["excess_bytes"], default=None),
            "timeline": [timeline[k] for k in sorted(timeline)],  # [second, RSS − overhead, budget in force]
        },
    }


def worst_excess(report: dict) -> int | None:
    """The largest of the steady, swap and VmHWM excesses over the budget in force (bytes)."""
    m = report["memory"]
    values = [w["excess_bytes"] for w in (m["worst_steady"], m["worst_during_swap"], m["worst_anon"]) if w]
    if m["worst_hwm_excess_bytes"] is not None:
        values.append(m["worst_hwm_excess_bytes"])
    return max(values, default=None)


def run_load(
    daemon: DaemonProcess,
    model: str,
    source: Path,
    *,
    clients: int,
    seconds: float,
    swap_every: float,
    seed: int = 0,
    inputs: int = 4,
    mode: str = "process",
    threads: int = 1,
    sample_every: float = 0.02,
) -> dict:
    """Thrash the budget of a running daemon serving `model` (loaded from `source`) under load."""
    from flexnnd.runtime.session import package_for

    with daemon.client() as c:
        plans = sorted(c.plans(model), key=lambda p: p.budget_bytes)
        meta = c.model_metadata(model)
        spec = meta.inputs[0]
        rng = np.random.default_rng(seed)
        xs = [rng.standard_normal(tuple(spec.shape)).astype(np.float32) for _ in range(inputs)]
        package = package_for(source, daemon.cache / "packages")
        refs = build_references(package, [p.arena_bytes for p in plans], xs, spec.name, threads)
        overhead = c.status().runtime_overhead_bytes
        pid = daemon.proc.pid
        anon_overhead = proc_memory(pid)["RssAnon"] - plans[-1].budget_bytes  # serving `auto`: the top rung
        load = Clients(clients, mode, str(daemon.socket), model, spec.name, xs, refs)
        load.start()
        with Watch(daemon) as watch, Sampler(pid, sample_every) as sampler:
            thrash = Thrash(c, model, pid, plans, swap_every, seed)
            initial = (thrash.top.budget_bytes, thrash.current[2])
            t0 = time.monotonic()
            with thrash:
                time.sleep(seconds)
            load.stop()
            elapsed = time.monotonic() - t0
        daemon_swaps = c.status().swaps
    report = analyse(
        load.records,
        thrash.changes,
        sampler.samples,
        initial,
        overhead,
        anon_overhead,
        elapsed,
        watch,
        daemon_swaps,
    )
    report["memory"]["hwm_reset"] = thrash.hwm_available
    report["memory"]["worst_excess_bytes"] = worst_excess(report)
    return {
        "model": model,
        "clients": clients,
        "client_mode": mode,
        "seconds": elapsed,
        "swap_every_s": swap_every,
        "seed": seed,
        "inputs": inputs,
        "threads": threads,
        "ladder": [
            {
                "budget_bytes": p.budget_bytes,
                "arena_bytes": p.arena_bytes,
                "sliced_layers": len(p.sliced_layers),
            }
            for p in plans
        ],
        "distinct_outputs_across_rungs": refs.distinct,
        **report,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--swap-every", type=float, default=3.0, help="seconds between budget changes")
    parser.add_argument("--client-mode", choices=("process", "thread"), default="process")
    parser.add_argument("--queue-depth", type=int, default=8, help="the daemon's --queue-depth")
    parser.add_argument("--threads", type=int, default=1, help="the daemon's compute threads per inference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from flexnnd import zoo

    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(
            Path(tmp),
            [
                "--models",
                args.model,
                "--threads",
                str(args.threads),
                "--no-watch-pressure",
                "--queue-depth",
                str(args.queue_depth),
            ],
            cache=CACHE,
        )
        d.start()
        try:
            result = run_load(
                d,
                args.model,
                zoo.cached(args.model, CACHE / "zoo"),
                clients=args.clients,
                seconds=args.seconds,
                swap_every=args.swap_every,
                seed=args.seed,
                mode=args.client_mode,
                threads=args.threads,
            )
        finally:
            d.stop()
            d.close()
    result["queue_depth"] = args.queue_depth
    result["python"] = sys.version.split()[0]
    text = json.dumps(result, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
