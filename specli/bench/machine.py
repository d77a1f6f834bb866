"""How busy the machine was while a sweep ran, and the memory it took."""

from __future__ import annotations

import os
import resource
import sys

# --------------------------------------------------------------------------- machine


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class OtherCpu:
    """Share of the machine's CPU time used by other processes between start and stop.

    From /proc/stat (threads.CpuSampler: busy time of the CPUs this process may use)
    minus this process's own user + system time: a direct measure of how much a
    concurrent job skewed the timings. None off Linux.
    """

    def __init__(self) -> None:
        from specli.llama.threads import CpuSampler

        self.sampler = CpuSampler()
        self.start = self.sampler.read() if self.sampler.available else None

    def share(self) -> float | None:
        end = self.sampler.read() if self.start is not None else None
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / ((end[2] - self.start[2]) * (self.sampler.n_cpus or 1)))


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
