"""Resolve, check and load a draft/target pair; build the drafter and K policy a run uses.

Shared by run, chat and bench so that all three load models the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from specli.config import RuntimeConfig, SamplingConfig, SpecConfig
from specli.errors import UsageError


@dataclass
class ModelPaths:
    target: Path
    draft: Path | None
    pair_name: str | None = None
    recommended_k: int | None = None


def resolve_paths(*, pair: str | None, target: str | None, draft: str | None,
                  progress: bool = True) -> ModelPaths:
    """--pair / --target / --draft -> local files (downloading through the registry)."""
    from specli import registry

    reg = registry.load_registry()
    t, d, spec = registry.resolve_pair(reg, pair=pair, target=target, draft=draft, progress=progress)
    return ModelPaths(t, d, getattr(spec, "name", None), getattr(spec, "recommended_k", None))


@dataclass
class Loaded:
    """Both models, loaded, with the vocabulary range they share."""

    target: object  # backend.LlamaModel
    draft: object | None
    n_vocab: int  # ids >= n_vocab are masked in both p and q
    warning: str | None = None

    def close(self) -> None:
        for m in (self.draft, self.target):
            if m is not None:
                m.close()

    def __enter__(self) -> "Loaded":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_models(paths: ModelPaths, runtime: RuntimeConfig, *, force: bool = False,
                load_draft: bool = True, warn: Callable[[str], None] | None = None) -> Loaded:
    """Check the pair's vocabularies from GGUF metadata, then load both models."""
    from specli.backend import LlamaModel, check_gguf_file

    warning = None
    check_gguf_file(paths.target)
    if paths.draft is not None and load_draft:
        check_gguf_file(paths.draft)
        from specli import compat

        report = compat.ensure_compatible(paths.draft, paths.target, force=force)
        if report.verdict == "incompatible":  # only reached with --force
            warning = f"--force: using an incompatible draft ({'; '.join(report.reasons)})"
            if warn:
                warn(warning)
    target = LlamaModel(paths.target, n_ctx=runtime.n_ctx, n_threads=runtime.n_threads,
                        n_gpu_layers=runtime.n_gpu_layers, n_batch=runtime.n_batch)
    draft = None
    if paths.draft is not None and load_draft:
        try:
            draft = LlamaModel(
                paths.draft, n_ctx=runtime.n_ctx,
                n_threads=runtime.draft_n_threads or runtime.n_threads,
                n_gpu_layers=(runtime.n_gpu_layers if runtime.draft_n_gpu_layers is None
                              else runtime.draft_n_gpu_layers),
                n_batch=runtime.n_batch)
        except BaseException:
            target.close()
            raise
    n_vocab = min(target.n_vocab, draft.n_vocab) if draft is not None else target.n_vocab
    from specli.threads import governor_for

    # Threads specli chose follow the machine's load (a compile beside it); given ones stay.
    governor_for((target, draft), threads_given=runtime.n_threads is not None
                 or runtime.draft_n_threads is not None)
    return Loaded(target, draft, n_vocab, warning)


def make_drafter(loaded: Loaded, drafter: str, sampling: SamplingConfig, ngram=None):
    """The drafter for --drafter model|ngram|auto (auto falls back to ngram without a draft).

    `ngram`: an NgramDrafter to reuse (its index keeps the prefix a new prompt shares with
    the last one, so a conversation is not re-indexed from scratch every reply).
    """
    from specli.drafters import HybridDrafter, ModelDrafter, NgramDrafter

    if drafter not in ("model", "ngram", "auto"):
        raise UsageError(f"--drafter must be model, ngram or auto, got {drafter!r}")
    ngram = ngram if ngram is not None else NgramDrafter()
    if drafter == "ngram" or (drafter == "auto" and loaded.draft is None):
        return ngram
    if loaded.draft is None:
        raise UsageError("--drafter model needs a draft model: give --draft or --pair")
    model = ModelDrafter(loaded.draft, sampling, loaded.n_vocab)
    return model if drafter == "model" else HybridDrafter(model, ngram)


def make_policy(spec: SpecConfig, drafter):
    """FixedK for --k N; the cost-aware policy for --k auto."""
    from specli.engine import FixedK

    if spec.k != "auto":
        return FixedK(spec.k)
    from specli.costs import AutoK

    return AutoK(spec.k_max)
