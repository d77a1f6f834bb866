"""`specli bench`: sweep K (and drafters) over a prompt suite; measure when speculation pays."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from specli.cli._app import app
from specli.cli.common import consoles, open_session
from specli.cli.options import SystemOpt, generation_options
from specli.errors import UsageError
from specli.session import Options

BENCH_HELP = """Measure tok/s for each K (and drafter) against the target alone, and recommend a K.

First the costs are calibrated (the target's verify time t_v(n) for n = 1..K_max+1, up to 32 when auto drafts n-grams, and the draft's time per token t_d; stored for `run --k auto`); then the runs are interleaved: for each repeat, for each prompt, K = 0 (the baseline) and then every drafter x K in the order given. Speedups compare each run with the baseline of the same prompt and repeat. The report (table, bar chart, cost model, recommendation) goes to stdout, progress to stderr; with --json - the JSON goes to stdout and the report to stderr.

Examples:

  specli bench --suite code --k 0,1,2,4,auto --temperature 0 --json results.json

  specli bench --k 1..8 --repeats 3 --csv runs.csv

  specli bench --drafter model,ngram,auto --k 0,4,auto --suite edit

  specli bench --prompts mine.jsonl --k 0,2,auto --json - | jq .summary.suites

  specli bench --k 0,1,2,4 --html report.html                # the report as a page, with charts
"""


@app.command("bench", help=BENCH_HELP)
@generation_options(omit=("drafter", "k", "max_tokens"),
                    lead=("drafter", "k", "suite", "prompts", "limit", "system", "raw"))
def bench_cmd(
    opts: Options,
    drafter: Annotated[str, typer.Option(
        "--drafter", help="Drafters to compare, comma-separated: model, ngram, auto (hybrid).",
        rich_help_panel="Speculation")] = "model",
    k: Annotated[str, typer.Option(
        "--k", "-k", help="K values: a list (0,1,2,4,auto) or a range (1..8); K = 0 is always run.",
        rich_help_panel="Speculation")] = "0,1,2,3,4,6,8,auto",
    suite: Annotated[str, typer.Option(
        "--suite", help="Built-in prompts: code, edit, chat, summarize, or all.",
        rich_help_panel="Prompt")] = "code",
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", help='A JSONL file of {"id": ..., "prompt": ...} lines (instead of --suite).',
        rich_help_panel="Prompt")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", help="Use only the first N prompts of each suite.", rich_help_panel="Prompt")] = None,
    system: SystemOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Skip the chat template.",
                                      rich_help_panel="Prompt")] = False,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", "-n", help="New tokens per run.", rich_help_panel="Sampling")] = 128,
    repeats: Annotated[int, typer.Option(
        "--repeats", help="Runs per (prompt, drafter, K); repeat r uses seed + r.",
        rich_help_panel="Benchmark")] = 1,
    warmup: Annotated[int, typer.Option(
        "--warmup", help="Untimed passes over every row on the first prompt (<= 32 tokens each).",
        rich_help_panel="Benchmark")] = 1,
    json_file: Annotated[Optional[str], typer.Option(
        "--json", metavar="[FILE]",
        help="Write {results, summary} as JSON to FILE; bare --json (or '-') prints it to stdout.",
        rich_help_panel="Output")] = None,
    csv_file: Annotated[Optional[Path], typer.Option(
        "--csv", help="Write one CSV line per run to FILE.", rich_help_panel="Output")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="No colours.", rich_help_panel="Output")] = False,
    html_file: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write the report as a self-contained HTML page with charts to FILE.",
        rich_help_panel="Output")] = None,
) -> None:
    from specli.bench.plan import BenchConfig, parse_drafters, parse_k_list
    from specli.bench.suites import select_prompts
    from specli.bench.sweep import run_bench
    from specli.core.drafters import DRAFTERS
    from specli.views.render_bench import print_report

    draft, drafter = replace(opts, drafter=drafter).models()
    cfg = BenchConfig(ks=tuple(parse_k_list(k)), drafters=tuple(parse_drafters(drafter)),
                            max_tokens=max_tokens, repeats=repeats, warmup=warmup, seed=opts.seed)
    items = select_prompts(suite, prompts, limit)
    out, err = consoles(plain=plain)
    to_stdout = json_file == "-"
    _check_writable(json_file if not to_stdout else None, csv_file, html_file)
    needs_model = any(DRAFTERS[d].loads_model for d in cfg.drafters)
    k_load = "auto" if "auto" in cfg.ks else str(max(x for x in cfg.ks if x != "auto"))
    load = replace(opts, draft=draft, drafter="model" if needs_model else "ngram", k=k_load,
                   max_tokens=max_tokens)
    with open_session(err, load) as gen:
        tokens = [gen.prompt_tokens(p.prompt, system=system, raw=raw) for p in items]
        numerics = gen.numerics(fresh=True)  # the batch-numerics gap of this target, here
        cfg = replace(cfg, strict=opts.strict)
        meta = {"batch_numerics": numerics.to_dict(), "strict": opts.strict,
                "verify_chunk": numerics.invariant_up_to if opts.strict else None,
                "device": gen.where(),
                "target": str(gen.paths.target),
                "draft": str(gen.paths.draft) if gen.paths.draft and gen.loaded.draft else None,
                "sampling": asdict(gen.sampling),
                "threads": gen.loaded.target.n_threads, "prompts": [p.id for p in items]}
        with _progress(err) as tick:
            result = run_bench(gen, items, tokens, gen.sampling, cfg,
                                     progress=tick, meta=meta)
        if result.calibration is not None:  # `run --k auto` starts from these costs
            from specli.core.costcache import store_calibration

            store_calibration(gen.costs, gen.loaded.target, gen.loaded.draft,
                              result.calibration.t_verify, result.calibration.t_draft,
                              result.calibration.t_catchup)
    if json_file is not None:
        _write_json(result.to_json(), json_file)
    if csv_file is not None:
        _write_csv(result.results, csv_file)
    if html_file is not None:
        _write_html(result.summary, html_file)
    print_report(err if to_stdout else out, result.summary)
    err.print(f"bench: {len(result.results)} runs in {result.summary['elapsed_s']:.0f} s"
              + (f"; JSON in {json_file}" if json_file not in (None, "-") else "")
              + (f"; CSV in {csv_file}" if csv_file else "")
              + (f"; HTML in {html_file}" if html_file else ""))
    if result.interrupted:
        raise typer.Exit(130)


class _progress:
    """A Rich progress bar on stderr over the whole sweep; plain lines when not a terminal."""

    def __init__(self, err) -> None:
        self.err = err
        self.bar = None
        self.task = None

    def __enter__(self):
        if self.err.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.description}"), console=self.err, transient=True)
            self.bar.start()
        return self.tick

    def tick(self, t) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(t.label, total=t.total)
            self.bar.update(self.task, completed=t.done, description=t.label)
        elif t.done < t.total:
            self.err.print(f"[{t.done + 1}/{t.total}] {t.label}", highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_writable(*dests) -> None:
    """Fail before the sweep, not after it, when an output file cannot be created."""
    for d in dests:
        if d is not None and not Path(d).resolve().parent.is_dir():
            raise UsageError(f"cannot write {d}: no such directory {Path(d).parent}")


def _write_json(data: dict, dest: str) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=1)
    if dest == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    try:
        Path(dest).write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --json file {dest}: {e.strerror}") from None


def _write_html(summary: dict, dest: Path) -> None:
    """The report as a page (specli.views.report imports matplotlib: only when asked for)."""
    from rich.console import Console

    from specli.views.render_bench import recommendation, report
    from specli.views.report.html import bench_page

    text = Console(width=140, record=True, file=io.StringIO(), color_system=None)
    text.print(report(summary))
    title = f"specli bench · {Path(summary.get('target') or 'target').name} · {summary.get('device', '')}"
    page = bench_page(summary, title, text.export_text(), recommendation(summary).plain)
    try:
        dest.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --html file {dest}: {e.strerror}") from None


def _write_csv(rows: list[dict], dest: Path) -> None:
    from specli.bench.summary import CSV_FIELDS, csv_record

    try:
        with open(dest, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow(csv_record(r))
    except OSError as e:
        raise UsageError(f"cannot write --csv file {dest}: {e.strerror}") from None
