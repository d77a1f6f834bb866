"""The exact arithmetic of one verification step, in fractions. No I/O.

For a draft distribution q and a target distribution p over the same tokens, one step of
speculative rejection sampling emits token x with probability

    min(p(x), q(x))                      drafted x and kept it
  + (1 - beta) * norm((p - q)+)(x)       rejected the draft, drew x from the residual

where beta = sum_x min(p(x), q(x)) is the acceptance probability. Since
(p - q)+ = p - min(p, q) sums to 1 - beta, the second term is p(x) - min(p(x), q(x)),
and the total is p(x) exactly. `step_table` computes every column in `Fraction`s so that
the last one is p, not approximately p.

`sample_step` draws verifications with specli.core.sampling.verify, the engine's own rule, and
`chi_square` tests the counts against p (the survival function is computed here, as the
regularised upper incomplete gamma function, so scipy is not needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from specli.errors import UsageError

PROOF = ("P(emit x) = min(p,q)(x) + (1-β)·(p-q)+(x)/(1-β) = min(p,q)(x) + (p - min(p,q))(x) "
         "= p(x): every emitted token is distributed exactly as the target's.")


def parse_probs(text: str, name: str) -> list[Fraction]:
    """'0.4,0.5,0.05' -> exact Fractions (a decimal string is exact as a Fraction)."""
    parts = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    if not parts:
        raise UsageError(f"{name} is empty: give comma-separated probabilities, e.g. 0.4,0.6")
    try:
        values = [Fraction(s) for s in parts]
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    return values


def parse_logits(text: str, name: str) -> np.ndarray:
    """'2.0,1.5,-1' -> float64 logits."""
    parts = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    if not parts:
        raise UsageError(f"{name} is empty: give comma-separated logits, e.g. 2.0,1.0,0.5")
    try:
        values = np.array([float(s) for s in parts], dtype=np.float64)
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not np.all(np.isfinite(values)):
        raise UsageError(f"{name} must be finite numbers, got {text!r}")
    return values


def check_dist(values: Sequence[Fraction], name: str, normalize: bool = False) -> list[Fraction]:
    """A valid distribution: no negative entry, sums to 1 (or is rescaled with `normalize`)."""
    if not values:
        raise UsageError(f"{name} is empty")
    for i, v in enumerate(values):
        if v < 0:
            raise UsageError(f"{name} has a negative entry at index {i}: {float(v):g}")
    total = sum(values, Fraction(0))
    if total == 0:
        raise UsageError(f"{name} sums to 0")
    if total != 1:
        if not normalize:
            raise UsageError(f"{name} sums to {float(total):.6g}, not 1 (pass --normalize to rescale)")
        values = [v / total for v in values]
    return list(values)


def check_pair(p: Sequence[Fraction], q: Sequence[Fraction]) -> None:
    if len(p) != len(q):
        raise UsageError(f"--p has {len(p)} entries but --q has {len(q)}: the lengths must match")


def float_fractions(probs: np.ndarray) -> list[Fraction]:
    """Floats (a warped distribution) as exact Fractions rescaled to sum to exactly 1."""
    values = [Fraction(float(x)) for x in probs]
    total = sum(values, Fraction(0))
    return [v / total for v in values]


@dataclass(frozen=True)
class StepRow:
    """One token's row of the verification table."""

    token: int
    q: Fraction
    p: Fraction
    accept: Fraction | None  # min(1, p/q); None where q = 0 (never drafted)
    kept: Fraction  # P(drafted and kept) = min(p, q)
    residual: Fraction  # (p - q)+
    residual_norm: Fraction  # (p - q)+ / (1 - beta), 0 when beta = 1
    via_rejection: Fraction  # P(rejected, then drew this token) = (1 - beta) * residual_norm
    emitted: Fraction  # kept + via_rejection: equals p


@dataclass(frozen=True)
class StepTable:
    rows: tuple[StepRow, ...]
    beta: Fraction  # acceptance: sum min(p, q)
    exact_match: Fraction  # acceptance of exact-match verification: sum p * q

    @property
    def rejection(self) -> Fraction:
        return 1 - self.beta


def step_table(p: Sequence[Fraction], q: Sequence[Fraction]) -> StepTable:
    """Every column of one verification step, exactly (see the module docstring)."""
    check_pair(p, q)
    kept = [min(a, b) for a, b in zip(p, q)]
    beta = sum(kept, Fraction(0))
    resid = [max(a - b, Fraction(0)) for a, b in zip(p, q)]
    mass = sum(resid, Fraction(0))  # equals 1 - beta
    rows = []
    for i, (pi, qi) in enumerate(zip(p, q)):
        norm = resid[i] / mass if mass else Fraction(0)
        via = (1 - beta) * norm
        accept = min(Fraction(1), pi / qi) if qi else None
        rows.append(StepRow(i, qi, pi, accept, kept[i], resid[i], norm, via, kept[i] + via))
    exact = sum((a * b for a, b in zip(p, q)), Fraction(0))
    return StepTable(tuple(rows), beta, exact)


def sample_step(p: Sequence[float], q: Sequence[float], n: int, seed: int) -> np.ndarray:
    """Counts of the emitted token over `n` seeded verifications of one draft (K = 1).

    Each draws x ~ q and runs specli.core.sampling.verify, the engine's rule: the draft when
    kept, else the token drawn from the residual.
    """
    from specli.core.sampling import verify

    q_d, p_d = _dist(q), _dist(p)
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(p), dtype=np.int64)
    for _ in range(n):
        x = q_d.sample(rng)
        verdict = verify([x], [q_d], [p_d, p_d], rng)
        counts[x if verdict.n_accepted == 1 else verdict.token] += 1
    return counts


def _dist(probs: Sequence[float]):
    from specli.core.sampling import Dist

    a = np.asarray(probs, dtype=np.float64)
    ids = np.flatnonzero(a > 0)
    return Dist(ids.astype(np.int64), a[ids] / a[ids].sum())


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float


def chi_square(counts: Sequence[int], p: Sequence[float]) -> ChiSquare:
    """Pearson's goodness of fit of `counts` to `p` over the tokens with p > 0.

    A count on a token with p = 0 is impossible under p: the p-value is 0 then.
    """
    counts = np.asarray(counts, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = counts.sum()
    support = p > 0
    if np.any(counts[~support] > 0):
        return ChiSquare(math.inf, int(support.sum()) - 1, 0.0)
    expected = n * p[support]
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    return ChiSquare(stat, dof, chi2_sf(stat, dof))


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): Q(dof/2, x/2), the regularised upper gamma."""
    if dof <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    return gammaincc(dof / 2.0, x / 2.0)


def gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (Numerical Recipes, 6.2): the series for
    x < a + 1, Lentz's continued fraction otherwise (each converges fast on its side)."""
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return _gamma_cf(a, x)


def _gamma_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    ap = a
    for _ in range(1000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_cf(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def fmt_fraction(x: Fraction | None, exact: bool = True) -> str:
    """'3/20' for small exact fractions, else a decimal; '-' for None."""
    if x is None:
        return "-"
    if exact and x.denominator <= 100_000:
        return str(x)
    return f"{float(x):.6f}"


def table_json(table: StepTable) -> dict:
    """Every number of the table: each value as an exact 'n/d' string and as a float."""
    def num(x):
        return None if x is None else {"fraction": str(x), "value": float(x)}

    cols = ("q", "p", "accept", "kept", "residual", "residual_norm", "via_rejection", "emitted")
    return {
        "rows": [{"token": r.token, **{c: num(getattr(r, c)) for c in cols}} for r in table.rows],
        "beta": num(table.beta),
        "rejection": num(table.rejection),
        "exact_match": num(table.exact_match),
        "emitted_equals_p": all(r.emitted == r.p for r in table.rows),
        "proof": PROOF,
    }
