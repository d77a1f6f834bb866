"""The speculative decoding loop: draft -> verify -> accept/resample -> rewind, as events.

`speculative_generate` yields one `Round` per verification and a final `Done`. Nothing
here prints; the CLI, the live view, the benchmark and the tests all read these events.
K = 0 runs the target alone through the same loop: that is the baseline everywhere.

KV invariant for both models: the cache holds the committed sequence (prompt + output)
except its last token, which is pending. A round feeds the target [pending, d1..dK] and
reads K + 1 rows of logits, so the target's cost per round is one batched decode.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np

from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import Drafter, Proposal
from specli.core.grammar import masked
from specli.core.policy import FixedK, Policy
from specli.core.sampling import Verdict, overlap, verify, verify_greedy, warp

StopReason = Literal["eog", "max_tokens", "context_full", "interrupted"]


@dataclass(frozen=True)
class Round:
    """One round: what was drafted, what the target kept, and what it cost."""

    index: int
    k: int  # draft budget chosen for this round (0: target alone); drafts may be fewer
    drafter: str  # "model" | "ngram" | "none"
    draft_tokens: tuple[int, ...]
    accept_probs: tuple[float, ...]  # per examined draft: min(1, p/q) (1/0 when greedy)
    n_accepted: int
    token: int  # the target's own token: a correction, or the bonus when all were accepted
    bonus: bool
    tokens: tuple[int, ...]  # appended to the output (accepted drafts + token, cut at a stop)
    pieces: tuple[str, ...]  # text of each appended token (UTF-8 safe: may be "")
    rejected: str  # text of the first rejected draft token ("" if none)
    t_draft: float
    t_verify: float  # target decode
    t_sample: float  # warps and verification in Python
    trace: object | None = None  # specli.core.trace.RoundTrace, only under trace=True
    logprobs: tuple | None = None  # a TokenLogprob per appended token, only when asked

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Stats:
    """Totals for one generation. Times in seconds; `decode_seconds` excludes the prompt."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    ttft: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    sample_seconds: float = 0.0
    llama_seconds: float = 0.0  # inside llama_decode, both models, prompt excluded
    accepted_hist: list[int] = field(default_factory=list)  # rounds by accepted count
    # Sampled model drafts only (temperature > 0): per examined position, sum min(p, q)
    # (rejection sampling's acceptance) and sum p*q (exact match's), summed.
    overlap_positions: int = 0
    beta_sum: float = 0.0
    exact_match_sum: float = 0.0
    grammar_cut: int = 0  # n-gram draft tokens a grammar forbade, cut before verification

    @property
    def expected_acceptance(self) -> float | None:
        """Mean sum min(p, q) over verified model-draft positions: rejection sampling."""
        return self.beta_sum / self.overlap_positions if self.overlap_positions else None

    @property
    def exact_match_acceptance(self) -> float | None:
        """Mean sum p*q: what exact-match verification (llama-server, mlx-lm) would keep."""
        return self.exact_match_sum / self.overlap_positions if self.overlap_positions else None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def other_seconds(self) -> float:
        return max(0.0, self.decode_seconds - self.draft_seconds - self.verify_seconds)

    @property
    def seconds(self) -> float:
        return self.prompt_seconds + self.decode_seconds

    @property
    def python_share(self) -> float:
        """Share of decode wall time spent outside llama_decode."""
        if self.decode_seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - self.llama_seconds / self.decode_seconds)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("acceptance_rate", "mean_accepted", "tokens_per_round", "tokens_per_s",
                     "other_seconds", "seconds", "python_share", "expected_acceptance",
                     "exact_match_acceptance"):
            d[name] = getattr(self, name)
        return d


@dataclass(frozen=True)
class Done:
    """The final event: why generation stopped, the whole output, and the stats."""

    stop_reason: StopReason
    tokens: tuple[int, ...]
    text: str
    stats: Stats
    message: str | None = None


def collect(events: Iterator[Round | Done], on_round=None) -> tuple[Done, list[Round]]:
    """Read an event stream to its end: (the Done, the rounds). Ctrl-C while reading ends
    it as the engine does, with Done(stop_reason="interrupted"). `on_round` sees each
    round as it arrives (a live view)."""
    rounds: list[Round] = []
    try:
        for ev in events:
            if isinstance(ev, Done):
                _close(events)  # what waits for the end (a session keeping costs) runs now
                return ev, rounds
            rounds.append(ev)
            if on_round is not None:
                on_round(ev)
    except KeyboardInterrupt:
        done = events.throw(KeyboardInterrupt)
        _close(events)
        return done, rounds
    raise RuntimeError("engine ended without a Done event")


def _close(events) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


@dataclass
class _Detok:
    """Incremental UTF-8 text: a character split across tokens prints once it is whole."""

    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def feed(self, data: bytes) -> str:
        return self.decoder.decode(data)

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def speculative_generate(
    target,
    drafter: Drafter | None,
    prompt_tokens: Sequence[int],
    sampling: SamplingConfig,
    spec: SpecConfig,
    policy: Policy | None = None,
    n_vocab: int | None = None,
    verify_chunk=None,
    trace: bool = False,
    rules=None,
    logprobs: int | None = None,
    constraint=None,
) -> Iterator[Round | Done]:
    """Generate from `target`, drafting with `drafter`, as a stream of events.

    `policy` chooses K each round (default: FixedK(spec.k)); `n_vocab` masks ids beyond
    the vocabulary both models share. KV caches are reused: tokens already cached
    (target.n_past, a common prefix the caller kept) are not decoded again.
    Ctrl-C (KeyboardInterrupt) inside the loop, or thrown in at a yield, ends the
    stream with Done(stop_reason="interrupted").

    `verify_chunk` (strict mode): verify in decode calls of at most this many tokens,
    decoding the next chunk only while every draft so far is accepted. With a chunk no
    larger than the target's batch-invariant size (specli.core.numerics), every row of p and
    every KV entry equals what single-token decoding (K = 0) computes, bit for bit.
    It may be a callable n_past -> size (numerics.ChunkRule): the invariant size can shrink
    as the context grows.

    `trace`: each Round carries a specli.core.trace.RoundTrace (top p and q per examined
    position, the uniforms drawn, the residual). Off, nothing of it is computed.

    `rules`: a core.logits.LogitRules (logit bias, presence and frequency penalties),
    applied to every row of p given the output and the drafts before it, and by the
    model drafter to its q. None: the logits as they are.

    `constraint`: a core.grammar.Constraint at the start of the output (a grammar, a JSON
    schema): each row of p is masked with its state after the output and the drafts before
    it; n-gram drafts are cut at the first token it forbids, before verification; the model
    drafter masks q with it. The output is then distributed exactly as the target alone
    under the same grammar. See core.grammar.

    `logprobs` (the number of alternatives, 0..20): each Round carries a TokenLogprob per
    appended token: its log-probability under the target's distribution at that position
    (the softmax of its logits after the rules, before the warps: what the model says,
    whatever temperature samples from it), and the most likely tokens there.
    """
    run = _Run(target, drafter, list(prompt_tokens), sampling, spec,
               policy or FixedK(spec.k if isinstance(spec.k, int) else 0),
               n_vocab or target.n_vocab)
    run.verify_chunk = verify_chunk
    run.trace = trace
    run.rules = rules
    run.logprobs = logprobs
    run.constraint = constraint
    return run.events()


class _Run:
    def __init__(self, target, drafter, prompt, sampling, spec, policy, n_vocab) -> None:
        self.target, self.drafter, self.sampling, self.spec = target, drafter, sampling, spec
        self.policy, self.n_vocab = policy, n_vocab
        self.committed = prompt
        self.n_prompt = len(prompt)  # committed[n_prompt:] is the output, for the rules
        self.out: list[int] = []
        self.rng = np.random.default_rng(spec.seed)
        self.stats = Stats(prompt_tokens=len(prompt))
        self.detok = _Detok()
        self.text: list[str] = []
        self.verify_chunk = None  # strict mode: an int or n_past -> int, see speculative_generate
        self.trace = False  # build a RoundTrace per round: see speculative_generate
        self.rules = None  # core.logits.LogitRules: see speculative_generate
        self.logprobs = None  # alternatives per TokenLogprob, or None: see speculative_generate
        self.constraint = None  # core.grammar.Constraint: see speculative_generate
        self._first_row = None  # strict: round 1's first row, decoded with the prompt

    def events(self) -> Iterator[Round | Done]:
        stop: StopReason | None = None
        message = None
        t_start = time.perf_counter()
        try:
            self._prefill()
            self._t_dec = time.perf_counter()
            self.stats.prompt_seconds = self._t_dec - t_start
            self._llama0 = self._llama_seconds()
            while stop is None:
                room = self.target.n_ctx - len(self.committed)
                if room < 0:  # the pending token itself no longer fits
                    stop, message = "context_full", f"context full ({self.target.n_ctx} tokens): stopped"
                    break
                rnd, stop = self._round(max(0, room))
                self.stats.decode_seconds = time.perf_counter() - self._t_dec
                self.stats.llama_seconds = self._llama_seconds() - self._llama0
                if self.stats.rounds == 1:
                    self.stats.ttft = time.perf_counter() - t_start
                yield rnd
        except KeyboardInterrupt:
            stop, message = "interrupted", "interrupted"
        self.stats.decode_seconds = max(self.stats.decode_seconds, 0.0)
        tail = self.detok.flush()
        if tail:
            self.text.append(tail)
        yield Done(stop, tuple(self.out), "".join(self.text), self.stats, message)

    def _llama_seconds(self) -> float:
        model = self.drafter.draft_model if self.drafter is not None else None
        return self.target.decode_seconds + (model.decode_seconds if model is not None else 0.0)

    def _prefill(self) -> None:
        """Decode the prompt minus its pending last token, in both models (reusing caches)."""
        from specli.errors import ContextFullError

        if len(self.committed) >= self.target.n_ctx:
            raise ContextFullError(
                f"prompt is {len(self.committed)} tokens; it does not fit --ctx {self.target.n_ctx}"
            )
        self.target.reuse_prefix(self.committed)  # a chat turn re-decodes only what is new
        if self.verify_chunk:
            # Strict: the prompt decoded as K = 0 decodes it, in one call with its last
            # row, then the drafts in chunks. Decoding it minus its last token (as before)
            # wrote other KV numerics for its positions than K = 0's call: on the real pair
            # greedy output then split from K = 0's at a near-tie (token 9 of 200).
            row = self.target.decode(self.committed[self.target.n_past :], 1)
            self._first_row = np.array(row[0, : self.n_vocab])
        # Otherwise the prompt's new tokens are decoded with round 1's rows, in one call:
        # its last token decoded on its own costs one more pass over the weights (126 new
        # tokens at a 1,870-token context on 2 cores: 125 + 1 took 1.49-1.61 s, one batch
        # 1.37-1.41 s), which was specli's whole time-to-first-token gap to llama-server.
        if self.drafter is not None:
            # drafters are reused: always told (None included)
            self.drafter.constrain(self.rules, self.n_prompt, self.constraint)
            self.drafter.prefill(self.committed)

    def _round(self, room: int) -> tuple[Round, StopReason | None]:
        left = self.spec.max_tokens - len(self.out)
        if callable(self.verify_chunk):
            # Strict: the call size shrinks as the context grows; --k auto prices today's.
            self.policy.price_chunk(self.verify_chunk(len(self.committed)))
        k, source = 0, "none"
        batch_load = getattr(self.target, "batch_load", None)
        if batch_load is not None and self.drafter is not None:
            # Other sequences share this step (llama.batch): drafts are priced by what
            # they add to the whole batch's time and tokens, not this sequence's alone.
            self.policy.price_batch(*batch_load())
        if self.drafter is not None:
            source = self.drafter.next_source(self.committed)
            match_len, origin = (self.drafter.match(self.committed) if source == "ngram"
                                 else (0, ""))
            model = self.drafter.draft_model
            catchup = len(self.committed) - model.n_past if model is not None else 0
            source, k = self.policy.plan(source, match_len, self.drafter.fallback,
                                         catchup=catchup, left=left, origin=origin)
            # Never draft past max_tokens (the target adds one token of its own) or the context.
            k = max(0, min(k, left - 1, room))
        prop = (self.drafter.propose(self.committed, k, self.rng, self.policy.keep_drafting,
                                     source=source)
                if k > 0 else Proposal())
        if self.constraint is not None and prop.tokens:
            self._cut(prop)
        t0 = time.perf_counter()
        pending = self.committed[self.target.n_past :]
        tokens = pending + prop.tokens
        if self.verify_chunk:  # strict: chunks decoded on demand inside verification
            first, self._first_row = self._first_row, None
            if first is not None:  # round 1: the prompt's call gave row 0
                tokens = self.committed[-1:] + prop.tokens
            elif len(pending) > 1:  # rows start at the last pending token (never the case
                self.target.decode(pending[:-1], 0)  # after prefill; kept for safety)
                tokens = tokens[len(pending) - 1 :]
            chunked = _ChunkedRows(self.target, tokens, self.verify_chunk, self.n_vocab, first)
            rows = self._ruled(chunked, prop)
            verdict, p_rows, uniforms = self._verify(prop, rows)
            t_verify = chunked.seconds
            calls = chunked.calls
        else:
            rows = self.target.decode(tokens, len(prop.tokens) + 1)[:, : self.n_vocab]  # [k+1, V]
            t_verify = time.perf_counter() - t0
            # A shared step (llama.batch) held other sequences' tokens too: its cost is
            # that of the whole call.
            shared = getattr(self.target, "last_rows", 0)
            calls = ([(shared, self.target.last_seconds)] if shared else [(len(tokens), t_verify)])
            if len(pending) > 1:  # round 1 decoded the prompt's tail too (see _prefill):
                self.stats.prompt_seconds += t_verify  # prompt time, not a verify cost
                self._t_dec += t_verify
                self._llama0 += t_verify
                t_verify, calls = 0.0, []  # nothing for the cost model to learn from
            rows = self._ruled(rows, prop)
            verdict, p_rows, uniforms = self._verify(prop, rows)
        if prop.source == "model" and p_rows is not None:
            self._count_overlap(prop, verdict, p_rows)
        t_sample = time.perf_counter() - t0 - t_verify
        detail = None
        if self.trace:  # off the clock: a trace must not change the measured split much
            from specli.core.trace import build_trace

            detail = build_trace(self.target, prop, verdict, p_rows, rows, uniforms,
                                 self.sampling.greedy)
        return self._commit(k, prop, verdict, t_verify, t_sample, calls, detail, rows)

    def _cut(self, prop: Proposal) -> None:
        """Drop the drafts from the first one the grammar forbids: it would cost a verify
        row and be rejected. Only point-mass (n-gram) drafts can be cut; the model drafter
        masked its q with the same grammar, so nothing it sampled is forbidden."""
        n = self.constraint.allowed_prefix(prop.tokens)
        if n < len(prop.tokens):
            assert prop.source != "model", "a masked model draft was forbidden"
            self.stats.grammar_cut += len(prop.tokens) - n
            del prop.tokens[n:], prop.q[n:], prop.q_probs[n:]

    def _ruled(self, rows, prop: Proposal):
        """The target's rows under the logit rules and the grammar (each after the output
        and the drafts before it), computed as verification reaches them; the rows as they
        are without either."""
        if self.rules is None and self.constraint is None:
            return rows
        return _RuledRows(rows, self.rules, self.committed, self.n_prompt, prop.tokens,
                          self.constraint)

    def _verify(self, prop: Proposal, rows) -> tuple[Verdict, "_LazyWarp | None", list | None]:
        """The verdict, the warped p rows it used (None when greedy), and, when tracing,
        the uniforms drawn."""
        if self.sampling.greedy:
            argmax = (np.argmax(rows, axis=1) if isinstance(rows, np.ndarray)
                      else _LazyArgmax(rows))  # strict: a chunk is decoded only when reached
            return verify_greedy(prop.tokens, argmax), None, None
        p_target = _LazyWarp(rows, self.sampling)  # rows past a rejection are never warped
        uniforms = [] if self.trace else None
        return verify(prop.tokens, prop.q, p_target, self.rng, uniforms), p_target, uniforms

    def _count_overlap(self, prop: Proposal, verdict: Verdict, p_rows) -> None:
        """Item of the stats: both acceptances at each examined draft position, from the p
        and q this round already warped (so no extra warp, only an O(support) lookup)."""
        s = self.stats
        for i in range(len(verdict.accept_probs)):
            beta, pq = overlap(p_rows[i], prop.q[i])
            s.overlap_positions += 1
            s.beta_sum += beta
            s.exact_match_sum += pq

    def _commit(self, k, prop, verdict, t_verify, t_sample, calls,
                detail=None, rows=None) -> tuple[Round, StopReason | None]:
        n = verdict.n_accepted
        new = prop.tokens[:n] + [verdict.token]
        kept, stop = [], None
        for tok in new:
            if self.target.is_eog(tok):
                stop = "eog"
                break
            kept.append(tok)
            if len(self.out) + len(kept) >= self.spec.max_tokens:
                stop = "max_tokens"
                break
        self.committed.extend(new)
        self.out.extend(kept)
        # Target cached [.., pending, d1..dK]: keep through d_n; verdict.token is now pending.
        self.target.truncate(len(self.committed) - 1)
        if self.drafter is not None and k > 0:
            self.drafter.rewind(self.committed)
        pieces = tuple(self.detok.feed(self.target.token_bytes(t)) for t in kept)
        self.text.extend(pieces)
        # Shown struck through; control tokens are spelled out so a rejection is never invisible.
        rejected = "" if n >= len(prop.tokens) else self.target.token_text(prop.tokens[n])
        self._count(k, prop, n, len(kept), t_verify, t_sample)
        self.policy.observe_round(k=len(prop.tokens), n_accepted=n,
                                  draft_seconds=prop.seconds - prop.catchup_seconds,
                                  verify_seconds=t_verify, source=prop.source,
                                  draft_probs=prop.q_probs, verify_calls=calls,
                                  catchup=((prop.catchup_tokens, prop.catchup_seconds)
                                           if prop.catchup_tokens else None))
        # Token j of this round was drawn, or kept, at row j: after the drafts before it.
        lps = (tuple(token_logprob(rows[j], tok, self.logprobs, self.target.token_bytes)
                     for j, tok in enumerate(kept)) if self.logprobs is not None else None)
        if self.constraint is not None:  # every row is read: back to the output, then on
            self.constraint.pop()
            self.constraint.commit(new)
        rnd = Round(self.stats.rounds, k, prop.source if prop.tokens else "none",
                    tuple(prop.tokens), verdict.accept_probs, n, verdict.token, verdict.bonus,
                    tuple(kept), pieces, rejected, prop.seconds, t_verify, t_sample, detail,
                    lps)
        return rnd, stop

    def _count(self, k, prop, n, n_kept, t_verify, t_sample) -> None:
        s = self.stats
        s.rounds += 1
        s.drafted += len(prop.tokens)
        s.accepted += n
        s.new_tokens += n_kept
        s.draft_seconds += prop.seconds
        s.verify_seconds += t_verify
        s.sample_seconds += t_sample
        while len(s.accepted_hist) <= n:
            s.accepted_hist.append(0)
        s.accepted_hist[n] += 1


class _ChunkedRows:
    """Strict verification's target rows: decoded `chunk` tokens per call, on first use.

    Row i (the target's p after tokens[:i+1]) is decoded together with the rest of its
    chunk; verification stops at the first rejection, so later chunks are never decoded
    and their positions never enter the KV cache. Rows are copied out of llama.cpp's
    buffer, which the next decode call overwrites.
    """

    def __init__(self, target, tokens: Sequence[int], chunk: int, n_vocab: int,
                 first: np.ndarray | None = None) -> None:
        """`first`: row 0, when tokens[0] is already decoded (the prompt's call)."""
        self.target, self.tokens, self.chunk, self.n_vocab = target, list(tokens), chunk, n_vocab
        self.rows: list[np.ndarray] = [] if first is None else [first]
        self.calls: list[tuple[int, float]] = []  # (tokens, seconds) per decode call
        self.seconds = 0.0

    def __getitem__(self, i: int) -> np.ndarray:
        while len(self.rows) <= i:
            size = self.chunk(self.target.n_past) if callable(self.chunk) else self.chunk
            part = self.tokens[len(self.rows) : len(self.rows) + size]
            t0 = time.perf_counter()
            out = self.target.decode(part, len(part))[:, : self.n_vocab]  # [len(part), V]
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.calls.append((len(part), dt))
            self.rows.extend(np.array(out))
        return self.rows[i]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the likeliest tokens at its position."""

    token: int
    bytes: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...]  # (token, its bytes, logprob), likeliest first


def token_logprob(row, token: int, n_top: int, token_bytes) -> TokenLogprob:
    """`token`'s log-softmax in `row` (one position's logits) and the `n_top` likeliest."""
    z = np.asarray(row, dtype=np.float64)
    m = z.max()
    lse = m + np.log(np.exp(z - m).sum())
    top = np.argpartition(-z, n_top)[:n_top] if 0 < n_top < len(z) else np.arange(len(z))[:n_top]
    top = top[np.argsort(-z[top], kind="stable")]
    top = top[np.isfinite(z[top])]  # a grammar's forbidden ids are no alternatives
    return TokenLogprob(token, token_bytes(token), float(z[token] - lse),
                        tuple((int(i), token_bytes(int(i)), float(z[i] - lse)) for i in top))


class _RuledRows:
    """Row i under the logit rules and the grammar, given the output so far and
    drafts[:i] (on first use). The grammar's matcher is pushed along the drafts as far as
    the rows read need it, and popped by the round."""

    def __init__(self, rows, rules, committed: Sequence[int], start: int,
                 drafts: Sequence[int], constraint=None) -> None:
        self.rows, self.rules, self.constraint = rows, rules, constraint
        # Only what the rules read: the output, and the prompt's end for the repeat window.
        self.start = min(start, rules.window) if rules is not None else 0
        self.committed = list(committed[start - self.start :]) if rules is not None else []
        self.drafts = list(drafts)
        self.cache: dict[int, np.ndarray] = {}
        self.masks: list[np.ndarray] = []  # allowed ids after drafts[:j], j = 0, 1, ...

    def _mask(self, row: np.ndarray, i: int) -> np.ndarray:
        c = self.constraint
        while len(self.masks) <= i:  # the state after drafts[:j], for every j up to i
            if self.masks:
                c.push(self.drafts[len(self.masks) - 1])
            self.masks.append(c.allowed())
        return masked(row, self.masks[i])

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            row = (self.rules.after(self.rows[i], self.committed, self.start, self.drafts[:i])
                   if self.rules is not None else np.array(self.rows[i], dtype=np.float32))
            if self.constraint is not None:
                row = self._mask(row, i)
            self.cache[i] = row
        return self.cache[i]

    def __len__(self) -> int:
        return len(self.rows)


class _LazyArgmax:
    """argmax of each row, computed when verify_greedy reaches it."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def __getitem__(self, i: int) -> int:
        return int(np.argmax(self.rows[i]))

    def __len__(self) -> int:
        return len(self.rows)


class _LazyWarp:
    """p_i = warp(row_i) computed on first use: verification stops at the first rejection."""

    def __init__(self, rows: np.ndarray, cfg: SamplingConfig) -> None:
        self.rows, self.cfg, self.cache = rows, cfg, {}

    def __getitem__(self, i: int):
        if i not in self.cache:
            self.cache[i] = warp(self.rows[i], self.cfg)
        return self.cache[i]

    def __len__(self) -> int:
        return len(self.rows)
