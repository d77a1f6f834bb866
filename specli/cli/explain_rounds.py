"""`specli explain PROMPT`: the first rounds of a real generation, step by step."""

from __future__ import annotations

import json
from dataclasses import asdict

from specli.cli.common import open_session, read_prompt, round_record
from specli.bench.calibration import one_target_step_seconds
from specli.core.engine import Done

BATCH_NOTE = ("all K + 1 rows of p came from one batched target decode of [pending, x_1..x_K]: "
              "row i is p after the first i drafts")


def explain_rounds(out, err, *, prompt: str, rounds: int, json_out: bool, system, raw,
                   options) -> None:
    """Generate with tracing on, show the first `rounds` rounds, then stop."""
    from specli.errors import UsageError

    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    text = read_prompt(prompt, None)
    with open_session(err, options) as gen:
        tokens = gen.prompt_tokens(text, system=system, raw=raw)
        shown = _first_rounds(gen.generate(tokens, trace=True), rounds)
        step = one_target_step_seconds(gen.loaded.target)
        result = {
            "prompt_tokens": tokens,
            "config": {"k": gen.spec.k, "drafter": gen.drafter_name, "seed": gen.spec.seed,
                       "sampling": asdict(gen.sampling), "strict": gen.spec.strict},
            "rounds": [{**round_record(r), "trace": r.trace.to_dict()} for r in shown],
            "one_target_step_seconds": step,
            "note": BATCH_NOTE,
        }
    if json_out:
        print(json.dumps(result, ensure_ascii=False))
        return
    from specli.views.render_explain import print_rounds

    print_rounds(out, shown, step, gen.sampling.greedy, BATCH_NOTE)


def _first_rounds(events, n: int) -> list:
    """The first n Round events; the stream is closed after them (nothing more is generated)."""
    shown = []
    try:
        for ev in events:
            if isinstance(ev, Done):
                break
            shown.append(ev)
            if len(shown) >= n:
                break
    finally:
        events.close()
    return shown
