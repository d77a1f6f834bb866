"""Threads that follow the machine's load (specli.llama.threads): the rule, the /proc/stat
sampler against a real busy process, and the governor over real llama.cpp models."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from specli.llama.backend import LlamaModel
from specli.llama.threads import ThreadGovernor, CpuSampler, WINDOW_S, decide, governor_for


@pytest.mark.parametrize("configured, others, n_cpus, want", [
    (2, 0.0, 2, 2),    # idle: every thread
    (2, 0.1, 2, 2),    # a little noise keeps them
    (2, 0.67, 2, 1),   # one busy loop beside two spinning threads (each of 3 gets 2/3)
    (2, 1.0, 2, 1),    # ... and once we run one: it has a core of its own, stay at 1
    (2, 1.33, 2, 1),   # two busy loops beside one thread
    (2, 2.0, 2, 1),    # never below one
    (8, 2.0, 16, 7),   # a wider machine: give up only what is taken
    (8, 0.0, 16, 8),
    (1, 0.0, 2, 1),
])
def test_decide(configured, others, n_cpus, want):
    assert decide(configured, others, n_cpus) == want


class FakeSampler:
    """Busy seconds of all CPUs, our CPU seconds, wall: scripted, for the governor's logic."""

    available, n_cpus = True, 2

    def __init__(self):
        self.t, self.busy, self.ours = 0.0, 0.0, 0.0

    def advance(self, wall, ours_cpus, others_cpus):
        self.t += wall
        self.ours += wall * ours_cpus
        self.busy += wall * (ours_cpus + others_cpus)

    def read(self):
        return self.busy, self.ours, self.t


class FakeModel:
    device, n_threads = "CPU", 2

    def __init__(self):
        self.threads_now, self.calls = 2, []

    def set_threads(self, n):
        self.threads_now = n
        self.calls.append(n)


def test_governor_sheds_and_takes_back_threads():
    sampler, target, draft = FakeSampler(), FakeModel(), FakeModel()
    gov = ThreadGovernor([target, draft], sampler=sampler, clock=lambda: sampler.t)
    sampler.advance(0.1, 2.0, 0.0)
    gov.tick()  # inside the window: nothing read, nothing changed
    assert target.calls == []
    sampler.advance(WINDOW_S, 1.33, 0.67)  # a busy loop starts
    gov.tick()
    assert (target.threads_now, draft.threads_now) == (1, 1)
    assert gov.changes == [(2, 1, pytest.approx(0.67 * WINDOW_S / (WINDOW_S + 0.1)))]
    sampler.advance(WINDOW_S, 1.0, 1.0)  # one thread each now: stays
    gov.tick()
    assert target.calls == [1]
    sampler.advance(WINDOW_S, 1.0, 0.0)  # the busy loop ended: back to two
    gov.tick()
    assert (target.threads_now, draft.threads_now) == (2, 2)
    sampler.advance(60.0, 0.0, 1.5)  # a server idle between requests: a stale window
    gov.tick()
    assert target.threads_now == 2


def test_sampler_sees_another_process_busy():
    sampler = CpuSampler()
    if not sampler.available:
        pytest.skip("no /proc/stat here")
    if sampler.n_cpus < 2:
        pytest.skip("needs 2 CPUs")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        a = sampler.read()
        time.sleep(1.0)
        b = sampler.read()
    finally:
        busy.kill()
        busy.wait()
    others = ((b[0] - a[0]) - (b[1] - a[1])) / (b[2] - a[2])
    assert others > 0.6  # the busy loop's core (and not our sleeping process)


def test_governor_for_only_governs_threads_specli_chose(tiny_target):
    with LlamaModel(tiny_target, n_ctx=256, n_threads=2) as m:
        assert governor_for([m], threads_given=True) is None
        assert m.governor is None
        gov = governor_for([m], threads_given=False)
        if not CpuSampler().available:
            assert gov is None
            return
        assert gov is not None and m.governor is gov
    with LlamaModel(tiny_target, n_ctx=256, n_threads=1) as one:
        assert governor_for([one], threads_given=False) is None  # nothing to shed


def test_fewer_threads_decode_the_same_logits(tiny_target):
    """set_threads between decodes (what the governor does) keeps the cache and the logits."""
    with LlamaModel(tiny_target, n_ctx=256, n_threads=2) as m:
        prompt = m.tokenize("one two three four five six seven", add_special=False)
        want = np.array(m.decode(prompt, 1)[0])
        m.reset()
        m.decode(prompt[:3], 0)
        m.set_threads(1)
        assert m.threads_now == 1 and m.n_threads == 2
        np.testing.assert_array_equal(np.array(m.decode(prompt[3:], 1)[0]), want)


def test_run_says_when_the_governor_lowered_the_threads():
    from specli.llama.threads import thread_note

    sampler, target = FakeSampler(), FakeModel()
    assert thread_note(target) is None  # no governor (e.g. --threads given)
    target.governor = ThreadGovernor([target], sampler=sampler, clock=lambda: sampler.t)
    sampler.advance(WINDOW_S, 2.0, 0.0)
    target.governor.tick()
    assert thread_note(target) is None  # idle: nothing changed, nothing said
    sampler.advance(WINDOW_S, 1.0, 1.0)
    target.governor.tick()
    note = thread_note(target)
    assert note.startswith("threads 2 → 1") and "1.0 CPUs" in note
    assert thread_note(target, since=1) is None  # a chat turn after it: nothing new


def test_busy_windows_are_reported_once():
    sampler, target = FakeSampler(), FakeModel()
    gov = ThreadGovernor([target], sampler=sampler, clock=lambda: sampler.t)
    sampler.advance(WINDOW_S, 2.0, 0.05)
    gov.tick()
    assert gov.take_busy() is False  # a little noise is not busy
    sampler.advance(WINDOW_S, 1.7, 0.3)
    gov.tick()
    sampler.advance(WINDOW_S, 2.0, 0.0)
    gov.tick()
    assert gov.take_busy() is True  # one busy window since the last call
    assert gov.take_busy() is False


def test_costs_measured_beside_other_work_are_not_remembered(monkeypatch):
    """policy.remember (what --k auto keeps for the next run) skips a busy generation."""
    import specli.core.costcache
    from specli.session import Generation, _Shared

    kept = []
    monkeypatch.setattr(specli.core.costcache, "store_measured", lambda *a, **kw: kept.append(a))
    sampler, target = FakeSampler(), FakeModel()
    target.governor = ThreadGovernor([target], sampler=sampler, clock=lambda: sampler.t)

    class Gen:  # what Generation.remember reads
        loaded = type("L", (), {"target": target, "draft": None})()
        costs = object()
        _shared = _Shared()

    policy = type("P", (), {"measured": lambda self: ({}, None),
                            "model": type("M", (), {"measured_catchup": None})()})()
    sampler.advance(WINDOW_S, 1.0, 1.0)
    target.governor.tick()
    Generation.remember(Gen(), policy)
    assert kept == []  # busy: not kept
    sampler.advance(WINDOW_S, 2.0, 0.0)
    target.governor.tick()
    Generation.remember(Gen(), policy)
    assert len(kept) == 1  # idle again: kept
