"""Pure numpy sampling and speculative verification. No I/O, no models, explicit Generator.

The rule (Leviathan et al. 2023; Chen et al. 2023): for draft tokens x_1..x_K sampled from
the draft's q_i, with the target's p_i at the same positions,

    accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
    at the first rejection, emit a token from norm(max(0, p_i - q_i)) and stop;
    if all K are accepted, emit a bonus token from p_{K+1}.

Every emitted token is then distributed exactly as p. A point-mass draft (an n-gram
proposal, q = delta_x) is the same rule: accept with p(x); on rejection sample p with x
removed and renormalised. Temperature 0 is exact greedy: accept the longest prefix that
equals the target's argmax (ties to the lowest id), then emit the target's own token.

Warps (temperature, top-k, top-p, min-p) are applied by `warp`, identically to p and q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from specli.config import SamplingConfig


@dataclass(frozen=True)
class Dist:
    """A distribution over token ids, stored sparsely: `ids` ascending, `probs` summing to 1."""

    ids: np.ndarray  # [n] int64, strictly ascending
    probs: np.ndarray  # [n] float64

    @staticmethod
    def point(token: int) -> "Dist":
        """The point mass on `token`: the draft distribution of an n-gram proposal."""
        return Dist(np.array([token], dtype=np.int64), np.array([1.0]))

    def at(self, tokens: np.ndarray) -> np.ndarray:
        """Probabilities of `tokens` (0 where outside the support)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        pos = np.searchsorted(self.ids, tokens)
        pos_c = np.minimum(pos, len(self.ids) - 1)
        hit = self.ids[pos_c] == tokens
        return np.where(hit, self.probs[pos_c], 0.0)

    def prob(self, token: int) -> float:
        return float(self.at(np.array([token]))[0])

    def sample(self, rng: np.random.Generator) -> int:
        return int(self.ids[_sample_index(self.probs, rng)])


def _sample_index(probs: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, len(probs) - 1)  # guards the u*total == cdf[-1] rounding edge


def greedy_token(logits: np.ndarray) -> int:
    """argmax with ties to the lowest id (np.argmax returns the first maximum)."""
    return int(np.argmax(logits))


def warp(logits: np.ndarray, cfg: SamplingConfig) -> Dist:
    """Logits [V] -> the sampling distribution: temperature, then top-k, top-p, min-p.

    Only the candidate set is ever sorted: top-k uses argpartition, so a 151,936-entry
    vocabulary costs one O(V) pass, not a full sort.
    """
    if cfg.greedy:
        return Dist.point(greedy_token(logits))
    n_vocab = logits.shape[-1]
    if 0 < cfg.top_k < n_vocab:
        ids = np.sort(_top_k_ids(logits, cfg.top_k))  # id order: top-p ties go to low ids
    else:
        ids = np.arange(n_vocab)
    z = logits[ids].astype(np.float64) / cfg.temperature
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    keep = np.ones(len(ids), dtype=bool)
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass strictly above each token
        keep[order[before >= cfg.top_p]] = False  # the top token always has before == 0
    if cfg.min_p > 0.0:
        keep &= probs >= cfg.min_p * probs.max()
    keep &= probs > 0.0  # masked ids (a grammar's -inf) are outside the support
    ids, probs = ids[keep], probs[keep]
    if cfg.infill is not None:
        return infill_filter(ids.astype(np.int64), probs / probs.sum(), cfg.infill)
    return Dist(ids.astype(np.int64), probs / probs.sum())


class InfillVocab:
    """What llama.cpp's infill sampler reads of a vocabulary: which ids end a generation,
    each id's bytes, and its end-of-turn id. Wraps a model (duck-typed: eog_tokens(),
    token_bytes(), eot); shared, never copied, by the configs that hold it."""

    def __init__(self, model) -> None:
        self._model = model
        self._eog = frozenset(model.eog_tokens())
        self.eot = model.eot

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def piece(self, token: int) -> bytes:
        return self._model.token_bytes(token)

    def __deepcopy__(self, memo):  # dataclasses.asdict of a config: the same vocabulary
        return self

    def __repr__(self) -> str:
        return "InfillVocab()"


def infill_filter(ids: np.ndarray, probs: np.ndarray, vocab) -> Dist:
    """llama.cpp's infill sampler (llama_sampler_infill_apply), step by step, as a filter:
    it decides which candidates survive, and llama.cpp's final `dist` samples them by
    their own probabilities again, so here too the survivors keep theirs (renormalised).

    On candidates by descending probability: if 3 * p(end) * n > p(text), only the
    end-of-generation ids are kept. Otherwise a token whose bytes begin another's is
    merged with it (the likelier absorbs the other's probability and the other is
    dropped); then text tokens under 0.2 are dropped (none left: the end-of-turn token
    alone), and after renormalising, text tokens under 1 / (texts left + 1).
    Float32 as there, so that the thresholds fall where llama.cpp's do.
    """
    order = np.argsort(-probs, kind="stable")
    ids, probs = ids[order], probs[order]
    p = probs.astype(np.float32)
    n = len(ids)
    eog = np.array([vocab.is_eog(int(t)) for t in ids], dtype=bool)
    if 3 * float(p[eog].sum()) * n > float(p[~eog].sum()):
        kept = eog
    else:
        pieces = [vocab.piece(int(t)) for t in ids]
        dead = np.zeros(n, dtype=bool)
        for i0 in range(n):
            for i1 in range(n):
                if dead[i0]:
                    break
                if i0 == i1 or dead[i1]:
                    continue
                a, b = pieces[i0], pieces[i1]
                if a and len(a) <= len(b) and b.startswith(a):
                    dst, src = (i1, i0) if p[i1] > p[i0] else (i0, i1)
                    p[dst] += p[src]
                    p[src] = 0.0
                    dead[src] = True
        kept = ~dead & ((p >= np.float32(0.2)) | eog)
        n_text = int(np.count_nonzero(kept & ~eog))
        if n_text == 0:
            return Dist.point(int(vocab.eot))
        p = p / p[kept].sum()
        kept &= (p >= np.float32(1.0 / (n_text + 1))) | eog
    by_id = np.argsort(ids[kept])
    w = probs[kept][by_id]
    return Dist(ids[kept][by_id], w / w.sum())


def _top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """The k highest logits; a tie across the boundary goes to the lowest ids (deterministic).

    Partitions a small candidate set, not the whole vocabulary: split the first
    (n // k) * k logits into k chunks; their k maxima are k distinct entries, so the
    k-th largest logit is at least the smallest chunk maximum, and every entry of the
    top k (ties included) is >= it. About 15x faster than argpartition over 151,936.

    Under a grammar most logits are -inf, a whole chunk can be masked, and the floor is
    then -inf: only the allowed ids compete (all of them when k or fewer are allowed; the
    masked ones would get probability 0 anyway). Partitioning all 151,936 with their -inf
    ties took 5.6 ms a row, a sixth of a target step, at T = 0.8 under a JSON schema.
    """
    n = logits.shape[-1]
    if k >= n:
        return np.arange(n)
    width = n // k
    if width >= 2:
        floor = logits[: width * k].reshape(k, width).max(axis=1).min()
        if floor == -np.inf:
            cand = np.flatnonzero(logits > -np.inf)
            if len(cand) <= k:
                return cand
        else:
            cand = np.flatnonzero(logits >= floor)  # ascending ids, at least k of them
    else:
        cand = np.arange(n)
    vals = logits[cand]
    top = cand[np.argpartition(vals, len(cand) - k)[len(cand) - k :]]
    v = logits[top].min()
    tied = cand[vals == v]  # every entry equal to v is a candidate (v >= floor)
    if len(tied) > np.count_nonzero(logits[top] == v):
        above = top[logits[top] > v]
        top = np.concatenate([above, tied[: k - len(above)]])
    return top


def accept_probability(p: Dist, q: Dist, token: int) -> float:
    """min(1, p(x)/q(x)) for a draft token x drawn from q (so q(x) > 0)."""
    qx = q.prob(token)
    if qx <= 0.0:
        return 0.0  # cannot happen for a token sampled from q; reject defensively
    return min(1.0, p.prob(token) / qx)


def residual(p: Dist, q: Dist) -> Dist:
    """norm(max(0, p - q)): what a rejection samples from. Falls back to p if p <= q everywhere.

    That fallback only arises through rounding: a rejection implies p(x) < q(x) for the
    drafted x, and then, both summing to 1, p > q somewhere else.
    """
    support = np.union1d(p.ids, q.ids)
    r = np.maximum(p.at(support) - q.at(support), 0.0)
    total = r.sum()
    if not total > 1e-12:
        return p
    nz = r > 0
    return Dist(support[nz], r[nz] / total)


@dataclass(frozen=True)
class Verdict:
    """Outcome of one verification: `n_accepted` drafts kept, then one `token` from the target.

    `accept_probs[i]` is the probability with which draft i was (or would have been)
    accepted, for the drafts examined: all accepted ones and the first rejected one.
    `bonus` is True when every draft was accepted and `token` came from p_{K+1}.
    """

    n_accepted: int
    token: int
    accept_probs: tuple[float, ...]
    bonus: bool


def verify(
    draft_tokens: Sequence[int],
    q_draft: Sequence[Dist],  # K distributions the drafts were sampled from
    p_target: Sequence[Dist],  # K + 1 target distributions at the same positions
    rng: np.random.Generator,
    uniforms: list[float] | None = None,
) -> Verdict:
    """Speculative rejection sampling over one round of K drafts.

    `uniforms`, when given, receives the uniform u drawn for each examined draft (for
    traces: the draws are the same whether or not they are recorded).
    """
    probs: list[float] = []
    for i, x in enumerate(draft_tokens):
        a = accept_probability(p_target[i], q_draft[i], x)
        probs.append(a)
        u = rng.random()
        if uniforms is not None:
            uniforms.append(u)
        if u >= a:  # rejected: a == 1 never rejects, a == 0 always does
            return Verdict(i, residual(p_target[i], q_draft[i]).sample(rng), tuple(probs), False)
    k = len(draft_tokens)
    return Verdict(k, p_target[k].sample(rng), tuple(probs), True)


def verify_greedy(draft_tokens: Sequence[int], target_argmax: Sequence[int]) -> Verdict:
    """Temperature 0: keep the longest prefix equal to the target's argmax [K+1], then its token."""
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == target_argmax[n]:
        n += 1
    probs = (1.0,) * n + ((0.0,) if n < len(draft_tokens) else ())
    return Verdict(n, int(target_argmax[n]), probs, n == len(draft_tokens))


def overlap(p: Dist, q: Dist) -> tuple[float, float]:
    """(sum min(p, q), sum p*q): the acceptance of rejection sampling at this position, and
    of exact-match verification (keep a draft x ~ q only when an independent x' ~ p equals it).
    """
    # Only the smaller support can contribute: look it up in the other (both ids sorted).
    small, big = (p, q) if len(p.ids) <= len(q.ids) else (q, p)
    if _same_range(p.ids, q.ids):  # no filter cut either (top-k 0, top-p 1): aligned already
        return float(np.minimum(p.probs, q.probs).sum()), float(np.dot(p.probs, q.probs))
    if len(big.ids) > 2048:  # a scatter is O(V); searchsorted over 150k ids costs ~20x more
        dense = np.zeros(int(max(big.ids[-1], small.ids[-1])) + 1)
        dense[big.ids] = big.probs
        b = dense[small.ids]
    else:
        b = big.at(small.ids)
    a = small.probs
    return float(np.minimum(a, b).sum()), float((a * b).sum())


def _same_range(a: np.ndarray, b: np.ndarray) -> bool:
    """Both are the same contiguous run of ids (ids are strictly ascending)."""
    return (len(a) == len(b) and a[0] == b[0] and a[-1] == b[-1]
            and int(a[-1]) - int(a[0]) + 1 == len(a))


def top_entries(d: Dist, n: int = 5) -> list[tuple[int, float]]:
    """The n most likely (id, prob) of `d`, most likely first (ties to the lower id)."""
    if len(d.ids) > n:
        idx = np.argpartition(-d.probs, n - 1)[:n]
    else:
        idx = np.arange(len(d.ids))
    idx = idx[np.lexsort((d.ids[idx], -d.probs[idx]))]
    return [(int(d.ids[i]), float(d.probs[i])) for i in idx]


def softmax_dist(logits: np.ndarray) -> Dist:
    """The untempered softmax of a full row (what greedy traces show beside the argmax)."""
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return Dist(np.arange(len(logits), dtype=np.int64), e / e.sum())
