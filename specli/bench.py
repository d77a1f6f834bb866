"""Benchmark sweeps: every (prompt, drafter, K) against the target alone, from engine events.

Pure orchestration: no typer, no Rich, no printing. `run_bench` measures the pair's costs,
runs the sweep, and returns one result row per run plus a summary; progress goes to a
callback. The CLI (`specli bench`) renders the summary (specli.render_bench) and writes
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
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from specli.config import K_MAX, KSpec, SamplingConfig, SpecConfig
from specli.errors import UsageError

ORDER = ("for each repeat, for each prompt: K=0 (baseline), then for each drafter in --drafter "
         "order, each K in --k order")
SPEEDUP_DEFINITION = ("median over runs of tok/s / tok/s of the K=0 baseline of the same prompt "
                      "and repeat")
PAYS = 1.03  # a best speedup below this is within noise: speculation does not pay
WARMUP_MAX_TOKENS = 32
DRAFTERS = ("model", "ngram", "auto")


# --------------------------------------------------------------------------- the plan


def parse_k_list(text: str) -> list[KSpec]:
    """--k for bench: "0,1,2,4,auto", "1..8" or mixes ("1..4,6,auto"); K = 0 always first.

    Order is kept (duplicates dropped), ints before "auto" as written. Raises UsageError.
    """
    out: list[KSpec] = [0]
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            raise UsageError(f"--k: empty item in {text!r} (use e.g. 0,1,2,4,auto or 1..8)")
        for k in _parse_k_item(part):
            if k not in out:
                out.append(k)
    return out


def _parse_k_item(part: str) -> list[KSpec]:
    if part == "auto":
        return ["auto"]
    if ".." in part:
        lo, _, hi = part.partition("..")
        a, b = _k_int(lo, part), _k_int(hi, part)
        if a > b:
            raise UsageError(f"--k: empty range {part!r} (write LOW..HIGH)")
        return list(range(a, b + 1))
    return [_k_int(part, part)]


def _k_int(text: str, item: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"--k: {item!r} is not an integer, a range like 1..8, or 'auto'") from None
    if not 0 <= k <= K_MAX:
        raise UsageError(f"--k: {k} is out of range 0..{K_MAX}")
    return k


def parse_drafters(text: str) -> list[str]:
    """--drafter for bench: a comma list of model, ngram, auto (order kept)."""
    out: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part not in DRAFTERS:
            raise UsageError(f"--drafter: {part!r} is not one of model, ngram, auto")
        if part not in out:
            out.append(part)
    return out


@dataclass(frozen=True)
class Variant:
    """One row of the results table: a drafter and a K (drafter "none" for the baseline)."""

    k: KSpec
    drafter: str

    @property
    def is_baseline(self) -> bool:
        return self.k == 0

    @property
    def key(self) -> str:
        return f"{self.drafter}:{self.k}"

    @property
    def label(self) -> str:
        return "K 0 (target alone)" if self.is_baseline else f"K {self.k} {self.drafter}"


@dataclass(frozen=True)
class Trial:
    """One generation of the sweep, in run order (`seq`)."""

    seq: int
    repeat: int
    prompt: object  # suites.Prompt
    variant: Variant


def make_variants(ks: Sequence[KSpec], drafters: Sequence[str]) -> list[Variant]:
    """The baseline, then every (drafter, K > 0 or auto) in the given orders."""
    out = [Variant(0, "none")]
    out += [Variant(k, d) for d in drafters for k in ks if k != 0]
    return out


def plan(prompts: Sequence, variants: Sequence[Variant], repeats: int) -> list[Trial]:
    """The sweep in run order (see the module docstring); variants[0] must be the baseline."""
    if not variants or not variants[0].is_baseline:
        raise ValueError("variants must start with the K = 0 baseline")
    trials = []
    for r in range(repeats):
        for p in prompts:
            for v in variants:
                trials.append(Trial(len(trials), r, p, v))
    return trials


# --------------------------------------------------------------------------- calibration


DRAFT_CATCHUP_SIZES = (16, 32)  # the draft's catch-up after a stretch of K = 0 rounds
NGRAM_CALIBRATION_REPS = 3  # samples of t_v(n) for n beyond auto's model K (n-gram drafts)


@dataclass(frozen=True)
class Calibration:
    """Measured costs, in seconds.

    t_verify[n - 1]: the target decoding a batch of n tokens (n logits rows, as
    verification asks). t_draft: one drafted token (a single-token draft decode plus the
    token choice the drafter makes); None without a draft model. t_draft_batch: the draft
    decoding a batch of n tokens ({n: seconds}), for its catch-up: after a round whose
    drafts were all accepted it feeds 2 tokens (the pending one and its own last draft,
    which it never decoded), and after K = 0 rounds everything the target made meanwhile.
    """

    t_verify: tuple[float, ...]
    t_draft: float | None
    reps: int
    context_tokens: int
    t_draft_batch: dict[int, float] = field(default_factory=dict)

    def t_v(self, n: int) -> float:
        """t_v(n); beyond the measured sizes, extended along the last measured step."""
        tv = self.t_verify
        if n <= len(tv):
            return tv[n - 1]
        step = tv[-1] - tv[-2] if len(tv) > 1 else tv[-1]
        return tv[-1] + step * (n - len(tv))

    def t_db(self, n: int) -> float:
        """The draft's decode of n tokens: interpolated between measured sizes (0 without one)."""
        pts = sorted(self.t_draft_batch.items())
        if not pts or n <= 0:
            return 0.0
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if n <= n1:
                return t0 + (t1 - t0) * (n - n0) / (n1 - n0) if n > n0 else t0
        (n0, t0), (n1, t1) = pts[-2] if len(pts) > 1 else pts[-1], pts[-1]
        slope = (t1 - t0) / (n1 - n0) if n1 > n0 else t1
        return t1 + slope * (n - n1)

    def catchup(self, lag: int) -> float:
        """Extra draft time when a model round must first feed `lag` tokens instead of 1."""
        return max(0.0, self.t_db(lag) - self.t_db(1)) if lag > 1 else 0.0

    @property
    def t_catchup(self) -> float | None:
        """The draft's catch-up cost per token (marginal, from the largest catch-up size)."""
        n = max(DRAFT_CATCHUP_SIZES)
        if self.t_draft is None or n not in self.t_draft_batch:
            return None
        return self.catchup(n) / (n - 1)

    def to_dict(self) -> dict:
        return {"t_verify": list(self.t_verify), "t_draft": self.t_draft,
                "t_draft_batch": {str(n): t for n, t in sorted(self.t_draft_batch.items())},
                "reps": self.reps, "context_tokens": self.context_tokens,
                "draft_ratio": (self.t_draft / self.t_verify[0]) if self.t_draft else None}


class CostSampler:
    """Collects calibration samples over the whole sweep; `result()` takes the medians.

    `bench` samples `reps` times before the sweep and once more before each later
    prompt block, so the costs are measured under the same conditions as the runs they
    predict (on a shared machine, load comes and goes within minutes).
    """

    def __init__(self, target, draft, n_max: int, sampling: SamplingConfig, n_vocab: int,
                 draft_sizes: Sequence[int] = ()) -> None:
        self.target, self.draft, self.n_max = target, draft, n_max
        self.sampling, self.n_vocab = sampling, n_vocab
        self.verify_sizes = list(range(1, n_max + 1))
        self.draft_sizes = sorted({1, 2, 4, 8, *DRAFT_CATCHUP_SIZES, *draft_sizes})
        self.t_verify: dict[int, list[float]] = {n: [] for n in self.verify_sizes}
        self.t_draft_batch: dict[int, list[float]] = {n: [] for n in self.draft_sizes}
        self.t_choice: float | None = None
        self.context_tokens = 0
        self.reps = 0

    def sample(self, context: Sequence[int], reps: int = 1, n_limit: int | None = None) -> None:
        """`reps` more samples of every batch size (up to n_limit), decoded after `context`."""
        self.context_tokens = self.context_tokens or len(context)
        sizes = [n for n in self.verify_sizes if n_limit is None or n <= n_limit]
        for n, ts in _time_batches(self.target, context, sizes, reps).items():
            self.t_verify[n] += ts
        if self.draft is not None:
            for n, ts in _time_batches(self.draft, context, self.draft_sizes, reps,
                                       all_logits=False).items():
                self.t_draft_batch[n] += ts
            if self.t_choice is None:
                self.t_choice = _time_choice(self.draft, context, self.sampling, self.n_vocab)
        self.reps += reps

    def sample_range(self, context: Sequence[int], lo: int, hi: int, reps: int) -> None:
        """`reps` samples of the target's batch sizes lo..hi only."""
        for n, ts in _time_batches(self.target, context, range(lo, hi + 1), reps).items():
            self.t_verify[n] += ts

    def result(self) -> Calibration | None:
        if not self.reps:
            return None
        med = statistics.median
        t_verify = tuple(med(self.t_verify[n]) for n in self.verify_sizes if self.t_verify[n])
        if self.draft is None:
            return Calibration(t_verify, None, self.reps, self.context_tokens)
        t_db = {n: med(v) for n, v in self.t_draft_batch.items()}
        return Calibration(t_verify, t_db[1] + (self.t_choice or 0.0), self.reps,
                           self.context_tokens, t_db)


def calibrate(target, draft, context: Sequence[int], n_max: int, sampling: SamplingConfig,
              n_vocab: int, reps: int = 5) -> Calibration:
    """Time t_v(n) for n = 1..n_max, the draft's per-token cost and its batch costs.

    Each sample decodes a batch at the end of `context` and truncates it away again, so
    the caches end as they began (holding the context minus its pending last token).
    Batch sizes are interleaved within each repetition so drift spreads over all of them;
    each figure is the median of `reps` samples, after one untimed decode per model.
    """
    sampler = CostSampler(target, draft, n_max, sampling, n_vocab)
    sampler.sample(context, reps)
    return sampler.result()


def _time_batches(model, context: Sequence[int], sizes, reps: int,
                  all_logits: bool = True) -> dict[int, list[float]]:
    """{n: [seconds, ...]}: `reps` timings of decoding n tokens after `context`.

    all_logits: n rows of logits, as verification asks; else one row, as the drafter asks
    (with a 150k vocabulary the output rows are a good part of a small model's cost).
    """
    context = list(context)
    sizes = list(sizes)
    filler = (context * (max(sizes) // max(1, len(context)) + 1))[: max(sizes)]
    model.reuse_prefix(context)
    model.decode(context[model.n_past : -1], 0)
    base = model.n_past
    model.decode(context[-1:], 1)  # untimed: the first decode after loading is slow
    model.truncate(base)
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(reps):
        for n in sizes:
            batch = context[-1:] + filler[: n - 1]
            t0 = time.perf_counter()
            model.decode(batch, min(n, K_MAX + 1) if all_logits else 1)
            samples[n].append(time.perf_counter() - t0)
            model.truncate(base)
    return samples


def _time_choice(draft, context, sampling, n_vocab, reps: int = 9) -> float:
    """The drafter's token choice from one row of logits: argmax, or warp + sample."""
    import numpy as np

    from specli.sampling import greedy_token, warp

    rng = np.random.default_rng(0)
    base = draft.n_past
    logits = np.array(draft.decode(list(context[-1:]), 1)[0][:n_vocab])
    draft.truncate(base)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if sampling.greedy:
            greedy_token(logits)
        else:
            warp(logits, sampling).sample(rng)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class BenchConfig:
    ks: tuple[KSpec, ...]
    drafters: tuple[str, ...]
    max_tokens: int = 128
    repeats: int = 1
    warmup: int = 1
    seed: int = 0
    k_max: int = 8  # the largest K that --k auto may choose
    calibration_reps: int = 5  # before the sweep; one more before each later prompt block
    verify_chunk: object = None  # --strict: numerics.ChunkRule (n_past -> verify-call size)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")

    @property
    def n_max(self) -> int:
        """Largest verify batch any variant can use: max K + 1 (n-gram auto: up to 32)."""
        return max(self.n_core, self.n_ngram)

    @property
    def n_core(self) -> int:
        """Largest verify batch of the fixed Ks and of auto's model drafts."""
        ints = [k for k in self.ks if k != "auto"]
        return max(ints + ([self.k_max] if "auto" in self.ks else [])) + 1

    @property
    def n_ngram(self) -> int:
        """Largest verify batch of auto's n-gram drafts (1 when no variant has them)."""
        from specli.costs import NGRAM_K_MAX

        ngram = "auto" in self.ks and any(d in ("ngram", "auto") for d in self.drafters)
        return NGRAM_K_MAX + 1 if ngram else 1


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


def run_bench(loaded, prompts: Sequence, prompt_tokens: Sequence[Sequence[int]],
              sampling: SamplingConfig, cfg: BenchConfig,
              progress: Callable[[Tick], None] | None = None, meta: dict | None = None) -> BenchResult:
    """Calibrate, warm up, run the interleaved sweep; return rows and the summary.

    loaded: session.Loaded (target, draft, n_vocab). prompt_tokens[i] are the tokens of
    prompts[i] (chat template applied by the caller). Ctrl-C stops the sweep: the rows so
    far are kept and the summary says interrupted.
    """
    if "model" in cfg.drafters and loaded.draft is None and any(k != 0 for k in cfg.ks):
        raise UsageError("--drafter model needs a draft model: give --draft or --pair "
                         "(or bench --drafter ngram)")
    tokens_of = {p.id: list(t) for p, t in zip(prompts, prompt_tokens)}
    variants = make_variants(cfg.ks, cfg.drafters)
    trials = plan(prompts, variants, cfg.repeats)
    warm = [Trial(-1, -1, prompts[0], v) for _ in range(cfg.warmup) for v in variants]
    total = 1 + len(warm) + len(trials)
    tick = progress or (lambda t: None)
    load_before = _loadavg()
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
            _run_one(loaded, tokens_of[t.prompt.id], t.variant, sampling, cfg,
                     min(cfg.max_tokens, WARMUP_MAX_TOKENS), cfg.seed, sampler.result())
        baselines: dict[tuple[str, int], tuple[float, tuple[int, ...]]] = {}
        for t in trials:
            tick(Tick(1 + len(warm) + t.seq, total,
                      f"{t.prompt.id} · {t.variant.label} · repeat {t.repeat + 1}/{cfg.repeats}"))
            if t.variant.is_baseline and t.seq > 0:  # costs sampled across the sweep, too
                sampler.sample(tokens_of[t.prompt.id], 1, n_limit=cfg.n_core)
            done, trace = _run_one(loaded, tokens_of[t.prompt.id], t.variant, sampling, cfg,
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
                load_after=_loadavg(), other_cpu_share=other_cpu.share(),
                peak_rss_mib=peak_rss_mib(), interrupted=interrupted,
                max_tokens=cfg.max_tokens, repeats=cfg.repeats, warmup=cfg.warmup, seed=cfg.seed,
                k_max_auto=cfg.k_max, ks=list(cfg.ks), drafters=list(cfg.drafters))
    calib = sampler.result()
    summary = summarize(rows, variants, calib, info)
    return BenchResult(rows, summary, calib, interrupted)


def _run_one(loaded, tokens, variant: Variant, sampling, cfg: BenchConfig, max_tokens: int,
             seed: int, calib: Calibration | None = None):
    """One generation with a fresh drafter and policy, exactly as `specli run` builds them.

    An auto policy starts from the costs calibrated in this sweep (as `run` starts from
    the costs remembered on the machine), so every auto row prices K with measured costs.
    """
    from specli.engine import Round, speculative_generate
    from specli.session import make_drafter, make_policy

    drafter_name = "model" if variant.is_baseline else variant.drafter
    spec = SpecConfig(k=variant.k, max_tokens=max_tokens, seed=seed, drafter=drafter_name,
                      k_max=cfg.k_max)
    # A fresh drafter per run: an n-gram index must not carry another prompt's tokens. Empty
    # KV caches too: every run then computes the prompt the same way (a reused prefix may
    # sit in other cache cells, and batch numerics can then split a greedy near-tie).
    drafter = None if variant.is_baseline else make_drafter(loaded, drafter_name, sampling)
    for model in (loaded.target, loaded.draft):
        if model is not None:
            model.truncate(0)
    trace = _Trace()
    done = None
    policy = make_policy(spec, drafter)
    if calib is not None and hasattr(policy, "seed"):
        policy.seed(dict(enumerate(calib.t_verify, start=1)), calib.t_draft, calib.t_catchup)
    chunk = None if variant.is_baseline else cfg.verify_chunk
    if chunk and hasattr(policy, "verify"):
        policy.verify.set_chunk(chunk(len(tokens)) if callable(chunk) else chunk)  # priced
    events = speculative_generate(loaded.target, drafter, tokens, sampling, spec,
                                  policy=policy, n_vocab=loaded.n_vocab, verify_chunk=chunk)
    try:
        for ev in events:
            if isinstance(ev, Round):
                trace.add(ev)
            else:
                done = ev
    except KeyboardInterrupt:  # between events: let the engine close the stream
        done = events.throw(KeyboardInterrupt)
    return done, trace


# --------------------------------------------------------------------------- rows


def result_row(trial: Trial, done, trace: _Trace, baseline, greedy: bool) -> dict:
    """One run as a flat-ish JSON object (see benchmarks/README.md for the schema)."""
    s = done.stats
    base_tps, base_tokens = baseline if baseline else (None, None)
    speedup = s.tokens_per_s / base_tps if base_tps else None
    rejections = sum(1 for a, n in zip(trace.accepted, trace.drafted) if a < n)
    return {
        "seq": trial.seq,
        "repeat": trial.repeat,
        "prompt_id": trial.prompt.id,
        "suite": trial.prompt.suite,
        "k": trial.variant.k,
        "drafter": trial.variant.drafter,
        "tokens_per_s": s.tokens_per_s,
        "baseline_tokens_per_s": base_tps,
        "speedup": speedup,
        "acceptance_rate": s.acceptance_rate,
        "alpha": _alpha(s.accepted, rejections),
        "rejections": rejections,
        "tokens_per_round": s.tokens_per_round,
        "new_tokens": s.new_tokens,
        "prompt_tokens": s.prompt_tokens,
        "rounds": s.rounds,
        "drafted": s.drafted,
        "accepted": s.accepted,
        "decode_seconds": s.decode_seconds,
        "prompt_seconds": s.prompt_seconds,
        "draft_seconds": s.draft_seconds,
        "verify_seconds": s.verify_seconds,
        "sample_seconds": s.sample_seconds,
        "other_seconds": s.other_seconds,
        "llama_seconds": s.llama_seconds,
        "python_share": s.python_share,
        "overlap_positions": s.overlap_positions,
        "beta_sum": s.beta_sum,
        "exact_match_sum": s.exact_match_sum,
        "accepted_hist": list(s.accepted_hist),
        "k_chosen": _hist(trace.k),
        "drafter_rounds": dict(sorted(Counter(trace.drafter).items())),
        "stop_reason": done.stop_reason,
        "matches_baseline": (tuple(done.tokens) == tuple(base_tokens))
        if greedy and base_tokens is not None else None,
        "per_round": trace.to_dict(),
    }


def _alpha(accepted: int, rejections: int) -> float | None:
    """Per-token acceptance probability under the i.i.d. model: accepted / judged drafts.

    A round that rejects draft i never judges drafts i+1..k, so accepted / drafted is
    biased low at large K; accepted / (accepted + rejections) is the maximum-likelihood
    estimate of Leviathan et al.'s alpha (the same rule costs.AcceptanceRate uses).
    """
    judged = accepted + rejections
    return accepted / judged if judged else None


def _hist(values: Sequence[int]) -> dict[str, int]:
    """{"k": count} with keys in numeric order (strings: JSON object keys)."""
    c = Counter(values)
    return {str(k): c[k] for k in sorted(c)}


CSV_FIELDS = ("seq", "repeat", "prompt_id", "suite", "k", "drafter", "tokens_per_s",
              "baseline_tokens_per_s", "speedup", "acceptance_rate", "alpha", "rejections",
              "tokens_per_round",
              "new_tokens", "prompt_tokens", "rounds", "drafted", "accepted", "decode_seconds",
              "prompt_seconds", "draft_seconds", "verify_seconds", "sample_seconds",
              "other_seconds", "llama_seconds", "python_share", "accepted_hist", "k_chosen",
              "drafter_rounds", "stop_reason", "matches_baseline")


def csv_record(row: dict) -> dict:
    """A result row for CSV: scalars as they are, histograms as 'key:count' lists."""
    out = {}
    for name in CSV_FIELDS:
        v = row.get(name)
        if isinstance(v, dict):
            v = " ".join(f"{k}:{c}" for k, c in v.items())
        elif isinstance(v, list):
            v = " ".join(str(x) for x in v)
        elif v is None:
            v = ""
        out[name] = v
    return out


# --------------------------------------------------------------------------- summary


def summarize(rows: Sequence[dict], variants: Sequence[Variant], calib: Calibration | None,
              info: dict) -> dict:
    """Per-variant figures (all prompts), per-suite figures, the recommendation and the checks."""
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    out = {
        "order": ORDER,
        "speedup": SPEEDUP_DEFINITION,
        "calibration": calib.to_dict() if calib else None,
        "variants": [_variant_summary(v, [r for r in rows if _is(r, v)], calib) for v in variants],
        "suites": {},
        **info,
    }
    for suite in suites:
        srows = [r for r in rows if r["suite"] == suite]
        vs = [_variant_summary(v, [r for r in srows if _is(r, v)], calib, brief=True)
              for v in variants]
        out["suites"][suite] = {"variants": vs, **_recommend(vs, calib, srows)}
    out["in_run_costs"] = in_run_costs(rows)
    out["greedy_mismatches"] = [r["seq"] for r in rows if r["matches_baseline"] is False]
    return out


def _is(row: dict, v: Variant) -> bool:
    return row["k"] == v.k and row["drafter"] == v.drafter


def _variant_summary(v: Variant, rows: list[dict], calib, brief: bool = False) -> dict:
    d = {"k": v.k, "drafter": v.drafter, "runs": len(rows)}
    if not rows:
        return d
    tps = [r["tokens_per_s"] for r in rows]
    sp = [r["speedup"] for r in rows if r["speedup"] is not None]
    drafted = sum(r["drafted"] for r in rows)
    accepted = sum(r["accepted"] for r in rows)
    alpha = _alpha(accepted, sum(r["rejections"] for r in rows))
    d.update(tokens_per_s=_spread(tps), speedup=_spread(sp) if sp else None,
             acceptance_rate=accepted / drafted if drafted else None, alpha=alpha)
    d.update(_predictions(v, rows, alpha, calib))
    d.update(_overlap_means(rows))
    if brief:
        return d
    dec = sum(r["decode_seconds"] for r in rows) or 1e-12
    n_rounds = sum(r["rounds"] for r in rows)
    d.update(
        tokens_per_round=sum(r["new_tokens"] for r in rows) / n_rounds if n_rounds else 0.0,
        accepted_hist=_sum_lists(r["accepted_hist"] for r in rows),
        k_chosen=_sum_hists(r["k_chosen"] for r in rows),
        drafter_rounds=_sum_hists(r["drafter_rounds"] for r in rows),
        shares={"draft": sum(r["draft_seconds"] for r in rows) / dec,
                "verify": sum(r["verify_seconds"] for r in rows) / dec,
                "other": sum(r["other_seconds"] for r in rows) / dec},
        python_share=1.0 - sum(r["llama_seconds"] for r in rows) / dec,
    )
    return d


def _overlap_means(rows: list[dict]) -> dict:
    """Mean sum min(p, q) and sum p*q over the rows' verified model-draft positions (sampled
    runs only): the acceptance rejection sampling expects against exact match's."""
    n = sum(r.get("overlap_positions", 0) for r in rows)
    if not n:
        return {"expected_acceptance": None, "exact_match_acceptance": None}
    return {"expected_acceptance": sum(r["beta_sum"] for r in rows) / n,
            "exact_match_acceptance": sum(r["exact_match_sum"] for r in rows) / n}


def _spread(xs: Sequence[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _sum_lists(lists) -> list[int]:
    out: list[int] = []
    for xs in lists:
        out += [0] * (len(xs) - len(out))
        for i, x in enumerate(xs):
            out[i] += x
    return out


def _sum_hists(hists) -> dict[str, int]:
    c: Counter = Counter()
    for h in hists:
        c.update(h)
    keys = sorted(c, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
    return {k: c[k] for k in keys}


def in_run_costs(rows: Sequence[dict]) -> dict:
    """Costs seen inside the runs, to set beside the calibration: the median verify call
    per batch size n (rounds that sent n - 1 drafts) and the median model-draft cost per
    drafted token (a round of k model drafts makes k draft decodes)."""
    by_n: dict[int, list[float]] = {}
    per_token: list[float] = []
    for r in rows:
        pr = r["per_round"]
        for n, src, td, tv in zip(pr["drafted"], pr["drafter"], pr["t_draft"], pr["t_verify"]):
            by_n.setdefault(n + 1, []).append(tv)
            if src == "model" and n:
                per_token.append(td / n)
    return {"t_verify": {str(n): statistics.median(v) for n, v in sorted(by_n.items())},
            "t_verify_rounds": {str(n): len(v) for n, v in sorted(by_n.items())},
            "t_draft": statistics.median(per_token) if per_token else None}


def _predictions(v: Variant, rows: list[dict], alpha, calib: Calibration | None) -> dict:
    """Predicted speedups from the calibrated costs (see benchmarks/README.md).

    predicted_speedup: Leviathan et al.'s E(K) t_v(1) / (K t_d + t_v(K+1)) with this
    variant's alpha (accepted / judged, see _alpha). predicted_speedup_catchup: the same
    plus the draft's catch-up, which the formula leaves out: a round after an all-accepted
    one (probability alpha^K) first feeds 2 tokens, not 1. Both only for fixed-K model
    drafting, where their assumptions hold.
    replayed_speedup: the calibrated costs, catch-ups included, applied to the rounds this
    variant actually ran; for every variant, auto and n-gram (free drafts) included.
    """
    if calib is None or v.is_baseline:
        one = 1.0 if v.is_baseline else None
        return {"predicted_speedup": one, "predicted_speedup_catchup": one, "replayed_speedup": one}
    from specli.costs import predicted_speedup

    pred = pred_c = None
    if v.drafter == "model" and v.k != "auto" and alpha is not None and calib.t_draft is not None:
        pred = predicted_speedup(alpha, v.k, calib.t_draft, calib.t_v)
        pred_c = predicted_speedup_catchup(alpha, v.k, calib)
    return {"predicted_speedup": pred, "predicted_speedup_catchup": pred_c,
            "replayed_speedup": _replay(rows, calib)}


def predicted_speedup_catchup(alpha: float, k: int, calib: Calibration) -> float:
    """E(K) t_v(1) / (K t_d + t_v(K+1) + alpha^K (t_db(2) - t_db(1)))."""
    from specli.costs import expected_tokens

    seconds = k * calib.t_draft + calib.t_v(k + 1) + alpha**k * calib.catchup(2)
    return expected_tokens(alpha, k) * calib.t_v(1) / seconds


def _replay(rows: list[dict], calib: Calibration) -> float | None:
    """tokens * t_v(1) / sum over rounds of (t_v(n_i + 1) + model drafting incl. catch-up)."""
    t_d = calib.t_draft or 0.0
    tokens, seconds = 0, 0.0
    for r in rows:
        pr = r["per_round"]
        tokens += r["new_tokens"]
        lag = 1  # committed tokens the draft has not decoded (the pending one at least)
        for n, src, acc in zip(pr["drafted"], pr["drafter"], pr["accepted"]):
            seconds += calib.t_v(n + 1)
            if src == "model" and n:
                seconds += n * t_d + calib.catchup(lag)
                lag = 2 if acc == n else 1  # all accepted: its own last draft is undecoded
            else:
                lag += acc + 1  # the draft never saw this round's tokens
    return tokens * calib.t_v(1) / seconds if seconds > 0 else None


def break_even_alpha(k: int, t_d: float, t_verify, catchup: float = 0.0) -> float | None:
    """The alpha at which K drafts per round match the target alone (None: not even at 1).

    t_verify: a sequence (t_verify[n - 1]) or a callable n -> seconds; catchup: the extra
    draft time of a round after an all-accepted one (probability alpha^K).
    """
    from specli.costs import expected_tokens

    t_v = t_verify if callable(t_verify) else (lambda n: t_verify[n - 1])

    def speedup(alpha: float) -> float:
        return expected_tokens(alpha, k) * t_v(1) / (k * t_d + t_v(k + 1) + alpha**k * catchup)

    if speedup(1.0) < 1.0:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):  # speedup is increasing in alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup(mid) < 1.0 else (lo, mid)
    return hi


def _paired(rows: Sequence[dict], a: dict, b: dict) -> float | None:
    """Median over (prompt, repeat) of tok/s of variant a / tok/s of variant b."""
    tps = {(r["prompt_id"], r["repeat"], r["drafter"], r["k"]): r["tokens_per_s"] for r in rows}
    ratios = [x / tps[(p, rep, b["drafter"], b["k"])]
              for (p, rep, d, k), x in tps.items()
              if (d, k) == (a["drafter"], a["k"]) and tps.get((p, rep, b["drafter"], b["k"]))]
    return statistics.median(ratios) if ratios else None


def _recommend(vs: list[dict], calib: Calibration | None, rows: Sequence[dict]) -> dict:
    """Best variant of one suite, the verdict, the numbers behind it, and the auto checks."""
    scored = [v for v in vs if v.get("speedup") and v["k"] != 0]
    out: dict = {"best": None, "pays": False, "auto": {}}
    fixed = [v for v in scored if v["k"] != "auto"]
    best_fixed = max(fixed, key=lambda v: v["speedup"]["median"], default=None)
    for v in scored:
        if v["k"] == "auto":
            out["auto"][v["drafter"]] = {
                "vs_baseline": v["speedup"]["median"],
                "vs_best_fixed": _paired(rows, v, best_fixed) if best_fixed else None,
            }
    if not scored:
        return out
    best = max(scored, key=lambda v: v["speedup"]["median"])
    out["best"] = {"k": best["k"], "drafter": best["drafter"], "speedup": best["speedup"]["median"]}
    out["best_fixed"] = ({"k": best_fixed["k"], "drafter": best_fixed["drafter"],
                          "speedup": best_fixed["speedup"]["median"]} if best_fixed else None)
    out["pays"] = best["speedup"]["median"] >= PAYS
    out["advice"] = _advice(out)
    if calib is not None and calib.t_draft is not None:
        ks = [v for v in fixed if v["drafter"] == "model"]
        out["why"] = {
            "draft_ratio": calib.t_draft / calib.t_v(1),
            "catchup_ratio": calib.catchup(2) / calib.t_v(1),
            "verify_ratio": {str(v["k"]): calib.t_v(v["k"] + 1) / calib.t_v(1) for v in ks},
            "alpha": {str(v["k"]): v["alpha"] for v in ks},
            "break_even_alpha": {str(v["k"]): break_even_alpha(v["k"], calib.t_draft, calib.t_v,
                                                               calib.catchup(2)) for v in ks},
        }
    return out


def _advice(rec: dict) -> dict:
    """What to run: the best variant when it pays; else `--k auto` if an auto row kept up
    with the target alone (within noise: it drafts only where drafting pays, so it costs
    nothing here and gains where text repeats); else `--k 0`."""
    if rec["pays"]:
        return {"k": rec["best"]["k"], "drafter": rec["best"]["drafter"]}
    autos = {d: a["vs_baseline"] for d, a in rec["auto"].items() if a.get("vs_baseline")}
    if autos:
        drafter, speedup = max(autos.items(), key=lambda kv: kv[1])
        if speedup >= 1 / PAYS:
            return {"k": "auto", "drafter": drafter}
    return {"k": 0, "drafter": None}


# --------------------------------------------------------------------------- machine


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class OtherCpu:
    """Share of the machine's CPU time used by other processes between start and stop.

    From /proc/stat (all CPUs, busy jiffies) minus this process's own user + system time:
    a direct measure of how much a concurrent job skewed the timings. None off Linux.
    """

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return busy / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime, time.monotonic()

    def share(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / ((end[2] - self.start[2]) * (os.cpu_count() or 1)))


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
