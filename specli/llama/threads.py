"""Decode threads that follow the machine's load: full speed when it is idle, no collapse
when something else runs beside us.

llama.cpp's OpenMP workers meet at a barrier after every graph node (hundreds per token)
and spin there before sleeping (libgomp: 300k spins unless GOMP_SPINCOUNT says otherwise).
On an idle machine that spinning is what makes decoding fast; on an oversubscribed one
every barrier waits for a descheduled thread: 2 cores, 2 busy loops beside 2 spinning
threads, 0.32 tok/s (benchmarks/README.md, "A busy machine"). A short spin everywhere
(GOMP_SPINCOUNT=1000, specli's default until this module) degraded gracefully but cost
idle speed: paired against llama-server on the same requests, specli serve's K = 0 ran
0.95x it with a 1000-spin, 1.03x with libgomp's default.

So the spin stays libgomp's, and the thread count follows the load instead: every half
second of decoding, `ThreadGovernor.tick` reads how much CPU time *other* processes took
on the CPUs we may run on (/proc/stat minus our own rusage), and gives up threads they
are using (`llama_set_n_threads`), taking them back once they are free. With one busy
loop beside it, `specli run --k 0` ran 5.0-6.4 tok/s (a 1000-spin with 2 threads:
4.9-5.5); with two, 3.2-3.8 (the 1000-spin: 4.0-5.6), where two threads on libgomp's
spin alone collapse to 0.32.

Only for thread counts specli chose itself (`--threads` not given), on the CPU, on Linux.
`decide` is the pure rule; `CpuSampler` the only part that reads /proc.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from typing import Callable

log = logging.getLogger(__name__)

WINDOW_S = 0.5  # decide over at least this much wall time (/proc/stat counts 1/100 s)
STALE_S = 10.0  # a window this long spanned an idle spell (a server between requests): restart it
SLACK = 0.3  # keep a thread unless others take more than 70% of its share
BUSY_CPUS = 0.25  # others using this much: timings measured now are not worth remembering


def decide(configured: int, others_cpus: float, n_cpus: int) -> int:
    """Threads to run with: the configured count scaled by the share of the CPUs that other
    processes leave free, rounded down after SLACK, never below 1 nor above configured."""
    if configured <= 1 or n_cpus <= 0:
        return max(1, configured)
    free = max(0.0, 1.0 - others_cpus / n_cpus)
    return max(1, min(configured, math.floor(configured * free + SLACK)))


class CpuSampler:
    """(busy CPU seconds on our CPUs, this process's CPU seconds, wall time), from /proc/stat."""

    def __init__(self) -> None:
        try:
            self.cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            self.cpus = None
        self.tick_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = self.cpus is not None and self.read() is not None

    @property
    def n_cpus(self) -> int:
        return len(self.cpus or ())

    def read(self) -> tuple[float, float, float] | None:
        try:
            busy = 0
            with open("/proc/stat") as f:
                for line in f:
                    name, _, rest = line.partition(" ")
                    if name in self.cpus:
                        v = [int(x) for x in rest.split()]
                        busy += sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # minus idle, iowait
                    elif not name.startswith("cpu"):
                        break
        except (OSError, ValueError, TypeError):
            return None
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return busy / self.tick_s, ru.ru_utime + ru.ru_stime, time.monotonic()


class ThreadGovernor:
    """Sets the decode threads of the models it governs from the load other processes put
    on the CPUs. Call `tick()` before each decode: it costs a clock read, and a /proc read
    once per WINDOW_S."""

    def __init__(self, models, sampler=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.models = [m for m in models if m is not None]  # each keeps its n_threads as chosen
        self.sampler = sampler if sampler is not None else CpuSampler()
        self.clock = clock
        self.busy = False  # some window since take_busy() saw others at >= BUSY_CPUS
        self.changes: list[tuple[int, int, float]] = []  # (from, to, others' CPUs)
        self._start = self.sampler.read() if self.sampler.available else None
        self._next = clock() + WINDOW_S

    def tick(self) -> None:
        now = self.clock()
        if self._start is None or now < self._next:
            return
        end = self.sampler.read()
        start, self._start, self._next = self._start, end, now + WINDOW_S
        if end is None or start is None:
            return
        wall = end[2] - start[2]
        if wall <= 0 or wall > STALE_S:
            return
        others_cpus = max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / wall)
        self.busy = self.busy or others_cpus >= BUSY_CPUS
        self.apply(others_cpus)

    def take_busy(self) -> bool:
        """Whether other processes were busy since the last call (and forget it)."""
        busy, self.busy = self.busy, False
        return busy

    def apply(self, others_cpus: float) -> None:
        n_cpus = self.sampler.n_cpus
        for m in self.models:
            want = decide(m.n_threads, others_cpus, n_cpus)
            if want != m.threads_now:
                if m is self.models[0]:
                    self.changes.append((m.threads_now, want, others_cpus))
                    log.info("threads %d -> %d: other processes use %.1f of %d CPUs",
                             m.threads_now, want, others_cpus, n_cpus)
                m.set_threads(want)


def governor_for(models, threads_given: bool) -> ThreadGovernor | None:
    """A governor for models running on the CPU with threads specli chose, else None."""
    models = [m for m in models if m is not None]
    if threads_given or not models or any(m.device != "CPU" for m in models):
        return None
    if all(m.n_threads <= 1 for m in models):
        return None
    sampler = CpuSampler()
    if not sampler.available:  # no /proc/stat (not Linux): nothing to follow
        return None
    gov = ThreadGovernor(models, sampler)
    for m in models:
        m.governor = gov
    return gov


def thread_note(model, since: int = 0, during: str = "this run") -> str | None:
    """One line for the user when the governor changed `model`'s threads (its changes from
    index `since` on: a chat reports each reply's), else None."""
    gov = getattr(model, "governor", None)
    changes = gov.changes[since:] if gov is not None else []
    if not changes:
        return None
    busiest = max(c[2] for c in changes)
    return (f"threads {changes[0][0]} → {changes[-1][1]} during {during}: other processes "
            f"used up to {busiest:.1f} CPUs (--threads N keeps N)")


def threads_record(target) -> dict:
    """Threads the target chose and ended with, and the governor's changes (specli/threads.py)."""
    gov = getattr(target, "governor", None)
    return {"chosen": target.n_threads, "end": target.threads_now,
            "follows_load": gov is not None,
            "changes": [{"from": a, "to": b, "other_cpus": round(c, 2)}
                        for a, b, c in (gov.changes if gov is not None else [])]}
