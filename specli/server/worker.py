"""One generation at a time over the loaded pair: a FIFO queue, one worker thread, cancellation.

The HTTP layer never touches model state except through `Scheduler.submit`. Each request
becomes a Ticket: the worker thread runs it through the conversation core and puts what
happens (Started, then Delta texts, then Finished; or Failed) on the ticket's asyncio
queue, from which the request's coroutine reads. A cancelled ticket (client gone, server
stopping) is stopped between two rounds; `Reply.finish` leaves the KV caches consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from specli.core.grammar import GrammarError
from specli.errors import ContextFullError, SpecliError, UsageError
from specli.server.errors import ApiError, bad_request, internal, queue_full, shutting_down
from specli.server.protocol import Job


# --- what a ticket receives -----------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str | None  # whole characters only: the engine's pieces are UTF-8 safe
    logprobs: tuple | None = None  # engine.TokenLogprob of the tokens this text completes
    tool_call: dict | None = None  # a chunk's tool_calls entry (then text is None)


@dataclass(frozen=True)
class Finished:
    text: str | None  # the reply's content (None: it only called tools)
    finish_reason: str  # "stop" | "length" | "tool_calls"
    usage: dict
    timings: dict
    logprobs: tuple | None = None  # engine.TokenLogprob per token of the output (when asked)
    tool_calls: tuple | None = None  # toolcalls.ToolCall, in order
    # llama-server's native fields (/infill)
    stop_type: str = "eos"  # "eos" | "word" (a stop string) | "limit" (n_predict, n_indent...)
    stopping_word: str = ""
    tokens: tuple[int, ...] = ()  # the output's token ids
    truncated: bool = False  # the prompt was cut to fit
    tokens_cached: int = 0  # tokens in the target's cache afterwards
    prompt_text: str = ""  # the prompt as the target saw it (special tokens spelled out)
    ignored_samplers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choices:
    """Several completions of one request (/infill's n_cmpl), in order."""

    items: tuple  # Finished


@dataclass(frozen=True)
class Failed:
    error: ApiError


class Ticket:
    """A request's place in the queue and its channel back to the event loop."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job, self.loop = job, loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.cancel_error: ApiError | None = None  # what a reader still listening is told
        self.submitted = time.perf_counter()

    def put(self, item) -> None:
        """From the worker thread: hand an item to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def get(self):
        return await self.items.get()

    def cancel(self, error: ApiError | None = None) -> None:
        """Stop at the next round (or before starting); `error` is what a reader is told."""
        self.cancel_error = self.cancel_error or error
        self.cancelled.set()


class Scheduler:
    """FIFO over `parallel` worker threads, one per slot (a sequence of the shared context:
    llama.batch); at most `max_queue` requests wait behind the running ones."""

    def __init__(self, max_queue: int, log: Callable[[str], None], parallel: int = 1) -> None:
        self.max_queue, self.log, self.parallel = max_queue, log, parallel
        self.runners: list[Runner] = []  # one per slot, set once the models are loaded
        self._executor = ThreadPoolExecutor(max_workers=parallel,
                                            thread_name_prefix="specli-generate")
        self._idle: list[Runner] = []
        self._lock = threading.Lock()
        self._waiting = 0
        self._tickets: set[Ticket] = set()
        self._closed = False

    @property
    def runner(self) -> "Runner | None":
        """The first slot's runner (the only one without --parallel)."""
        return self.runners[0] if self.runners else None

    def set_runners(self, runners: list["Runner"]) -> None:
        """The slots, once the models are loaded (before any job is submitted): one worker
        thread each (--parallel auto knows how many only then)."""
        with self._lock:
            self.runners, self._idle = list(runners), list(runners)
            if len(runners) != self.parallel:
                self._executor.shutdown(wait=False)
                self.parallel = len(runners)
                self._executor = ThreadPoolExecutor(max_workers=self.parallel,
                                                    thread_name_prefix="specli-generate")

    def _acquire(self, job: Job) -> "Runner":
        """The idle slot whose cache most likely holds this job's prompt: the one whose
        last job's text shares the longest start with it (as llama-server picks a slot by
        prompt similarity), else the one idle longest. A worker thread only starts when
        a slot is idle: there are as many threads as slots."""
        key = _affinity_text(job)
        with self._lock:
            best = max(range(len(self._idle)),
                       key=lambda i: (_shared_start(self._idle[i].last_text, key), -i))
            return self._idle.pop(best)

    def _release(self, runner: "Runner") -> None:
        with self._lock:
            self._idle.append(runner)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queue a job; 503 when the queue is full or the server is stopping."""
        with self._lock:
            if self._closed:
                raise shutting_down()
            if self._waiting >= self.max_queue and self._tickets:
                raise queue_full(self.max_queue)
            ticket = Ticket(job, loop)
            self._waiting += 1
            older = [t for t in self._tickets if _supersedes(job, t.job)]
            self._tickets.add(ticket)
        for t in older:  # the editor moved on: its older completion is of no use any more
            t.cancel(_superseded())
        self._executor.submit(self._run, ticket)
        return ticket

    def _run(self, ticket: Ticket) -> None:
        with self._lock:
            self._waiting -= 1
        try:
            if ticket.cancelled.is_set():  # its client left while it waited, or we are stopping
                ticket.put(Failed(ticket.cancel_error or _cancelled()))
            else:
                runner = self._acquire(ticket.job)
                try:
                    runner.run(ticket)
                finally:
                    self._release(runner)
        except BaseException:  # a bug: log it, answer 500, keep serving
            self.log("internal error:\n" + traceback.format_exc())
            ticket.put(Failed(internal()))
        finally:
            with self._lock:
                self._tickets.discard(ticket)

    def load(self) -> dict:
        """How busy the server is: requests waiting, and requests admitted in all."""
        with self._lock:
            load = {"waiting": self._waiting, "requests": len(self._tickets)}
            if self.parallel > 1:
                load.update(slots=self.parallel, slots_idle=len(self._idle))
                group = self.runners[0].group if self.runners else None
                if group is not None:  # shared steps so far, and the tokens they held
                    load.update(steps=group.steps, step_tokens=group.rows,
                                steps_shared=group.shared)
            return load

    def close(self) -> None:
        """Refuse new work and stop what runs or waits (each at its next round)."""
        with self._lock:
            self._closed = True
            tickets = list(self._tickets)
        for t in tickets:
            t.cancel(shutting_down())

    def join(self) -> None:
        self._executor.shutdown(wait=True)


def _cancelled() -> ApiError:
    return ApiError(499, "the request was cancelled", type="cancelled", code="cancelled")


def _before_cursor(f) -> tuple:
    """(the text before the cursor, the text after it) of a fill-in-the-middle job; the
    first is None when given as tokens (then no suggestion is looked up)."""
    before = f.prefix + f.prompt if isinstance(f.prefix, str) else None
    return before, f.suffix


def _superseded() -> ApiError:
    return ApiError(499, "cancelled by a newer completion request from the same client",
                    type="cancelled", code="cancelled")


def _supersedes(new: Job, old: Job) -> bool:
    """A fill-in-the-middle request cancels the same client's earlier ones (each keystroke
    makes the last suggestion stale); a cache warm-up (n_predict 0) cancels nothing."""
    return (new.infill is not None and old.infill is not None and not new.infill.warm_only
            and new.client is not None and new.client == old.client)


def _affinity_text(job: Job) -> str:
    """The start of what a job's prompt is made of, to match it with a slot's cache."""
    if job.infill is not None:
        f = job.infill
        return "".join(str(e) for e in (f.extra or ())) + str(f.prefix)
    if job.kind == "chat":
        return "\x00".join(str(m.get("content")) for m in job.messages)
    return str(job.prompt)


def _shared_start(a: str, b: str) -> int:
    from specli.core.ngram import common_prefix

    return common_prefix(a, b) if a and b else 0


class Shared:
    """What every slot's runner shares: the replies' tokens, the editors' last
    suggestions, the infill sampler's vocabulary, and a lock over them."""

    def __init__(self, history=None) -> None:
        from specli.conversation import ReplyMemory
        from specli.fim import Suggestions

        from specli.core.history import DraftHistory

        self.lock = threading.RLock()
        # Earlier requests' prompts and replies, drafted from by every slot (issue 27). One
        # partition: the server has at most one API key. On disk only with --draft-history.
        self.history = history if history is not None else DraftHistory()
        self.memory = ReplyMemory()  # replies' tokens, for clients re-sending the history
        self.suggestions = Suggestions()  # each editor's last completion (drafted from)
        self.infill_vocab = None  # core.sampling.InfillVocab, made on first use


def make_runners(gen, log: Callable[[str], None], state_bytes: int,
                 history=None) -> list["Runner"]:
    """A runner per slot of the loaded pair (gen.slots()), sharing one Shared (over
    `history`, a core.history.DraftHistory, if given); the saved prompt states' memory is
    split between them."""
    slots = gen.slots()
    shared = Shared(history)
    return [Runner(g, log, state_bytes // len(slots), shared) for g in slots]


# --- running one job ------------------------------------------------------------------------
class Runner:
    """Runs jobs through the conversation core; lives on one worker thread at a time."""

    def __init__(self, gen, log: Callable[[str], None], state_bytes: int,
                 shared: Shared | None = None) -> None:
        from specli.conversation import Conversation

        self.shared = shared or Shared()
        self.core = Conversation(gen, state_bytes, history=self.shared.history)
        self.core.warm_up()  # before /health says ready
        self.memory = self.shared.memory
        self.suggestions = self.shared.suggestions
        self.group = gen.group  # llama.batch.StepGroup with --parallel, else None
        self.last_text = ""  # the start of the last job's prompt (Scheduler._acquire)
        self.log = log
        from specli.toolcalls import tools_format

        # How the target's template writes tool calls ("hermes", "llama3"; None: no tools)
        self.tools_format = tools_format(self.core.template.source)

    def member(self):
        """Generating beside the other slots: decodes go into shared steps."""
        if self.group is None:
            return contextlib.nullcontext()
        return self.group.member(self.core.target)

    def run(self, ticket: Ticket) -> None:
        job = ticket.job
        self.last_text = _affinity_text(job)
        t_start = time.perf_counter()
        try:
            tokens, infill = self._prompt(job)
            if job.infill is not None and job.infill.warm_only:
                self._warm(ticket, tokens, infill, queue_ms=1000 * (t_start - ticket.submitted))
                return
            n = job.infill.n_choices if job.infill is not None else 1
            choices = []
            for i in range(n):
                if i and job.sampling.greedy:  # greedy: every choice is the same text
                    choices.append(choices[0])
                    continue
                if ticket.cancelled.is_set():
                    ticket.put(Failed(ticket.cancel_error or _cancelled()))
                    return
                spec = dataclasses.replace(job.spec, seed=job.spec.seed + i) if i else job.spec
                reply = self._reply(job, tokens, infill, spec)
                if n == 1:
                    break
                finished = self._generate(ticket, reply, 1000 * (t_start - ticket.submitted),
                                          infill, quiet=True)
                if finished is None:
                    return
                choices.append(finished)
            if n > 1:
                ticket.put(Started(len(tokens)))
                ticket.put(Choices(tuple(choices)))
                return
        except ApiError as e:
            ticket.put(Failed(e))
            return
        except GrammarError as e:  # compiled against this vocabulary: "json_schema: ..."
            param = job.grammar_param or "tools"
            ticket.put(Failed(bad_request(f"{param}: {e}", param)))
            return
        except UsageError as e:  # e.g. drafter "model" where no draft model is loaded
            ticket.put(Failed(bad_request(str(e).replace("--drafter", "speculative.drafter"),
                                          "speculative")))
            return
        ticket.put(Started(len(tokens)))
        self._generate(ticket, reply, 1000 * (t_start - ticket.submitted), infill)

    def _sampling(self, job: Job):
        """The job's sampling, with llama.cpp's infill sampler over the target's vocabulary
        when the request lists it (made on first use, then kept)."""
        if job.infill is None or not job.infill.infill_sampler:
            return job.sampling
        with self.shared.lock:
            if self.shared.infill_vocab is None:
                from specli.core.sampling import InfillVocab

                self.shared.infill_vocab = InfillVocab(self.core.target)
        return dataclasses.replace(job.sampling, infill=self.shared.infill_vocab)

    def _reply(self, job: Job, tokens: list[int], infill, spec):
        prediction = self._reference(job)
        anchored = True
        if infill is not None and job.prediction is None:
            # The rest of this editor's last suggestion, if the user typed its start: what
            # comes next (anchored at the prompt's end); then the code the prompt left out.
            with self.shared.lock:
                rest = self.suggestions.predict(job.client, *_before_cursor(job.infill))
            ahead = self.core.prediction_tokens(rest) if rest else []
            if ahead or infill.left_out:
                prediction, anchored = ahead + infill.left_out, bool(ahead)
        return self.core.reply(tokens, spec, self._sampling(job), job.drafter,
                               prediction=prediction, rules=self._rules(job),
                               logprobs=job.logprobs, grammar=self._grammar(job),
                               anchored=anchored)

    def _warm(self, ticket: Ticket, tokens: list[int], infill, queue_ms: float) -> None:
        """n_predict 0: evaluate the prompt into the cache (an editor's ring buffer of other
        files' chunks), so that the next completion finds it there; generate nothing."""
        with self.member():
            n_eval, seconds = self.core.prefill(tokens)
        ticket.put(Started(len(tokens)))
        ms = 1000 * seconds
        ticket.put(Finished(
            "", "length", {"prompt_tokens": len(tokens), "completion_tokens": 0,
                           "total_tokens": len(tokens),
                           "prompt_tokens_details": {"cached_tokens": len(tokens) - n_eval}},
            {"prompt_n": n_eval, "prompt_ms": ms,
             "prompt_per_token_ms": ms / n_eval if n_eval else 0.0,
             "prompt_per_second": 1000 * n_eval / ms if ms > 0 and n_eval else 0.0,
             "predicted_n": 0, "predicted_ms": 0.0, "predicted_per_token_ms": 0.0,
             "predicted_per_second": 0.0, "cache_n": len(tokens) - n_eval, "queue_ms": queue_ms},
            stop_type="limit", truncated=infill.truncated,
            tokens_cached=self.core.target.n_past, prompt_text=self._spelled(tokens)))
        self.log(f"infill: cache warm-up, prompt {n_eval} of {len(tokens)} evaluated")

    def _spelled(self, tokens) -> str:
        target = self.core.target
        return "".join(target.token_text(t) for t in tokens)

    def _rules(self, job: Job):
        """The job's logit rules; 400 for a logit_bias token this vocabulary lacks."""
        rules = job.rules
        if rules is not None and rules.bias:
            n_vocab = self.core.gen.loaded.n_vocab
            bad = [t for t, _ in rules.bias if t >= n_vocab]
            if bad:
                raise bad_request(f"logit_bias: token {bad[0]} is not in the model's vocabulary "
                                  f"(0..{n_vocab - 1})", "logit_bias")
        return rules

    def _reference(self, job: Job) -> list[int] | None:
        """The tokens drafted from besides the context: the request's predicted output,
        and, when the reply is JSON (a schema, or tool calls), what it may copy in JSON's
        escaped spelling (conversation.json_echoes)."""
        from specli.conversation import json_echoes

        tokens = self.core.prediction_tokens(job.prediction) if job.prediction else []
        json_out = (job.tools and job.tool_choice != "none") or (
            job.grammar is not None and job.grammar.kind in ("json_schema", "json_object"))
        if json_out:
            echoes = json_echoes(job.messages, job.prompt)
            if echoes:
                tokens += self.core.prediction_tokens(echoes)
        return tokens or None

    def _tools_on(self, job: Job) -> str | None:
        """The template's tool-call format when the reply may call tools (then it is parsed
        for calls): "hermes" (Qwen2.5) or "llama3"; None when it may not."""
        if not job.tools or job.tool_choice == "none":
            return None
        return self.tools_format

    def _grammar(self, job: Job):
        """The job's grammar: its own (response_format, ...), or with tool_choice required
        or a named function, calls in the template's form (hermes blocks, or one Llama 3.x
        call) whose arguments validate against the tool's schema."""
        fmt = self._tools_on(job)
        if fmt is None or job.tool_choice == "auto":
            return job.grammar
        from specli.core.grammar import Grammar
        from specli.toolcalls import OPEN, grammar

        # Hermes tags are matched as the special tokens where the vocabulary has them (Qwen2.5)
        special = fmt == "hermes" and len(self.core.target.tokenize(OPEN, add_special=False)) == 1
        return Grammar.lark(grammar(list(job.tools), job.tool_choice, job.parallel_tool_calls,
                                    special=special, fmt=fmt), kind="tool_calls")

    def _prompt(self, job: Job):
        """The job's prompt tokens, and for fill-in-the-middle the fim.Infill they came
        from; 400 when the template fails, the model has no FIM tokens or it cannot fit."""
        from specli.conversation import raw_tokens
        from specli.fim import FimError, infill_tokens

        param = "messages" if job.kind == "chat" else "prompt"
        infill = None
        try:
            if job.infill is not None:
                f = job.infill
                param = "input_prefix" if f.native else "suffix"
                try:
                    infill = infill_tokens(self.core.target, f.prefix, f.suffix, f.extra, f.prompt)
                except FimError as e:
                    raise bad_request(str(e), param, code="fim_not_supported"
                                      if "not supported" in str(e) else None) from None
                tokens = infill.tokens
            elif job.kind == "chat":
                tools = None
                if job.tools:
                    if self.tools_format is None:
                        raise bad_request("tools: the model's chat template does not render "
                                          "tools (see `specli doctor` and models.toml)", "tools")
                    tools = [dict(t) for t in job.tools] if job.tool_choice != "none" else None
                with self.shared.lock:
                    messages = self.memory.annotate(job.messages)
                tokens = self.core.tokens(messages, tools)
            else:
                tokens = raw_tokens(self.core.target, job.prompt)
            self.core.check_fits(tokens)
        except ContextFullError as e:
            raise bad_request(f"{e} (the server's --ctx)", param,
                              code="context_length_exceeded") from None
        except SpecliError as e:  # a chat template that refuses this conversation
            raise bad_request(str(e), param) from None
        return tokens, infill

    def _generate(self, ticket: Ticket, reply, queue_ms: float, infill=None,
                  quiet: bool = False) -> Finished | None:
        """Run the reply, streaming its deltas to the ticket (none if `quiet`); the Finished
        (also put on the ticket unless quiet), or None when it failed or was cancelled."""
        job = ticket.job
        f = job.infill
        run = _Stream(job.stop, calls=self._tools_on(job),
                      names=[t["function"]["name"] for t in job.tools or ()],
                      predicted=job.prediction is not None,
                      n_indent=f.n_indent if f else 0,
                      t_max_predict_ms=f.t_max_predict_ms if f else 0, quiet=quiet)
        done = None
        try:
            with self.member():
                done, stopped = run.drive(reply, ticket)
        except Exception as e:  # noqa: BLE001 - any failure: resync caches, answer, keep serving
            reply.finish(None)
            if not isinstance(e, SpecliError):
                self.log("internal error:\n" + traceback.format_exc())
            ticket.put(Failed(internal(f"generation failed: {e}" if isinstance(e, SpecliError)
                                       else "internal error (see the server's log)")))
            return None
        if stopped is None:  # cancelled: the client is gone, or the server is stopping
            reply.finish(done)  # the cache keeps the prompt and what was generated of it
            if f is not None:  # a suggestion cut short by the next keystroke still helps
                with self.shared.lock:
                    self.suggestions.remember(job.client, *_before_cursor(f), "".join(run.sent))
            ticket.put(Failed(ticket.cancel_error or _cancelled()))
            return None
        finished = run.finished(done, stopped, reply, queue_ms)
        if f is not None:
            with self.shared.lock:
                self.suggestions.remember(job.client, *_before_cursor(f), finished.text or "")
            finished = dataclasses.replace(
                finished, truncated=infill.truncated, tokens_cached=self.core.target.n_past,
                prompt_text=self._spelled(infill.tokens), ignored_samplers=f.ignored_samplers)
        if not quiet:
            ticket.put(finished)  # answer first; the bookkeeping below delays only the next job
        reply.finish(done)
        if finished.tool_calls is None:  # a reply that called tools comes back as calls
            tokens = run.tokens_of(finished.text or "", done, stopped)
            if tokens:
                with self.shared.lock:
                    self.memory.remember(finished.text or "", tokens)
        self.log(_log_line(ticket.job, finished))
        return finished


class _Stream:
    """One generation's rounds -> text deltas, with stop strings and the round tally."""

    def __init__(self, stops, calls: str | None = None, names=(), predicted: bool = False,
                 n_indent: int = 0, t_max_predict_ms: int = 0, quiet: bool = False) -> None:
        from specli.fim import EditorStops

        self.predicted = predicted  # the request sent a prediction (usage reports on it)
        self.quiet = quiet  # collect only: put no deltas on the ticket
        self.stops = StopScanner(stops)
        editor = EditorStops(n_indent, t_max_predict_ms)
        self.editor = editor if editor.active else None  # an editor's stopping rules (fim.py)
        self.edited_sent = 0  # characters of the editor's text passed on
        self.t_first: float | None = None  # when the first round arrived
        self.tally = Tally()
        self.sent: list[str] = []  # the output's text as released (before tool-call parsing)
        self.n_sent = 0  # characters sent
        self.lp_sent = 0  # tokens whose logprobs were sent
        # Tools on: the released text is parsed for calls (toolcalls.CallStream) and sent
        # as content and tool-call deltas; the non-streamed answer reads the same parse.
        if calls:  # a Llama 3.x call has no tag to stream from: parsed when complete
            from specli.toolcalls import BufferedCalls, HermesCalls

            self.calls = (HermesCalls(names) if calls == "hermes" else BufferedCalls(calls))
        else:
            self.calls = None
        self.content: list[str] = []

    def drive(self, reply, ticket: Ticket):
        """Iterate the engine; returns (Done, how it stopped: "stop" | "engine" | None)."""
        from specli.core.engine import Done

        for ev in reply.events:
            if isinstance(ev, Done):
                tail = ev.text[self.tally.n_chars:]  # the detokenizer's tail
                if self.editor is not None:
                    self._edit(ticket, [tail] if tail else [], final=True)
                else:
                    self._send(ticket, tail)
                if self.stops.hit:
                    return ev, "stop"
                self._release(ticket, self.stops.flush())  # a held-back partial stop string
                self._close_calls(ticket)  # is text after all
                return ev, "engine"
            self.tally.add(ev)
            if self.editor is not None:
                self._edit(ticket, ev.pieces)
            else:
                self._send(ticket, ev.text)
            if self.stops.hit:
                self._close_calls(ticket)
                return reply.interrupt(), "stop"
            if self.editor is not None and self.editor.hit:
                self._release(ticket, self.stops.flush())
                return reply.interrupt(), "limit"
            if ticket.cancelled.is_set():
                return reply.interrupt(), None
        raise RuntimeError("the engine ended without a Done event")

    def _edit(self, ticket: Ticket, pieces, final: bool = False) -> None:
        """Tokens' texts through the editor's stops, passing on only what they can no longer
        cut (a line is held until its indentation is judged), all of it when `final`."""
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        editor = self.editor
        for piece in pieces:
            editor.feed(piece, 1000 * (now - self.t_first))
            if editor.hit:
                break
        upto = len(editor.text) if final or editor.hit else editor.safe
        if upto > self.edited_sent:
            self._send(ticket, editor.text[self.edited_sent:upto])
            self.edited_sent = upto

    def _send(self, ticket: Ticket, text: str) -> None:
        if self.stops.hit or not text:
            return
        self._release(ticket, self.stops.feed(text))

    def _release(self, ticket: Ticket, out: str) -> None:
        if out:
            self.sent.append(out)
            self.n_sent += len(out)
            lps = self._logprobs_upto(self.n_sent)
            if self.quiet:
                return
            if self.calls is None:
                ticket.put(Delta(out, lps))
            else:
                self._put_calls(ticket, self.calls.feed(out), lps)

    def _close_calls(self, ticket: Ticket) -> None:
        if self.calls is not None:
            self._put_calls(ticket, self.calls.close(), None)

    def _put_calls(self, ticket: Ticket, events, lps) -> None:
        """CallStream events as deltas: content, a call's head, its argument fragments."""
        from specli.toolcalls import CallStart, Content

        for ev in events:
            if isinstance(ev, Content):
                if ev.text:
                    self.content.append(ev.text)
                    ticket.put(Delta(ev.text, lps))
                    lps = None
            elif isinstance(ev, CallStart):
                ticket.put(Delta(None, tool_call={
                    "index": ev.index, "id": ev.id, "type": "function",
                    "function": {"name": ev.name, "arguments": ""}}))
            else:  # Arguments
                ticket.put(Delta(None, tool_call={"index": ev.index,
                                                  "function": {"arguments": ev.fragment}}))
        if lps:  # logprobs of tokens inside a call: sent with an empty content delta
            ticket.put(Delta("", lps))

    def _logprobs_upto(self, n_chars: int) -> tuple | None:
        """The logprobs of the tokens the first n_chars characters complete, not yet sent."""
        if self.tally.logprobs is None:
            return None
        n = self.tally.tokens_covering(n_chars)
        out = tuple(self.tally.logprobs[self.lp_sent : n])
        self.lp_sent = max(self.lp_sent, n)
        return out

    def finished(self, done, stopped: str, reply, queue_ms: float) -> Finished:
        from specli.server.responses import timings

        text = "".join(self.sent)
        reason = "stop" if stopped == "stop" or done.stop_reason == "eog" else "length"
        cut = stopped in ("stop", "limit")  # the text ends before the engine's output
        n_out = self.tally.tokens_covering(len(text)) if cut else len(done.tokens)
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": n_out,
                 "total_tokens": reply.prompt_tokens + n_out,
                 "prompt_tokens_details": {"cached_tokens": reply.prompt_reused}}
        counts = reply.prediction_counts
        if counts is not None and self.predicted:  # Predicted Outputs: drafted, kept, rejected
            usage["completion_tokens_details"] = {
                "accepted_prediction_tokens": counts[1],
                "rejected_prediction_tokens": counts[0] - counts[1]}
        lps = (tuple(self.tally.logprobs[: self.tally.tokens_covering(len(text))])
               if self.tally.logprobs is not None else None)
        calls = None
        if self.calls is not None:
            text = "".join(self.content).strip() or None
            calls = tuple(self.calls.calls) or None
            if calls and reason == "stop":
                reason = "tool_calls"
        stop_type = ("word" if stopped == "stop" else
                     "eos" if stopped == "engine" and done.stop_reason == "eog" else "limit")
        out_tokens = tuple(self.tally.tokens[:n_out]) if cut else tuple(done.tokens)
        t = timings(done.stats, reply, self.tally, queue_ms)
        if cut and n_out < t["predicted_n"]:  # tokens generated past a stop are not output
            t["predicted_n"] = n_out
            t["predicted_per_token_ms"] = t["predicted_ms"] / n_out if n_out else 0.0
            t["predicted_per_second"] = (1000 * n_out / t["predicted_ms"]
                                         if t["predicted_ms"] > 0 else 0.0)
        return Finished(text, reason, usage, t, lps, calls, stop_type=stop_type,
                        stopping_word=self.stops.word or "", tokens=out_tokens)

    def tokens_of(self, text: str, done, stopped: str) -> tuple[int, ...] | None:
        """The tokens generated as exactly `text`, when known (for the next request's prompt)."""
        if stopped != "stop":
            return tuple(done.tokens)
        n = self.tally.tokens_covering(len(text))
        return tuple(self.tally.tokens[:n]) if "".join(self.tally.pieces[:n]) == text else None


@dataclass
class Tally:
    """What the rounds did: K chosen per round, rounds by drafter, tokens and their text."""

    k_counts: Counter = field(default_factory=Counter)
    by_drafter: Counter = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    n_chars: int = 0  # of the pieces: Done.text is their join plus the detokenizer's tail
    logprobs: list | None = None  # engine.TokenLogprob per token, when the rounds carry them

    def add(self, rnd) -> None:
        self.k_counts[rnd.k] += 1
        self.by_drafter[rnd.drafter] += 1
        self.tokens.extend(rnd.tokens)
        self.pieces.extend(rnd.pieces)
        self.n_chars += sum(map(len, rnd.pieces))
        if rnd.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(rnd.logprobs)

    def tokens_covering(self, n_chars: int) -> int:
        """How many tokens it took to produce the first n_chars characters."""
        total = 0
        for i, piece in enumerate(self.pieces):
            if total >= n_chars:
                return i
            total += len(piece)
        return len(self.pieces)


class StopScanner:
    """Finds stop strings in streamed text, holding back a tail that may begin one.

    Invariant: no position in the text already released starts a stop string, because
    the longest suffix that is a prefix of some stop string is always held back.
    """

    def __init__(self, stops) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.hit = False
        self.word: str | None = None  # the stop string found

    def feed(self, text: str) -> str:
        """The text that is safe to send now; sets `hit` (and drops the rest) on a match."""
        buf = self.held + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            at = min(found)
            self.word = next(s for s in self.stops if buf.find(s) == at)
            self.hit, self.held = True, ""
            return buf[:at]
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:n])), default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


def _log_line(job: Job, f: Finished) -> str:
    t = f.timings
    return (f"{job.kind}: {f.usage['completion_tokens']} tokens, "
            f"{t['predicted_per_second']:.1f} tok/s, prompt {t['prompt_n']} of "
            f"{f.usage['prompt_tokens']} evaluated, accepted {t['draft_n_accepted']}/{t['draft_n']}, "
            f"finish {f.finish_reason}")


def stderr_log(message: str) -> None:
    """The server's log: one line per event on stderr."""
    print(f"specli serve: {message}", file=sys.stderr, flush=True)
