"""`specli models ...`: list the curated pairs, pull them, check a pair, inspect a model.

Data (tables, JSON, paths) goes to stdout; progress and verdict messages to stderr.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from specli.cli._app import app
from specli.cli.common import consoles
from specli.errors import CompatibilityError, DownloadError, UsageError

models_app = typer.Typer(
    help="Curated draft/target pairs: list them, pull (download and verify) them, check that a "
    "draft fits a target, inspect a GGUF file.\n\n"
    "Your own entries go in ~/.config/specli/models.toml or the file named by $SPECLI_MODELS "
    "(same format as the built-in models.toml; an entry there replaces a built-in one of the "
    "same name).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]

LIST_HELP = """List the curated draft/target pairs: download size, recommended K, and whether both files are in the cache.

The default pair is marked with *. "cached" says which files are already in the Hugging Face cache (yes = both).

Examples:

  specli models list

  specli models list --json | jq '.pairs[] | select(.cached) | .name'
"""

PULL_HELP = """Download pairs or models into the Hugging Face cache, verify their SHA-256, print their paths.

Downloads show progress and resume where an interrupted one stopped. A file failing its checksum is deleted. Exits 0 only if every file is verified. Without arguments, pulls the default pair. HF_ENDPOINT selects a mirror.

Examples:

  specli models pull                                  # the default pair

  specli models pull qwen2.5-coder-0.5b-7b smollm2-135m

  specli models pull Qwen/Qwen2.5-Coder-3B-Instruct-GGUF:qwen2.5-coder-3b-instruct-q4_k_m.gguf
"""

CHECK_HELP = """Check that DRAFT can draft for TARGET, from GGUF metadata only (no weights are loaded).

Compares tokenizer, pre-tokenizer, vocabulary size, token texts, special tokens and chat template. Verdict: compatible; compatible with masking (sizes differ but every shared id has the same text); or incompatible (exit 1). Each model is a registry name, org/repo:file.gguf[@rev] or a path.

Examples:

  specli models check qwen2.5-coder-0.5b qwen2.5-coder-1.5b

  specli models check ./draft.gguf ./target.gguf --json
"""

INFO_HELP = """Show a model's architecture, size, quantization, parameters, context, vocabulary and chat template.

Read from the GGUF header only. MODEL is a registry name, org/repo:file.gguf[@rev] or a path.

Examples:

  specli models info qwen2.5-coder-1.5b

  specli models info ./model.gguf --json
"""


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _pair_rows(reg) -> list[dict]:
    from specli.models import hub as hf

    rows = []
    for p in reg.pairs.values():
        target, draft = reg.models[p.target], reg.models[p.draft]
        cached = [hf.is_cached(m.hub) if m.hub else m.path.is_file() for m in (target, draft)]
        sizes = [m.size for m in (target, draft)]
        rows.append({
            "name": p.name, "default": p.name == reg.default_pair,
            "target": p.target, "draft": p.draft, "target_ref": target.ref, "draft_ref": draft.ref,
            "size_bytes": None if None in sizes else sum(sizes),
            "recommended_k": p.recommended_k, "description": p.description, "tags": list(p.tags),
            "cached": all(cached), "target_cached": cached[0], "draft_cached": cached[1],
            "source": p.source,
        })
    return rows


@models_app.command("list", help=LIST_HELP)
def list_cmd(json_out: JsonOpt = False) -> None:
    from rich.table import Table

    from specli.models.catalogue import load_registry

    reg = load_registry()
    rows = _pair_rows(reg)
    out, _ = consoles(plain=json_out)
    if json_out:
        print(json.dumps({"default_pair": reg.default_pair, "pairs": rows}, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("pair", "target", "draft", "size", "K", "cached"):
        table.add_column(col, justify="right" if col in ("size", "K") else "left")
    for r in rows:
        cached = "yes" if r["cached"] else "target" if r["target_cached"] else "draft" if r["draft_cached"] else "no"
        table.add_row(("* " if r["default"] else "  ") + r["name"], r["target"], r["draft"],
                      _size(r["size_bytes"]), str(r["recommended_k"] or "-"), cached)
    out.print(table)


def _pull_items(reg, refs: list[str]) -> list[tuple[str, object]]:
    """Arguments -> unique (label, HubFile) to pull: pair names, model names, org/repo:file."""
    from specli.models.catalogue import parse_hub_ref

    items: dict[object, str] = {}
    for ref in refs or [reg.default_pair]:
        if ref in reg.pairs:
            names = [reg.pairs[ref].target, reg.pairs[ref].draft]
        elif ref in reg.models:
            names = [ref]
        elif (hub := parse_hub_ref(ref)) is not None:
            items.setdefault(hub, ref)
            continue
        else:
            raise UsageError(f"'{ref}' is not a pair, a model or an org/repo:file.gguf reference"
                             f"{_did_you_mean(ref, [*reg.pairs, *reg.models])}")
        for name in names:
            spec = reg.models[name]
            if spec.hub is None:
                raise UsageError(f"model '{name}' is a local file ({spec.path}); there is nothing to pull")
            items.setdefault(spec.hub, name)
    return [(label, hub) for hub, label in items.items()]


def _did_you_mean(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


@models_app.command("pull", help=PULL_HELP)
def pull_cmd(
    refs: Annotated[Optional[list[str]], typer.Argument(
        help="Pairs, registry models or org/repo:file.gguf[@rev] (default: the default pair).",
        show_default=False)] = None,
) -> None:
    from specli.models import catalogue
    from specli.models.hub import pull

    reg = catalogue.load_registry()
    items = _pull_items(reg, refs or [])
    out, err = consoles()
    failed = []
    for label, hub in items:
        size = f", {_size(hub.size)}" if hub.size else ""
        err.print(f"{label}: {hub.repo}/{hub.file}{size}")
        try:
            path, digest = pull(hub, progress=True, name=label)
        except DownloadError as e:
            err.print(f"  [red]failed:[/] {e}", markup=True)
            failed.append(label)
            continue
        err.print(f"  verified {'sha256' if len(digest) == 64 else 'git sha1'} {digest}")
        out.print(str(path), markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise DownloadError(f"{len(failed)} of {len(items)} files not verified: {', '.join(failed)}")


@models_app.command("check", help=CHECK_HELP, no_args_is_help=True)
def check_cmd(
    draft: Annotated[str, typer.Argument(help="The draft model.", show_default=False)],
    target: Annotated[str, typer.Argument(help="The target model.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    from specli.models import catalogue, compat, resolve

    reg = catalogue.load_registry()
    d_path = resolve.resolve_model(draft, reg)
    t_path = resolve.resolve_model(target, reg)
    report = compat.check_pair(d_path, t_path)
    out, err = consoles(plain=json_out)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(_report_table(report))
        _print_verdict(out, report)
    if report.verdict == "incompatible":
        raise CompatibilityError(
            f"draft {d_path.name} and target {t_path.name} are incompatible: {report.reasons[0]}")


def _report_table(report):
    from rich.table import Table

    def same(a, b) -> str:
        return "same" if a == b else "[red]differ[/]"

    table = Table(box=None, pad_edge=False)
    for col in ("", "draft", "target", ""):
        table.add_column(col)
    table.add_row("tokenizer", str(report.tokenizer_model[0]), str(report.tokenizer_model[1]),
                  same(*report.tokenizer_model))
    table.add_row("pre-tokenizer", str(report.pre_tokenizer[0]), str(report.pre_tokenizer[1]),
                  same(*report.pre_tokenizer))
    table.add_row("vocabulary", f"{report.n_vocab_draft:,}", f"{report.n_vocab_target:,}",
                  same(report.n_vocab_draft, report.n_vocab_target))
    texts = ("same" if not report.n_text_diffs
             else f"[red]{report.n_text_diffs:,} of {report.n_vocab_common:,} differ[/]")
    table.add_row("token texts", "", "", texts)
    for i, a, b in report.text_diffs:
        table.add_row(f"  id {i}", repr(a), repr(b), "")
    for role, (a, b) in report.specials.items():
        table.add_row(f"{role} id", str(a), str(b), same(a, b))
    table.add_row("chat template", _yes(report.draft_chat_template), _yes(report.target_chat_template), "")
    return table


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _print_verdict(out, report) -> None:
    style = {"compatible": "green", "masked": "yellow", "incompatible": "red"}[report.verdict]
    out.print(f"\n[bold {style}]{report.summary().split(':')[0]}[/]")
    for line in report.reasons[1:] if report.verdict == "incompatible" else report.reasons:
        out.print(f"  {line}", markup=False)
    for line in report.notes:
        out.print(f"  note: {line}", markup=False)


@models_app.command("info", help=INFO_HELP, no_args_is_help=True)
def info_cmd(
    model: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    from rich.table import Table

    from specli.models import catalogue, compat, resolve

    reg = catalogue.load_registry()
    path = resolve.resolve_model(model, reg)
    info = compat.model_info(path)
    spec = reg.models.get(model)
    if spec is not None and spec.hub is not None:
        info |= {"registry_name": spec.name, "repo": spec.repo, "file": spec.file,
                 "revision": spec.revision, "sha256": spec.sha256, "params_card": spec.params}
    out, _ = consoles(plain=json_out)
    if json_out:
        print(json.dumps(info, indent=2))
        return
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in _info_rows(info):
        table.add_row(key, value)
    out.print(table)


def _info_rows(info: dict) -> list[tuple[str, str]]:
    params = f"{info['parameters']:,}" if info["parameters"] is not None else "?"
    rows = [
        ("file", info["path"]),
        ("name", str(info["name"] or "-")),
        ("architecture", str(info["architecture"])),
        ("size", f"{_size(info['file_size'])} ({info['file_size']:,} bytes)"),
        ("quantization", str(info["quantization"] or "?")),
        ("parameters", params + " (tensor elements in the file)"),
        ("context", f"{info['context_length']:,}" if info["context_length"] else "?"),
        ("vocabulary", f"{info['vocab_size']:,} ({info['tokenizer_model']}, pre {info['pre_tokenizer']})"),
        ("chat template", _yes(info["chat_template"])),
    ]
    if info.get("repo"):
        rows.append(("hub", f"{info['repo']}:{info['file']}@{info['revision'] or 'main'}"))
        rows.append(("sha256", info["sha256"] or "not pinned"))
    return rows
