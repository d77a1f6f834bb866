"""Per-round trace detail: what the verification saw, collected only when asked for.

The engine builds a RoundTrace only under `speculative_generate(..., trace=True)`; without
it no function here runs and Round.trace is None. Everything is read from the arrays the
round already has (the warped p and q, the target's logits rows), so a trace never
changes what is sampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from specli.core.sampling import Dist, overlap, residual, softmax_dist, top_entries

N_TOP = 5
Alt = tuple[int, str, float]  # (token id, text, probability)


@dataclass(frozen=True)
class PositionTrace:
    """One examined draft position: the draft token against p and q, and the verdict."""

    index: int
    token: int
    text: str
    q_x: float | None  # None when greedy (the draft kept no distribution)
    p_x: float  # greedy: the untempered softmax probability
    accept: float  # min(1, p/q); greedy: 1 if the token is the target's argmax, else 0
    u: float | None  # the uniform drawn; accepted iff u < accept (None when greedy)
    accepted: bool
    p_top: tuple[Alt, ...]
    q_top: tuple[Alt, ...]
    beta: float | None  # sum min(p, q) here (None when greedy)
    exact_match: float | None  # sum p*q here
    target_argmax: int | None = None  # greedy only


@dataclass(frozen=True)
class RoundTrace:
    """The examined positions and where the target's own token came from."""

    greedy: bool
    positions: tuple[PositionTrace, ...]
    source: str  # "residual" (after a rejection), "p" (bonus or K = 0), "argmax" (greedy)
    token: int
    token_text: str
    token_prob: float  # probability of `token` under the distribution it was drawn from
    token_p: float  # p(token) at its position (greedy: the untempered softmax)
    drawn_top: tuple[Alt, ...]  # that distribution's top entries (the residual's on a rejection)
    p_top: tuple[Alt, ...]  # p at the token's position

    def to_dict(self) -> dict:
        return asdict(self)


def _alts(target, d: Dist) -> tuple[Alt, ...]:
    return tuple((i, target.token_text(i), round(p, 6)) for i, p in top_entries(d, N_TOP))


def build_trace(target, prop, verdict, p_rows, rows, uniforms, greedy: bool) -> RoundTrace:
    """A RoundTrace from what one round computed: `p_rows[i]` the warped p_i (sampled
    rounds), `rows[i]` the target's logits row i, `uniforms` verify's draws."""
    if greedy:
        return _greedy_trace(target, prop, verdict, rows)
    n = verdict.n_accepted
    positions = []
    for i in range(len(verdict.accept_probs)):
        x, p, q = prop.tokens[i], p_rows[i], prop.q[i]
        beta, pq = overlap(p, q)
        positions.append(PositionTrace(
            i, x, target.token_text(x), q.prob(x), p.prob(x), verdict.accept_probs[i],
            uniforms[i], i < n, _alts(target, p), _alts(target, q), beta, pq))
    p_n = p_rows[n]
    drawn = p_n if verdict.bonus or not prop.tokens else residual(p_n, prop.q[n])
    return RoundTrace(False, tuple(positions), "p" if drawn is p_n else "residual", verdict.token,
                      target.token_text(verdict.token), drawn.prob(verdict.token),
                      p_n.prob(verdict.token), _alts(target, drawn), _alts(target, p_n))


def _greedy_trace(target, prop, verdict, rows) -> RoundTrace:
    positions = []
    for i in range(len(verdict.accept_probs)):
        x, soft = prop.tokens[i], softmax_dist(np.asarray(rows[i]))
        best = int(np.argmax(rows[i]))
        positions.append(PositionTrace(
            i, x, target.token_text(x), None, soft.prob(x), verdict.accept_probs[i], None,
            i < verdict.n_accepted, _alts(target, soft), (), None, None, best))
    soft = softmax_dist(np.asarray(rows[verdict.n_accepted]))
    alts = _alts(target, soft)
    return RoundTrace(True, tuple(positions), "argmax", verdict.token,
                      target.token_text(verdict.token), soft.prob(verdict.token),
                      soft.prob(verdict.token), alts, alts)
