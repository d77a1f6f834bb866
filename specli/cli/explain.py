"""`specli explain`: one verification step in exact fractions, or real rounds step by step."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from dataclasses import replace

from specli.cli._app import app
from specli.cli.common import consoles
from specli.cli.options import DrafterOpt, SystemOpt, generation_options
from specli.errors import UsageError
from specli.session import Options

EXPLAIN_HELP = """Show what speculative verification does, with exact numbers.

With --p and --q (or --logits-p / --logits-q): one verification step as a table, in exact fractions: for each token, q(x), p(x), the acceptance min(1, p/q), P(drafted and kept), the residual (p - q)+, P(emitted through a rejection) and the total P(emitted), which is p(x). Below it: the acceptance beta = sum min(p, q), and the acceptance exact-match verification (llama-server, mlx-lm) would have, sum p*q.

With a PROMPT: the first --rounds rounds of a real generation on the pair, step by step: the top q and p at each draft position, the uniform drawn, the verdict, the residual on a rejection, the bonus token, and the cost.

Warps: with logits, --temperature/--top-k/--top-p/--min-p default to 1/0/1/0 (off); with a PROMPT, to run's 0.8/40/0.95/0.05.

Examples:

  specli explain --p 0.4,0.5,0.05,0.05 --q 0.35,0.3,0.15,0.2

  specli explain --p 0.4,0.5,0.05,0.05 --q 0.35,0.3,0.15,0.2 --samples 100000 --seed 1

  specli explain --logits-p 2,1.5,0,-1 --logits-q 1.8,1.9,0.2,-2 --temperature 0.7 --top-k 3

  specli explain "Write a haiku" --temperature 0.8 --rounds 3
"""

WARP_DEFAULTS = {"logits": (1.0, 0, 1.0, 0.0), "prompt": (0.8, 40, 0.95, 0.05)}


@app.command("explain", help=EXPLAIN_HELP)
@generation_options(omit=("drafter", "k", "temperature", "top_k", "top_p", "min_p", "max_tokens"),
                    lead=("p", "q", "logits_p", "logits_q", "normalize", "samples", "temperature",
                          "top_k", "top_p", "min_p", "rounds", "k"))
def explain_cmd(
    opts: Options,
    prompt: Annotated[Optional[str], typer.Argument(help="A prompt for the real pair ('-' reads stdin).")] = None,
    p: Annotated[Optional[str], typer.Option("--p", help="Target distribution p, comma-separated.",
                                             rich_help_panel="One step")] = None,
    q: Annotated[Optional[str], typer.Option("--q", help="Draft distribution q, comma-separated.",
                                             rich_help_panel="One step")] = None,
    logits_p: Annotated[Optional[str], typer.Option("--logits-p", help="Target logits (warped into p).",
                                                    rich_help_panel="One step")] = None,
    logits_q: Annotated[Optional[str], typer.Option("--logits-q", help="Draft logits (warped into q).",
                                                    rich_help_panel="One step")] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Rescale --p/--q to sum to 1.",
                                            rich_help_panel="One step")] = False,
    samples: Annotated[int, typer.Option("--samples", help="Draw N seeded verifications and compare with p (chi-square).",
                                         rich_help_panel="One step")] = 0,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="Sampling temperature; 0 = greedy.",
                                                         rich_help_panel="Sampling")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).",
                                                 rich_help_panel="Sampling")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus mass in (0, 1] (1 = off).",
                                                   rich_help_panel="Sampling")] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", help="Drop tokens below min-p x the top (0 = off).",
                                                   rich_help_panel="Sampling")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds to show for a PROMPT.",
                                        rich_help_panel="Real rounds")] = 3,
    k: Annotated[str, typer.Option("--k", "-k", help="Draft tokens per round for a PROMPT (or auto).",
                                   rich_help_panel="Real rounds")] = "4",
    drafter: DrafterOpt = "model",
    system: SystemOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Skip the chat template.", rich_help_panel="Real rounds")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print every number as one JSON object.",
                                           rich_help_panel="Output")] = False,
) -> None:
    one_step = any(v is not None for v in (p, q, logits_p, logits_q))
    if one_step == (prompt is not None):
        raise UsageError("give either --p/--q (or --logits-p/--logits-q) or a PROMPT")
    if not one_step and (samples or normalize):  # they would be ignored, silently
        raise UsageError(f"{'--samples' if samples else '--normalize'} applies to one step "
                         "(--p/--q or --logits-p/--logits-q), not to a PROMPT")
    mode = "logits" if one_step else "prompt"
    warps = [v if v is not None else d
             for v, d in zip((temperature, top_k, top_p, min_p), WARP_DEFAULTS[mode])]
    out, err = consoles(plain=json_out)
    if one_step:
        _one_step(out, p, q, logits_p, logits_q, warps, normalize, samples, opts.seed, json_out,
                  warps_given=any(v is not None for v in (temperature, top_k, top_p, min_p)))
        return
    from specli.cli.explain_rounds import explain_rounds

    options = replace(opts, drafter=drafter, k=k, temperature=warps[0], top_k=warps[1],
                      top_p=warps[2], min_p=warps[3], max_tokens=256)
    explain_rounds(out, err, prompt=prompt, rounds=rounds, json_out=json_out, system=system,
                   raw=raw, options=options)


def _side(probs: str | None, logits: str | None, name: str, sampling, normalize: bool):
    """One distribution from --p (exact) or --logits-p (warped, as the engine warps)."""
    from specli.core import explain as ex

    if (probs is None) == (logits is None):
        raise UsageError(f"give exactly one of --{name} and --logits-{name}")
    if probs is not None:
        return ex.check_dist(ex.parse_probs(probs, f"--{name}"), f"--{name}", normalize)
    import numpy as np

    from specli.core.sampling import warp

    z = ex.parse_logits(logits, f"--logits-{name}")
    d = warp(z, sampling)
    dense = np.zeros(len(z))
    dense[d.ids] = d.probs
    return ex.float_fractions(dense)


def _check_lengths(p_text: str | None, q_text: str | None) -> None:
    """Lengths first: a length mismatch is the error to report, not a sum off by one entry."""
    def n(text):
        return len([s for s in (text or "").replace(" ", ",").split(",") if s.strip()])

    if n(p_text) and n(q_text) and n(p_text) != n(q_text):
        raise UsageError(f"p has {n(p_text)} entries but q has {n(q_text)}: the lengths must match")


def _one_step(out, p, q, logits_p, logits_q, warps, normalize, samples, seed, json_out,
              warps_given: bool) -> None:
    from specli.core import explain as ex
    from specli.config import SamplingConfig

    if warps_given and logits_p is None and logits_q is None:
        raise UsageError("--temperature/--top-k/--top-p/--min-p apply to --logits-p/--logits-q, "
                         "not to given probabilities")
    if samples < 0:
        raise UsageError(f"--samples must be >= 0, got {samples}")
    sampling = SamplingConfig(*warps)
    _check_lengths(p or logits_p, q or logits_q)
    p_t = _side(p, logits_p, "p", sampling, normalize)
    q_d = _side(q, logits_q, "q", sampling, normalize)
    ex.check_pair(p_t, q_d)
    table = ex.step_table(p_t, q_d)
    result = ex.table_json(table)
    if logits_p is not None or logits_q is not None:
        result["sampling"] = dict(zip(("temperature", "top_k", "top_p", "min_p"), warps))
    if samples:
        counts = ex.sample_step([float(x) for x in p_t], [float(x) for x in q_d], samples, seed)
        chi = ex.chi_square(counts, [float(x) for x in p_t])
        result["samples"] = {"n": samples, "seed": seed, "counts": counts.tolist(),
                             "frequencies": (counts / samples).tolist(),
                             "chi_square": chi.statistic, "dof": chi.dof, "p_value": chi.p_value}
    if json_out:
        print(json.dumps(result))
        return
    from specli.views.render_explain import print_step

    print_step(out, table, result.get("samples"))
