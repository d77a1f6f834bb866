"""The library session: a loaded draft/target pair and the settings of one command.

Everything that generates reads this one object: the CLI's live view, chat, the
conversation core (and through it the server), bench, explain and the benchmarks.

    from specli.session import Options, open_generation

    with open_generation(Options(k="auto", temperature=0.0)) as gen:
        done = gen.collect(gen.generate(gen.prompt_tokens("Write a haiku")))[0]
        print(done.text)

`Options` holds what a user chooses (the shared flags of run, chat, serve, bench and
explain); `open_generation` validates them, resolves and loads the pair, and yields a
`Generation`: prompts, the drafter and K policy for each sampling setting, the strict
chunk rule, and `generate()`, the engine's event stream with --k auto's memory kept.
Nothing here prints: a `Reporter` (the CLI's Rich one, or a silent default) is told of
warnings and of slow steps.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from specli.config import K_MAX, RuntimeConfig, SamplingConfig, SpecConfig, parse_k
from specli.errors import UsageError

NUMERICS_N_MAX = 9  # batch sizes 2..9 are compared (--k auto drafts up to 8 model tokens)


# --------------------------------------------------------------------------- what to load


@dataclass
class ModelPaths:
    target: Path
    draft: Path | None
    pair_name: str | None = None
    recommended_k: int | None = None


def resolve_paths(*, pair: str | None, target: str | None, draft: str | None,
                  progress: bool = True) -> ModelPaths:
    """--pair / --target / --draft -> local files (downloading through the registry)."""
    from specli.models import catalogue, resolve

    reg = catalogue.load_registry()
    t, d, spec = resolve.resolve_pair(reg, pair=pair, target=target, draft=draft, progress=progress)
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
    from specli.llama.backend import LlamaModel
    from specli.llama.threads import governor_for

    warning = None
    t_head = d_head = None  # each header is read once: for the pair check and the placement
    if paths.draft is not None and load_draft:
        from specli.llama.gguf import read_gguf
        from specli.models import compat

        t_head, d_head = read_gguf(paths.target, tensors=True), read_gguf(paths.draft, tensors=True)
        report = compat.ensure_compatible(d_head, t_head, force=force)
        if report.verdict == "incompatible":  # only reached with --force
            warning = f"--force: using an incompatible draft ({'; '.join(report.reasons)})"
            if warn:
                warn(warning)
    target = LlamaModel(paths.target, n_ctx=runtime.n_ctx, n_threads=runtime.n_threads,
                        n_gpu_layers=runtime.n_gpu_layers, n_batch=runtime.n_batch,
                        header=t_head, n_seq=runtime.n_seq)
    draft = None
    if paths.draft is not None and load_draft:
        try:
            draft = LlamaModel(
                paths.draft, n_ctx=runtime.n_ctx,
                n_threads=runtime.draft_n_threads or runtime.n_threads,
                n_gpu_layers=(runtime.n_gpu_layers if runtime.draft_n_gpu_layers is None
                              else runtime.draft_n_gpu_layers),
                n_batch=runtime.n_batch, header=d_head, n_seq=runtime.n_seq)
        except BaseException:
            target.close()
            raise
    n_vocab = min(target.n_vocab, draft.n_vocab) if draft is not None else target.n_vocab
    # Threads specli chose follow the machine's load (a compile beside it); given ones stay.
    governor_for((target, draft), threads_given=runtime.n_threads is not None
                 or runtime.draft_n_threads is not None)
    return Loaded(target, draft, n_vocab, warning)


def make_drafter(loaded: Loaded, drafter: str, sampling: SamplingConfig, ngram=None):
    """The drafter `drafter` (a name in core.drafters.DRAFTERS) over a loaded pair."""
    from specli.core.drafters import make_drafter as build

    return build(drafter, loaded.draft, sampling, loaded.n_vocab, ngram=ngram)


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class Options:
    """What a user chooses for a generation: the flags run, chat, serve, bench and explain
    share (the CLI builds this once, see cli.options). Checked by `configs()`."""

    pair: str | None = None
    target: str | None = None
    draft: str | None = None
    drafter: str = "auto"
    force: bool = False
    k: str = "auto"
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = 0
    max_tokens: int = 256
    ctx: int = 4096
    threads: int | None = None
    draft_threads: int | None = None
    n_gpu_layers: int | None = None
    draft_n_gpu_layers: int | None = None
    strict: bool = False
    parallel: int = 1  # serve: sequences generated at once in one context (0: auto)

    def models(self) -> tuple[str | None, str]:
        """(the draft model, the drafter): `--draft auto|ngram|model` names a drafter, as
        `--drafter` does; other values are models. A comma list of drafter names (for
        bench) counts too. A local file of that name still wins: no path is shadowed."""
        from specli.core.drafters import DRAFTER_NAMES

        if self.draft is None:
            return None, self.drafter
        names = [part.strip().lower() for part in self.draft.split(",")]
        if all(name in DRAFTER_NAMES for name in names) and not Path(self.draft).exists():
            return None, ",".join(names)
        return self.draft, self.drafter

    def configs(self) -> tuple[SamplingConfig, SpecConfig, RuntimeConfig]:
        """The validated configs (a UsageError names the first bad value)."""
        from specli.core.drafters import drafter_kind

        drafter = self.models()[1]
        drafter_kind(drafter)
        sampling = SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                                  top_p=self.top_p, min_p=self.min_p)
        spec = SpecConfig(k=parse_k(self.k), max_tokens=self.max_tokens, seed=self.seed,
                          drafter=drafter, strict=self.strict)
        runtime = RuntimeConfig(n_ctx=self.ctx, n_threads=self.threads,
                                draft_n_threads=self.draft_threads,
                                n_gpu_layers=self.n_gpu_layers,
                                draft_n_gpu_layers=self.draft_n_gpu_layers,
                                n_seq=self.parallel or 1)
        return sampling, spec, runtime


def split_draft_option(draft: str | None, drafter: str) -> tuple[str | None, str]:
    """Options.models() for a bare (--draft, --drafter) pair."""
    return Options(draft=draft, drafter=drafter).models()


class Reporter(Protocol):
    """Where a session tells of what it does: warnings, and steps that take a while."""

    def warn(self, message: str) -> None: ...

    def busy(self, message: str) -> ContextManager: ...


class Silent:
    """A Reporter for scripts and tests: warnings are kept in `warnings`, nothing shown."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def busy(self, message: str) -> ContextManager:
        return nullcontext()


@contextmanager
def open_generation(options: Options, reporter: Reporter | None = None) -> Iterator["Generation"]:
    """Validate the options, resolve and load the models, and close them afterwards."""
    reporter = reporter or Silent()
    draft, drafter = options.models()
    sampling, spec, runtime = options.configs()
    paths = resolve_paths(pair=options.pair, target=options.target, draft=draft)
    if options.parallel == 0:
        runtime = replace(runtime, n_seq=auto_parallel(paths.target))
    from specli.core.drafters import drafter_kind

    need_draft = spec.k != 0 and drafter_kind(drafter).loads_model
    names = paths.target.name + (f" and {paths.draft.name}" if paths.draft and need_draft else "")
    with reporter.busy(f"loading {names}"):
        loaded = load_models(paths, runtime, force=options.force, load_draft=need_draft,
                             warn=reporter.warn)
    try:
        yield Generation(loaded, paths, sampling, spec, drafter, reporter)
    finally:
        loaded.close()


# --------------------------------------------------------------------------- the session


class Generation:
    """A loaded pair plus the configs of one command: makes prompts and event streams."""

    def __init__(self, loaded: Loaded, paths: ModelPaths, sampling: SamplingConfig,
                 spec: SpecConfig, drafter_name: str, reporter: Reporter | None = None) -> None:
        self.loaded, self.paths, self.sampling, self.spec = loaded, paths, sampling, spec
        self.drafter_name = drafter_name
        self.reporter = reporter or Silent()
        self._drafters: dict = {}  # one per sampling config: q must be warped as p is
        self._shared = _Shared()  # with the other sequences' Generations (see slots)
        self.group = None  # llama.batch.StepGroup of the slots, once made

    @property
    def costs(self):
        """Costs remembered on this machine (see specli.core.costcache)."""
        shared = self._shared
        with shared.lock:
            if shared.costs is None:
                from specli.core.costcache import CostCache

                shared.costs = CostCache.open()
        return shared.costs

    # --- prompts
    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> list[int]:
        from specli.prompt import build_prompt

        tokens, template = build_prompt(self.loaded.target, text, system=system, raw=raw)
        if template is not None and template.is_fallback:
            self.reporter.warn("the target has no chat template; using a plain "
                               "'User:/Assistant:' format (see README)")
        self.check_fits(tokens)
        return tokens

    def check_fits(self, tokens: list[int]) -> None:
        n_ctx = self.loaded.target.n_ctx
        if len(tokens) >= n_ctx:
            raise UsageError(f"the prompt is {len(tokens)} tokens; it does not fit the context "
                             f"of {n_ctx} (raise --ctx)")

    # --- what a generation runs with
    def drafter(self, sampling: SamplingConfig | None = None, name: str | None = None,
                ngram=None):
        """The drafter for `sampling` (its q is warped as p is), `name` (default: this
        session's); with `ngram`, over that n-gram index (made afresh, not kept)."""
        sampling = sampling or self.sampling
        name = name or self.drafter_name
        if ngram is not None:
            return make_drafter(self.loaded, name, sampling, ngram=ngram)
        key = (name, sampling)
        if key not in self._drafters:
            self._drafters[key] = make_drafter(self.loaded, name, sampling)
        return self._drafters[key]

    def policy(self, spec: SpecConfig | None = None):
        """The K policy for `spec`; --k auto starts from the costs remembered here."""
        from specli.core.policy import make_policy

        spec = spec or self.spec
        if spec.k != "auto":
            return make_policy(spec)
        return make_policy(spec, self.costs, self.loaded.target, self.loaded.draft)

    def remember(self, policy) -> None:
        """Keep what a generation measured for the next one (no-op for a fixed K)."""
        from specli.core.policy import remember

        with self._shared.lock:  # slots finish replies on their own threads
            remember(policy, self.costs if policy.measured() is not None else None,
                     self.loaded.target, self.loaded.draft)

    def strict_chunk(self, spec: SpecConfig):
        """--strict: the verify-call rule for this generation (None otherwise). The engine
        tells the policy the call size before each round, so --k auto prices the chunks."""
        return self.verify_chunk() if spec.strict and spec.k != 0 else None

    def numerics(self, fresh: bool = False):
        """The target's batch-numerics gap on this machine: remembered, else measured (and
        always measured when `fresh`, under this command's sampling settings)."""
        shared = self._shared
        with shared.lock:
            if shared.numerics is None or fresh:
                from specli.core.numerics import cached_or_measure

                with self.reporter.busy("measuring the target's batch numerics"):
                    shared.numerics = cached_or_measure(self.loaded.target, self.costs,
                                                        min(K_MAX, NUMERICS_N_MAX),
                                                        self.sampling, fresh=fresh)
        return shared.numerics

    def verify_chunk(self):
        """Strict mode's verify-call size, by context length (numerics.ChunkRule): the
        target's bit-identical batch size at the lengths measured."""
        return self.numerics().chunk_rule()

    def slots(self) -> list["Generation"]:
        """One Generation per sequence of a multi-sequence pair (serve --parallel), each
        over its own llama.batch.SeqViews, decoded in shared steps of one StepGroup and
        sharing this one's remembered costs and numerics; [self] for a single sequence.
        Their models are views: close this Generation's, never theirs."""
        target, draft = self.loaded.target, self.loaded.draft
        n = getattr(target, "n_seq", 1)
        if n <= 1:
            return [self]
        from specli.llama.batch import StepGroup, views

        self.group = StepGroup(first=draft)
        drafts = views(draft, self.group) if draft is not None else [None] * n
        out = []
        for t, d in zip(views(target, self.group), drafts):
            gen = Generation(Loaded(t, d, self.loaded.n_vocab, self.loaded.warning), self.paths,
                             self.sampling, self.spec, self.drafter_name, self.reporter)
            gen._shared, gen.group = self._shared, self.group
            out.append(gen)
        return out

    # --- generating
    def generate(self, tokens: list[int], *, spec: SpecConfig | None = None,
                 sampling: SamplingConfig | None = None, trace: bool = False,
                 drafter=None, policy=None, remember: bool = True, rules=None,
                 logprobs: int | None = None, grammar=None):
        """The engine's event stream; when it ends, --k auto's measured costs are kept.

        `trace`: rounds carry what verification saw (explain, --html); off, it costs nothing.
        `drafter`, `policy`: what to run with instead of this session's own for `spec`
        and `sampling` (the conversation core keeps its own across replies, and calls
        `remember` itself: `remember=False`). `rules`: a core.logits.LogitRules (logit
        bias, penalties) the output is sampled under, exactly as by the target alone;
        `logprobs`: rounds carry each token's log-probability and this many alternatives;
        `grammar`: a core.grammar.Grammar the output keeps to (JSON schema, GBNF, ...),
        sampled exactly as by the target alone under it (GrammarError if it does not
        compile against the target's vocabulary)."""
        from specli.core.engine import speculative_generate

        spec = spec or self.spec
        sampling = sampling or self.sampling
        if drafter is None and spec.k != 0:
            drafter = self.drafter(sampling)
        policy = policy or self.policy(spec)
        chunk = self.strict_chunk(spec)
        target = self.loaded.target
        if self.group is not None:  # a sequence of a shared context: strict runs alone
            target.solo = bool(spec.strict)
        constraint = (grammar.constraint(target.grammar_tokenizer(), target.eog_tokens())
                      if grammar is not None else None)
        events = speculative_generate(target, drafter, tokens, sampling,
                                      spec, policy=policy, n_vocab=self.loaded.n_vocab,
                                      verify_chunk=chunk, trace=trace, rules=rules,
                                      logprobs=logprobs, constraint=constraint)
        return _remembering(events, lambda: self.remember(policy)) if remember else events

    @staticmethod
    def collect(events, on_round: Callable | None = None):
        """(Done, rounds) of an event stream; Ctrl-C ends it with Done("interrupted")."""
        from specli.core.engine import collect

        return collect(events, on_round)

    # --- describing it
    def title(self) -> str:
        strict = " · strict" if self.spec.strict else ""
        return (f"specli · {self.paths.target.name} ← {self.draft_label()} · K {self.spec.k}"
                f"{strict} · {self.where()}")

    def draft_label(self) -> str:
        """The draft model's file name, or the drafter's name when none runs."""
        loaded = self.paths.draft and self.loaded.draft
        return self.paths.draft.name if loaded else self.drafter_name

    def config(self) -> dict:
        """The settings of this command, as --json and the HTML pages record them."""
        return {
            "k": self.spec.k,
            "drafter": self.drafter_name,
            "sampling": asdict(self.sampling),
            "seed": self.spec.seed,
            "max_tokens": self.spec.max_tokens,
            "target": str(self.paths.target),
            "draft": str(self.paths.draft) if self.paths.draft else None,
            "strict": self.spec.strict,
            "device": {"target": getattr(self.loaded.target, "device", "CPU"),
                       "draft": getattr(self.loaded.draft, "device", None) if self.loaded.draft else None},
        }

    def where(self) -> str:
        """Where each model runs: 'on CPU', or 'target on CUDA0, draft on CPU'."""
        t = getattr(self.loaded.target, "device", "CPU")
        d = getattr(self.loaded.draft, "device", None) if self.loaded.draft else None
        if d is None or d == t:
            return f"on {t}"
        return f"target on {t}, draft on {d}"


def auto_parallel(target_path) -> int:
    """serve --parallel auto: as many sequences as this machine's remembered verify costs
    say pay in one step (costcache.choose_parallel); 1 where nothing was measured yet."""
    from specli.core.costcache import CostCache, choose_parallel, remembered_curve

    return choose_parallel(remembered_curve(CostCache.open(), target_path))


class _Shared:
    """What a pair's Generations share: the cost cache and the numerics, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.costs = None  # costcache.CostCache
        self.numerics = None  # numerics.BatchNumerics


def _remembering(events, on_done):
    """Pass the events through (throw() too: Ctrl-C reaches the engine); then call on_done."""
    try:
        yield from events
    finally:
        on_done()


__all__ = ["Generation", "Loaded", "ModelPaths", "Options", "Reporter", "Silent",
           "load_models", "make_drafter", "open_generation", "resolve_paths"]
