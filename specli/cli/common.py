"""What run, chat and bench share: consoles, prompt input, loading a pair into a Generation."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console

from specli.config import RuntimeConfig, SamplingConfig, SpecConfig, parse_k
from specli.errors import UsageError


def consoles(plain: bool = False) -> tuple[Console, Console]:
    """(stdout, stderr) consoles. Not a terminal: no colour, fixed width, stable under test."""
    def make(file, stderr: bool) -> Console:
        tty = file.isatty()
        return Console(file=file, stderr=stderr, highlight=False, soft_wrap=True,
                       no_color=plain or not tty or "NO_COLOR" in os.environ,
                       width=None if tty else 100, force_terminal=None if tty else False)

    return make(sys.stdout, False), make(sys.stderr, True)


def read_prompt(prompt: str | None, file: Path | None) -> str:
    """The prompt from the argument, stdin ('-') or --file; a clear error when there is none."""
    if file is not None:
        if prompt is not None:
            raise UsageError("give the prompt either as an argument or with --file, not both")
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"prompt file not found: {file}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read prompt file {file}: {getattr(e, 'strerror', None) or e}") from None
    elif prompt == "-":
        text = sys.stdin.read()
    elif prompt is None:
        raise UsageError("no prompt: give PROMPT, '-' for stdin, or --file FILE")
    else:
        text = prompt
    if not text.strip():
        raise UsageError("the prompt is empty")
    return text


def round_record(r) -> dict:
    """One round as plain JSON (for --json and bench files)."""
    return {
        "k": r.k, "drafter": r.drafter, "draft": list(r.draft_tokens),
        "accept_probs": [round(p, 6) for p in r.accept_probs], "accepted": r.n_accepted,
        "token": r.token, "bonus": r.bonus, "tokens": list(r.tokens), "text": r.text,
        "t_draft": r.t_draft, "t_verify": r.t_verify, "t_sample": r.t_sample,
    }


class Generation:
    """A loaded pair plus the configs of one command: makes prompts and event streams."""

    def __init__(self, loaded, paths, sampling: SamplingConfig, spec: SpecConfig,
                 drafter_name: str, err: Console) -> None:
        self.loaded, self.paths, self.sampling, self.spec = loaded, paths, sampling, spec
        self.drafter_name = drafter_name
        self.err = err
        self._drafters: dict = {}  # one per sampling config: q must be warped as p is
        self._costs = None  # costcache.CostCache, opened on first use
        self._numerics = None  # numerics.BatchNumerics, measured on first use

    @property
    def costs(self):
        """Costs remembered on this machine (see specli.costcache)."""
        if self._costs is None:
            from specli.costcache import CostCache

            self._costs = CostCache.open()
        return self._costs

    def policy(self, spec: SpecConfig, drafter):
        """The K policy for `spec`; --k auto starts from the costs remembered here."""
        from specli.costcache import seed_policy
        from specli.session import make_policy

        policy = make_policy(spec, drafter)
        if spec.k == "auto":
            seed_policy(policy, self.costs, self.loaded.target, self.loaded.draft)
        return policy

    def remember(self, policy) -> None:
        """Keep what a generation measured for the next one (no-op for a fixed K)."""
        from specli.costcache import remember

        gov = getattr(self.loaded.target, "governor", None)
        if gov is not None and gov.take_busy():
            # Measured beside other work, maybe on fewer threads than the cache key says:
            # such t_v, t_d and t_catchup would seed the next idle run's --k auto wrongly.
            return
        if hasattr(policy, "measured"):  # a fixed K measures nothing to keep: leave the file
            remember(policy, self.costs, self.loaded.target, self.loaded.draft)

    def title(self) -> str:
        d = self.paths.draft.name if self.paths.draft and self.loaded.draft else self.drafter_name
        strict = " · strict" if self.spec.strict else ""
        return f"specli · {self.paths.target.name} ← {d} · K {self.spec.k}{strict} · {self.where()}"

    def config(self) -> dict:
        """The settings of this command, as --json and the HTML pages record them."""
        from dataclasses import asdict

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

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> list[int]:
        from specli.prompt import build_prompt

        tokens, template = build_prompt(self.loaded.target, text, system=system, raw=raw)
        if template is not None and template.is_fallback:
            self.err.print("[yellow]warning:[/] the target has no chat template; using a plain "
                           "'User:/Assistant:' format (see README)")
        self.check_fits(tokens)
        return tokens

    def check_fits(self, tokens: list[int]) -> None:
        n_ctx = self.loaded.target.n_ctx
        if len(tokens) >= n_ctx:
            raise UsageError(f"the prompt is {len(tokens)} tokens; it does not fit the context "
                             f"of {n_ctx} (raise --ctx)")

    def drafter(self, sampling: SamplingConfig | None = None):
        from specli.session import make_drafter

        sampling = sampling or self.sampling
        if sampling not in self._drafters:
            self._drafters[sampling] = make_drafter(self.loaded, self.drafter_name, sampling)
        return self._drafters[sampling]

    def generate(self, tokens: list[int], *, spec: SpecConfig | None = None,
                 sampling: SamplingConfig | None = None, trace: bool = False):
        """The engine's event stream; when it ends, --k auto's measured costs are kept.

        `trace`: rounds carry what verification saw (explain, --html); off, it costs nothing."""
        from specli.engine import speculative_generate

        spec = spec or self.spec
        sampling = sampling or self.sampling
        drafter = self.drafter(sampling) if spec.k != 0 else None
        policy = self.policy(spec, drafter)
        chunk = self.strict_chunk(spec, policy, len(tokens))
        events = speculative_generate(self.loaded.target, drafter, tokens, sampling,
                                      spec, policy=policy, n_vocab=self.loaded.n_vocab,
                                      verify_chunk=chunk, trace=trace)
        return _remembering(events, lambda: self.remember(policy))

    def strict_chunk(self, spec: SpecConfig, policy, context: int = 0):
        """--strict: the verify-call rule for this generation (None otherwise); --k auto
        is told the call size at this context length, to price the chunk sequence."""
        chunk = self.verify_chunk() if spec.strict and spec.k != 0 else None
        if chunk and hasattr(policy, "verify"):
            policy.verify.set_chunk(chunk(context))
        return chunk

    def numerics(self, fresh: bool = False):
        """The target's batch-numerics gap on this machine: remembered, else measured (and
        always measured when `fresh`, under this command's sampling settings)."""
        if self._numerics is None or fresh:
            from specli.config import K_MAX
            from specli.numerics import cached_or_measure

            with self.err.status("measuring the target's batch numerics", spinner="dots"):
                self._numerics = cached_or_measure(self.loaded.target, self.costs,
                                                   min(K_MAX, NUMERICS_N_MAX), self.sampling,
                                                   fresh=fresh)
        return self._numerics

    def verify_chunk(self):
        """Strict mode's verify-call size, by context length (numerics.ChunkRule): the
        target's bit-identical batch size at the lengths measured."""
        return self.numerics().chunk_rule()


def write_trace_html(path: Path, gen: Generation, done, rounds) -> None:
    """The self-contained trace page of one generation (run --html, chat --html).

    specli.report is imported only here: matplotlib is heavy."""
    from specli.render import stats_rows
    from specli.report.html import trace_page

    page = trace_page(rounds, done, gen.title(), stats_rows(done.stats, done.stop_reason),
                      gen.config())
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --html file {path}: {e.strerror}") from None


def _remembering(events, on_done):
    """Pass the events through (throw() too: Ctrl-C reaches the engine); then call on_done."""
    try:
        yield from events
    finally:
        on_done()


DRAFTER_NAMES = ("model", "ngram", "auto")
NUMERICS_N_MAX = 9  # batch sizes 2..9 are compared (--k auto drafts up to 8 model tokens)


def split_draft_option(draft: str | None, drafter: str) -> tuple[str | None, str]:
    """`--draft auto|ngram|model` names a drafter, as `--drafter` does; other values are models.

    A comma list of drafter names (`--draft ngram,auto`, for bench) counts too. A local
    file of that name still wins, so no model path is ever shadowed.
    """
    if draft is None:
        return None, drafter
    names = [part.strip().lower() for part in draft.split(",")]
    if all(name in DRAFTER_NAMES for name in names) and not Path(draft).exists():
        return None, ",".join(names)
    return draft, drafter


@contextmanager
def open_generation(err: Console, *, pair, target, draft, drafter, force, k, temperature, top_k,
                    top_p, min_p, seed, max_tokens, ctx, threads, draft_threads, n_gpu_layers,
                    draft_n_gpu_layers, strict: bool = False) -> Iterator[Generation]:
    """Validate options, resolve and load the models, and close them afterwards."""
    from specli.session import load_models, resolve_paths

    draft, drafter = split_draft_option(draft, drafter)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    spec = SpecConfig(k=parse_k(k), max_tokens=max_tokens, seed=seed, drafter=drafter,
                      strict=strict)
    runtime = RuntimeConfig(n_ctx=ctx, n_threads=threads, draft_n_threads=draft_threads,
                            n_gpu_layers=n_gpu_layers, draft_n_gpu_layers=draft_n_gpu_layers)
    if drafter not in ("model", "ngram", "auto"):
        raise UsageError(f"--drafter must be model, ngram or auto, got {drafter!r}")
    paths = resolve_paths(pair=pair, target=target, draft=draft)
    need_draft = spec.k != 0 and drafter != "ngram"
    with err.status(f"loading {paths.target.name}" + (f" and {paths.draft.name}" if paths.draft and need_draft else ""),
                    spinner="dots"):
        loaded = load_models(paths, runtime, force=force, load_draft=need_draft,
                             warn=lambda m: err.print(f"[yellow]warning:[/] {m}"))
    try:
        yield Generation(loaded, paths, sampling, spec, drafter, err)
    finally:
        loaded.close()
