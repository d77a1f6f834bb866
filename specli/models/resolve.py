"""Model references -> local GGUF files: a catalogue name, an org/repo:file.gguf[@rev]
Hub reference (fetched through models.hub), or a local path.

A model reference is one of:
  a catalogue model name       qwen2.5-coder-1.5b
  a Hub file                   org/repo:file.gguf  or  org/repo:file.gguf@revision
  a local path                 ./models/x.gguf, /abs/x.gguf, ~/x.gguf
"""

from __future__ import annotations

import os
from pathlib import Path

from specli.errors import UsageError
from specli.llama.gguf import check_gguf
from specli.models.catalogue import PairSpec, Registry, _suggest, load_registry, parse_hub_ref
from specli.models.hub import fetch

__all__ = ["check_gguf", "load_registry", "resolve_model", "resolve_pair"]


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".gguf") or "/" in ref or os.sep in ref or ref.startswith(("~", "."))


def resolve_model(ref: str, reg: Registry, *, progress: bool = True) -> Path:
    """A model reference -> a local GGUF file, downloading it if needed.

    Order: a registry name; an existing path; org/repo:file.gguf[@rev]; anything else
    that looks like a path (then it must exist). ModelError for a missing, unreadable
    or non-GGUF file; DownloadError when a Hub file can be neither found in the cache
    nor fetched; UsageError for a reference of none of these forms.
    """
    if ref in reg.models:
        spec = reg.models[ref]
        path = spec.path if spec.hub is None else fetch(spec.hub, progress=progress, name=spec.name)
        return check_gguf(path)
    if Path(ref).expanduser().exists():
        return check_gguf(Path(ref).expanduser())
    hub = parse_hub_ref(ref)
    if hub is not None:
        return check_gguf(fetch(hub, progress=progress))
    if _looks_like_path(ref):
        return check_gguf(Path(ref).expanduser())
    raise UsageError(
        f"'{ref}' is not a registry model{_suggest(ref, reg.models)}, an org/repo:file.gguf "
        "reference or a path to a .gguf file")


def resolve_pair(reg: Registry, *, pair: str | None, target: str | None, draft: str | None,
                 progress: bool = True) -> tuple[Path, Path | None, PairSpec | None]:
    """--pair / --target / --draft -> (target path, draft path or None, the pair or None).

    --pair NAME        that pair (cannot be combined with --target/--draft);
    nothing            the default pair; --draft alone replaces the default pair's draft;
    --target           that target; with --draft, that draft; without, no draft model
                       (target alone or n-gram drafting).
    When --target and --draft name the two models of a registry pair, that pair is
    returned too (for its recommended K).
    """
    if pair is not None and (target is not None or draft is not None):
        raise UsageError("--pair picks both models; give either --pair or --target/--draft")
    if pair is not None or target is None:
        spec = reg.pair(pair if pair is not None else reg.default_pair)
        target, draft = spec.target, draft if draft is not None else spec.draft
    t_path = resolve_model(target, reg, progress=progress)
    d_path = resolve_model(draft, reg, progress=progress) if draft is not None else None
    return t_path, d_path, _find_pair(reg, target, draft)


def _find_pair(reg: Registry, target: str, draft: str | None) -> PairSpec | None:
    for spec in reg.pairs.values():
        if spec.target == target and spec.draft == draft:
            return spec
    return None
