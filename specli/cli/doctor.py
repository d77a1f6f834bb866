"""`specli doctor`: versions, CPU/GPU, buffer types, the default pair, and a short probe."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from specli.cli._app import app
from specli.cli.options import ThreadsOpt
from specli.cli.common import consoles

DOCTOR_HELP = """Check this machine and this install; paste the output into a bug report.

Prints the versions, the CPU features llama.cpp was built with and sees, GPU offload support, which buffer types the default pair's weights land in (and whether AMX was avoided), threads, whether the default pair is cached, and a few-second probe: the target's verify cost t_v(1) and t_v(4), the draft's cost t_d, what --k auto concludes from them, and the batch-numerics gap (how far verify batches are from single-token logits). A part that fails is one line saying so.

Examples:

  specli doctor

  specli doctor --json > doctor.json

  specli doctor --no-probe          # no model loading: seconds, not tens of seconds
"""


@app.command("doctor", help=DOCTOR_HELP)
def doctor_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.",
                                           rich_help_panel="Output")] = False,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Load the default pair and time it.",
                                        rich_help_panel="Probe")] = True,
    threads: ThreadsOpt = None,
) -> None:
    from specli import doctor

    out, err = consoles(plain=json_out)
    with err.status("doctor", spinner="dots") as status:
        report = doctor.collect(probe_models=probe, n_threads=threads,
                                progress=lambda what: status.update(f"doctor: {what}"))
    if json_out:
        print(json.dumps(report, indent=1, default=str))
        return
    for line in render_lines(report):
        out.print(line, highlight=False, markup=False)


def _fmt(part: dict, fn) -> str:
    if "error" in part:
        return f"failed: {part['error']}"
    if "skipped" in part:
        return f"skipped: {part['skipped']}"
    return fn(part)


def render_lines(r: dict) -> list[str]:
    """The report as aligned 'name  value' lines."""
    v, c, g = r.get("versions", {}), r.get("cpu", {}), r.get("gpu", {})
    rows = [
        ("versions", _fmt(v, lambda v: f"specli {v['specli']} · llama-cpp-python "
                                       f"{v['llama_cpp_python']} · Python {v['python']} · {v['platform']}")),
        ("cpu", _fmt(c, lambda c: f"{c['model']} · {c['physical_cores']} cores "
                                  f"({c['logical_cores']} logical) · flags {' '.join(c['flags']) or '-'}"
                                  f" · load {_load(c['load_avg'])}")),
        ("llama.cpp", _fmt(c, lambda c: c["llama_cpp_system_info"])),
        ("gpu", _fmt(g, lambda g: (f"offload supported · {', '.join(d['name'] + ' ' + d['description'] for d in g['devices'])}"
                                   if g["offload_supported"] else "no GPU offload in this build: models run on the CPU"))),
        ("threads", _fmt(r.get("threads", {}), lambda t: f"{t['default']} per model by default"
                                                       + (", fewer while other processes use the CPUs" if t.get("follows_load") else "")
                                                       + (f" · {t['env']}" if t["env"] else ""))),
        ("default pair", _fmt(r.get("default_pair", {}), _pair)),
        ("buffer types", _fmt(r.get("buffer_types", {}), _bufts)),
    ]
    if "probe" in r:
        p = r["probe"]
        rows += [("probe", _fmt(p, _probe)),
                 ("--k auto", _fmt(p, lambda p: p["auto"]["verdict"])),
                 ("batch numerics", _fmt(p, lambda p: _numerics(p["batch_numerics"])))]
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {val}" for k, val in rows]


def _load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "?"


def _pair(p: dict) -> str:
    def one(m):
        return f"{m['name']} ({'cached' if m['cached'] else 'not cached'})"

    return f"{p['name']}: {one(p['target'])} ← {one(p['draft'])}"


def _bufts(b: dict) -> str:
    s = f"CPU extra buffer types offered: {', '.join(b['extra_bufts']) or 'none'}"
    if "target" in b:
        s += f" · {b['target']['reason']}"
    return s


def _probe(p: dict) -> str:
    tv = p["t_verify_ms"]
    return (f"target on {p['target']['device']}, draft on {p['draft']['device']} · "
            f"t_v(1) {tv[1]:.1f} ms, t_v(4) {tv[4]:.1f} ms ({tv[4] / tv[1]:.2f}×) · "
            f"t_d {p['t_draft_ms']:.1f} ms ({p['auto']['draft_over_target_step']:.2f} of a target step)"
            f" · buffers {p['target']['buffers_mib']}")


def _numerics(bn: dict) -> str:
    inv, worst = bn["invariant_up_to"], max(bn["tv"].values(), default=0.0)
    longer = "".join(f"; from {n} tokens of context: up to {v}"
                     for n, v in sorted((int(k), v) for k, v in bn.get("invariant_by_length", {}).items())
                     if v != inv)
    if inv >= bn["n_max"] and not longer:
        return f"verify batches up to {inv} tokens are bit-identical to single-token decoding"
    return (f"batches up to {inv} tokens bit-identical{longer}; larger ones differ from "
            f"single-token decoding by TV up to {worst:.4f} (--strict verifies in calls of that size)")
