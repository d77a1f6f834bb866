"""Benchmark sweeps: every (prompt, drafter, K) against the target alone, from engine events.

Pure orchestration: no typer, no Rich, no printing. `run_bench` measures the pair's costs,
runs the sweep, and returns one result row per run plus a summary; progress goes to a
callback. The CLI (`specli bench`) renders the summary (specli.views.render_bench) and writes
the rows as JSON or CSV.

Run order (interleaved, so that machine drift hits the baseline and the variants alike):

    calibration (t_v(n) and t_d, see `calibrate`)
    warm-up: `warmup` times, the first prompt once per variant (baseline first), results dropped
    for repeat r in 0..repeats-1:
        for prompt p in the suite's order:
            K = 0 (the target alone: the baseline for p and r)
            for drafter d in --drafter order:
                for K in --k order (K > 0 and auto):
                    (p, d, K, r)

Speedup of a run = its tok/s / the tok/s of the baseline of the same prompt and repeat
(run moments before it). A variant's speedup is the median of those per-run ratios, not a
ratio of medians: pairing removes the prompt-to-prompt spread of tok/s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from specli.bench.calibration import NGRAM_CALIBRATION_REPS, Calibration, CostSampler
from specli.bench.machine import OtherCpu, loadavg, peak_rss_mib
from specli.bench.plan import BenchConfig, Trial, Variant, make_variants, plan
from specli.bench.summary import result_row, summarize
from specli.config import SamplingConfig, SpecConfig
from specli.errors import UsageError

WARMUP_MAX_TOKENS = 32


@dataclass(frozen=True)
class Tick:
    """Progress: `done` of `total` steps finished; `label` says what runs next."""

    done: int
    total: int
    label: str


@dataclass
class BenchResult:
    results: list[dict]
    summary: dict
    calibration: Calibration | None = None
    interrupted: bool = False

    def to_json(self) -> dict:
        return {"results": self.results, "summary": self.summary}


@dataclass
class _Trace:
    """What one run's events say, beyond Stats: per-round choices and sources."""

    k: list[int] = field(default_factory=list)
    drafter: list[str] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    t_draft: list[float] = field(default_factory=list)
    t_verify: list[float] = field(default_factory=list)

    def add(self, rnd) -> None:
        self.k.append(rnd.k)
        self.drafter.append(rnd.drafter)
        self.drafted.append(len(rnd.draft_tokens))
        self.accepted.append(rnd.n_accepted)
        self.t_draft.append(round(rnd.t_draft, 7))
        self.t_verify.append(round(rnd.t_verify, 7))

    def to_dict(self) -> dict:
        return {"k": self.k, "drafter": self.drafter, "drafted": self.drafted,
                "accepted": self.accepted, "t_draft": self.t_draft, "t_verify": self.t_verify}


def run_bench(gen, prompts: Sequence, prompt_tokens: Sequence[Sequence[int]],
              sampling: SamplingConfig, cfg: BenchConfig,
              progress: Callable[[Tick], None] | None = None, meta: dict | None = None) -> BenchResult:
    """Calibrate, warm up, run the interleaved sweep; return rows and the summary.

    gen: the session.Generation of the pair. prompt_tokens[i] are the tokens of
    prompts[i] (chat template applied by the caller). Ctrl-C stops the sweep: the rows so
    far are kept and the summary says interrupted.
    """
    loaded = gen.loaded
    if "model" in cfg.drafters and loaded.draft is None and any(k != 0 for k in cfg.ks):
        raise UsageError("--drafter model needs a draft model: give --draft or --pair "
                         "(or bench --drafter ngram)")
    tokens_of = {p.id: list(t) for p, t in zip(prompts, prompt_tokens)}
    variants = make_variants(cfg.ks, cfg.drafters)
    trials = plan(prompts, variants, cfg.repeats)
    warm = [Trial(-1, -1, prompts[0], v) for _ in range(cfg.warmup) for v in variants]
    total = 1 + len(warm) + len(trials)
    tick = progress or (lambda t: None)
    load_before = loadavg()
    other_cpu = OtherCpu()
    t_start = time.perf_counter()
    rows: list[dict] = []
    interrupted = False
    sampler = CostSampler(loaded.target, loaded.draft, cfg.n_max, sampling, loaded.n_vocab)
    try:
        tick(Tick(0, total, "calibrating costs"))
        first = tokens_of[prompts[0].id]
        sampler.sample(first, cfg.calibration_reps, n_limit=cfg.n_core)
        if cfg.n_ngram > cfg.n_core:  # n-gram auto's long batches: fewer samples (~10 s each)
            sampler.sample_range(first, cfg.n_core + 1, cfg.n_ngram, NGRAM_CALIBRATION_REPS)
        for i, t in enumerate(warm):
            tick(Tick(1 + i, total, f"warm-up · {t.variant.label}"))
            _run_one(gen, tokens_of[t.prompt.id], t.variant, sampling, cfg,
                     min(cfg.max_tokens, WARMUP_MAX_TOKENS), cfg.seed, sampler.result())
        baselines: dict[tuple[str, int], tuple[float, tuple[int, ...]]] = {}
        for t in trials:
            tick(Tick(1 + len(warm) + t.seq, total,
                      f"{t.prompt.id} · {t.variant.label} · repeat {t.repeat + 1}/{cfg.repeats}"))
            if t.variant.is_baseline and t.seq > 0:  # costs sampled across the sweep, too
                sampler.sample(tokens_of[t.prompt.id], 1, n_limit=cfg.n_core)
            done, trace = _run_one(gen, tokens_of[t.prompt.id], t.variant, sampling, cfg,
                                   cfg.max_tokens, cfg.seed + t.repeat, sampler.result())
            if done.stop_reason == "interrupted":
                raise KeyboardInterrupt
            if t.variant.is_baseline:
                baselines[(t.prompt.id, t.repeat)] = (done.stats.tokens_per_s, done.tokens)
            rows.append(result_row(t, done, trace, baselines.get((t.prompt.id, t.repeat)),
                                   sampling.greedy))
        tick(Tick(total, total, "done"))
    except KeyboardInterrupt:
        interrupted = True
    info = dict(meta or {})
    info.update(elapsed_s=time.perf_counter() - t_start, cpus=os.cpu_count(), load_before=load_before,
                load_after=loadavg(), other_cpu_share=other_cpu.share(),
                peak_rss_mib=peak_rss_mib(), interrupted=interrupted,
                max_tokens=cfg.max_tokens, repeats=cfg.repeats, warmup=cfg.warmup, seed=cfg.seed,
                k_max_auto=cfg.k_max, ks=list(cfg.ks), drafters=list(cfg.drafters))
    calib = sampler.result()
    summary = summarize(rows, variants, calib, info)
    return BenchResult(rows, summary, calib, interrupted)


def _run_one(gen, tokens, variant: Variant, sampling, cfg: BenchConfig, max_tokens: int,
             seed: int, calib: Calibration | None = None):
    """One generation with a fresh drafter and policy, exactly as `specli run` builds them.

    An auto policy starts from the costs calibrated in this sweep (as `run` starts from
    the costs remembered on the machine), so every auto row prices K with measured costs.
    """
    from specli.core.engine import Round
    from specli.core.policy import make_policy
    from specli.session import make_drafter

    loaded = gen.loaded
    drafter_name = "model" if variant.is_baseline else variant.drafter
    spec = SpecConfig(k=variant.k, max_tokens=max_tokens, seed=seed, drafter=drafter_name,
                      k_max=cfg.k_max, strict=cfg.strict)
    # A fresh drafter per run: an n-gram index must not carry another prompt's tokens. Empty
    # KV caches too: every run then computes the prompt the same way (a reused prefix may
    # sit in other cache cells, and batch numerics can then split a greedy near-tie).
    drafter = None if variant.is_baseline else make_drafter(loaded, drafter_name, sampling)
    for model in (loaded.target, loaded.draft):
        if model is not None:
            model.truncate(0)
    trace = _Trace()
    done = None
    policy = make_policy(spec)
    if calib is not None:
        policy.seed(dict(enumerate(calib.t_verify, start=1)), calib.t_draft, calib.t_catchup)
    events = gen.generate(tokens, spec=spec, sampling=sampling, drafter=drafter, policy=policy,
                          remember=False)
    try:
        for ev in events:
            if isinstance(ev, Round):
                trace.add(ev)
            else:
                done = ev
    except KeyboardInterrupt:  # between events: let the engine close the stream
        done = events.throw(KeyboardInterrupt)
    return done, trace
