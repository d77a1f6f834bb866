"""The chat REPL: history, slash commands, and the live view of each reply.

What a reply does with the models (template, tokens, KV reuse between turns, trimming
the oldest turns when the conversation no longer fits) is the conversation core's
(specli.conversation), which the HTTP server reads too; this module reads and writes
around it. When the conversation no longer fits the context, the oldest turns leave the
context (the system prompt stays); the transcript keeps every message.

No typer here: the session reads lines through an injected `read(prompt) -> str`
(raising EOFError at the end and KeyboardInterrupt on Ctrl-C) and writes through two Rich
consoles, so tests drive it exactly as the terminal does.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from specli.chat.input import PROMPT, LineCancelled, read_message
from specli.chat.transcript import Transcript, save_transcript
from specli.config import SamplingConfig, SpecConfig, parse_k
from specli.conversation import Conversation, Turn
from specli.core.history import DraftHistory
from specli.errors import SpecliError, UsageError

SHOW_MODES = ("rejected", "accepted", "plain")

HELP = """\
/help             this list
/exit             leave (also Ctrl-D, or Ctrl-C at an empty prompt)
/reset            start a new conversation (keeps the system prompt)
/retry            regenerate the last reply
/k N|auto         draft tokens per round (0 = the target alone)
/temp X           sampling temperature (0 = greedy; also /temperature)
/seed N           random seed (each reply uses seed + its number)
/stats            this turn and the session: acceptance, tok/s, prompt tokens evaluated
/save FILE        write the conversation as JSON
/system [TEXT]    show or set the system prompt
/show MODE        rejected | accepted | plain
Multi-line input: end a line with \\ to continue it, or paste between two \"\"\" lines.
Start a message with // to send a line that begins with /."""
ALIASES = {"temperature": "temp", "t": "temp", "h": "help", "?": "help"}  # also understood



# --- statistics -------------------------------------------------------------------------
@dataclass
class Totals:
    turns: int = 0
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    prompt_evaluated: int = 0

    def add(self, turn: Turn) -> None:
        s = turn.stats
        self.turns += 1
        self.new_tokens += s.new_tokens
        self.drafted += s.drafted
        self.accepted += s.accepted
        self.decode_seconds += s.decode_seconds
        self.prompt_tokens += turn.prompt_tokens
        self.prompt_evaluated += turn.prompt_evaluated


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f} tok/s" if seconds > 0 else "- tok/s"


def _acceptance(accepted: int, drafted: int) -> str:
    return f"{100 * accepted / drafted:.0f}% ({accepted}/{drafted})" if drafted else "- (no drafts)"


def turn_line(turn: Turn) -> str:
    s = turn.stats
    draft = f", draft {turn.draft_evaluated}" if turn.draft_evaluated is not None else ""
    return (f"{s.new_tokens} tokens · {_rate(s.new_tokens, s.decode_seconds)} · accepted "
            f"{_acceptance(s.accepted, s.drafted)} · prompt tokens evaluated "
            f"{turn.prompt_evaluated} of {turn.prompt_tokens}{draft}")


def totals_line(t: Totals) -> str:
    return (f"{t.turns} replies · {t.new_tokens} tokens · {_rate(t.new_tokens, t.decode_seconds)} · "
            f"accepted {_acceptance(t.accepted, t.drafted)} · prompt tokens evaluated "
            f"{t.prompt_evaluated} of {t.prompt_tokens}")



# --- the session ------------------------------------------------------------------------
class ChatSession:
    """A conversation with a loaded pair (a session.Generation), one reply per turn."""

    def __init__(self, gen, *, out, err, system: str | None = None,
                 transcript: Transcript | None = None, save_path: Path | None = None,
                 show: str = "rejected", interactive: bool = True,
                 live_footer: bool = True, while_replying: Callable = nullcontext,
                 history: DraftHistory | None = None) -> None:
        self.gen, self.out, self.err = gen, out, err
        # template, tokens, KV reuse, trimming, K policies; and every reply of the session
        # drafted from (a /reset or /retry often repeats earlier text; in memory only
        # unless --draft-history gave a file)
        self.core = Conversation(gen, history=history if history is not None else DraftHistory())
        self.target = gen.loaded.target
        self._thread_changes_seen = 0  # of the thread governor's changes, already reported
        self.chat = transcript or Transcript()
        if system is not None:
            self.chat.system = system
        self.save_path = save_path
        self.show = show
        self.interactive = interactive
        self.live_footer = live_footer and interactive
        self.while_replying = while_replying  # e.g. no_echo(stdin): keys typed ahead stay off the live view
        self.sampling: SamplingConfig = gen.sampling
        self.spec: SpecConfig = gen.spec
        self.seed = gen.spec.seed
        self.n_replies = 0  # replies since the seed was set: reply i uses seed + i
        self.template = self.core.template
        if self.template.is_fallback:
            err.print("[yellow]warning:[/] the target has no chat template; using a plain "
                      "'User:/Assistant:' format (see README)")
        self.turns: list[Turn] = []
        self.totals = Totals()
        self.on_round: Callable | None = None  # called after each rendered round
        self.on_reply: Callable | None = None  # called with each finished reply's Done
        self.trace = False  # rounds carry verification detail (chat --html)

    # --- the loop ---------------------------------------------------------------------
    def run(self, read: Callable[[str], str]) -> None:
        """Read and answer until /exit, EOF, or Ctrl-C at an empty prompt; then summarize."""
        while True:
            try:
                text = read_message(read) if self.interactive else read(PROMPT)
            except LineCancelled:
                self.err.print("^C (line dropped)", style="dim")
                continue
            except (EOFError, KeyboardInterrupt):
                if self.interactive:
                    self.err.print()
                break
            try:
                if not self.handle(text):
                    break
            except KeyboardInterrupt:  # outside the reply loop (e.g. while saving): keep going
                self.err.print("\ninterrupted", style="yellow")
        self.summary()

    def handle(self, text: str) -> bool:
        """One complete input: a message or a slash command. False means exit."""
        if not text.strip():
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self.command(text)
        self.send(text[1:] if text.startswith("//") else text)
        return True

    def send(self, text: str) -> Turn | None:
        """Add a user message and answer it."""
        self.chat.messages.append({"role": "user", "content": text})
        return self.reply()

    # --- one reply --------------------------------------------------------------------
    def context(self) -> list[dict]:
        head = [{"role": "system", "content": self.chat.system}] if self.chat.system else []
        return head + [{"role": m["role"], "content": m["content"]}
                       for m in self.chat.messages[self.chat.start:]]

    def prompt_tokens(self) -> list[int]:
        return self.core.tokens(self._context_with_tokens(self.chat.start))

    def _context_with_tokens(self, start: int) -> list[dict]:
        """The system prompt and messages[start:], replies with the tokens they were generated as."""
        head = [{"role": "system", "content": self.chat.system}] if self.chat.system else []
        return head + self.chat.messages[start:]

    def fit(self) -> list[int] | None:
        """Tokens of the conversation, dropping the oldest turns until it fits with room to reply."""
        head = 1 if self.chat.system else 0
        fitted = self.core.fit(self._context_with_tokens(0), self.chat.start + head,
                               self.spec.max_tokens)
        self.chat.start = fitted.start - head
        if fitted.dropped:
            kept = " (the system prompt is kept)" if self.chat.system else ""
            self.err.print(f"[yellow]context full:[/] dropped the oldest {fitted.dropped} "
                           f"message{'s' if fitted.dropped > 1 else ''} from the context{kept}")
        n_ctx = self.target.n_ctx
        if len(fitted.tokens) >= n_ctx:
            self.err.print(f"[red]this message does not fit:[/] the prompt is {len(fitted.tokens)} "
                           f"tokens and the context {n_ctx} (raise --ctx); not sent")
            return None
        return fitted.tokens

    def reply(self) -> Turn | None:
        """Answer the conversation as it stands (its last message is the user's)."""
        try:
            tokens = self.fit()
        except SpecliError as e:  # e.g. a template that raises on this conversation
            self._error(e)
            tokens = None
        if tokens is None:
            self.chat.messages.pop()
            return None
        spec = replace(self.spec, seed=self.seed + self.n_replies)
        try:
            reply = self.core.reply(tokens, spec, self.sampling, trace=self.trace)
        except SpecliError as e:
            self._error(e)
            self.chat.messages.pop()
            return None
        self.n_replies += 1
        done = self._stream(reply, spec)
        self.out.file.flush()
        turn = reply.finish(done)  # keeps --k auto's costs; resyncs the caches after Ctrl-C
        if turn is None:  # an error in the engine, reported already
            self.chat.messages.pop()
            return None
        # The reply's own tokens are kept (in memory only) so that the next prompt holds
        # exactly what the models generated: re-tokenizing its text may split it otherwise.
        msg = {"role": "assistant", "content": done.text, "tokens": tuple(done.tokens)}
        if done.stop_reason == "interrupted":
            msg["interrupted"] = True
        self.chat.messages.append(msg)
        self.turns.append(turn)
        self.totals.add(turn)
        self._after_reply(done, turn)
        if self.on_reply is not None:
            self.on_reply(done)
        return turn

    def _stream(self, reply, spec):
        from specli.core.engine import Done
        from specli.views.render import LiveView

        mode = self.show if self.interactive and self.out.is_terminal else "plain"
        view = LiveView(self.out, mode=mode, k_label=str(spec.k), footer=self.live_footer)
        done, text = None, []
        try:
            with self.while_replying(), view:
                try:
                    for ev in reply.events:
                        if isinstance(ev, Done):
                            done = ev
                            break
                        text.append(ev.text)
                        view.round(ev)
                        if self.on_round is not None:
                            self.on_round(ev)
                except KeyboardInterrupt:
                    done = reply.interrupt()
        except SpecliError as e:
            self._error(e)
            return None
        if done is None:  # interrupted where the engine could not answer with a Done
            from specli.core.engine import Stats

            done = Done("interrupted", (), "".join(text), Stats(), "interrupted")
        return done

    def _after_reply(self, done, turn: Turn) -> None:
        if done.stop_reason == "interrupted":
            self.err.print("[yellow]\\[interrupted][/] the partial reply is kept in the history")
        elif done.stop_reason == "context_full":
            self.err.print("[yellow]context full:[/] the reply was cut; older turns will be "
                           "dropped next turn")
        elif done.stop_reason == "max_tokens" and self.interactive:
            self.err.print(f"[dim](stopped at --max-tokens {self.spec.max_tokens})[/]")
        if self.interactive:
            self.err.print(turn_line(turn), style="dim", highlight=False)
        self._thread_note()
        self.autosave()

    def _thread_note(self) -> None:
        """Say so when the governor changed the threads during this turn (specli/threads.py)."""
        from specli.llama.threads import thread_note

        gov = getattr(self.target, "governor", None)
        if gov is None:
            return
        note = thread_note(self.target, since=self._thread_changes_seen, during="this reply")
        self._thread_changes_seen = len(gov.changes)
        if note:
            self.err.print(note, style="yellow", highlight=False)

    # --- transcript -------------------------------------------------------------------
    def autosave(self) -> None:
        if self.save_path is not None:
            self._save(self.save_path, quiet=True)

    def _save(self, path: Path, quiet: bool = False) -> bool:
        try:
            save_transcript(path, self.chat)
        except OSError as e:
            self._error(f"cannot write {path}: {e.strerror or e}")
            return False
        if not quiet:
            self.err.print(f"saved {len(self.chat.messages)} messages to {path}", markup=False)
        return True

    def _error(self, message) -> None:
        from rich.text import Text

        self.err.print(Text.assemble(("error: ", "red"), str(message)))

    def summary(self) -> None:
        if not self.interactive:
            return
        self.err.print(f"session: {totals_line(self.totals)}", highlight=False)
        if self.save_path is not None and self.totals.turns:
            self.err.print(f"transcript: {self.save_path}", markup=False)

    # --- slash commands ---------------------------------------------------------------
    def command(self, text: str) -> bool:
        name, _, arg = text[1:].partition(" ")
        name, arg = name.strip().lower(), arg.strip()
        if name in ("exit", "quit", "q", "bye"):
            return False
        name = ALIASES.get(name, name)
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            self.err.print(f"unknown command /{name}; /help lists them", markup=False)
            return True
        try:
            handler(arg)
        except UsageError as e:
            self._error(e)
        return True

    def _cmd_help(self, arg: str) -> None:
        self.err.print(HELP, highlight=False, markup=False)

    def _cmd_reset(self, arg: str) -> None:
        self.chat.start = len(self.chat.messages)
        self.err.print("new conversation" + (" (system prompt kept)" if self.chat.system else ""))
        self.autosave()

    def _cmd_retry(self, arg: str) -> None:
        msgs = self.chat.messages[self.chat.start:]
        if not any(m["role"] == "user" for m in msgs):
            self.err.print("nothing to retry yet")
            return
        if msgs[-1]["role"] == "assistant":
            self.chat.messages.pop()
        self.reply()

    def _cmd_k(self, arg: str) -> None:
        if not arg:
            self.err.print(f"K = {self.spec.k}")
            return
        spec = replace(self.spec, k=parse_k(arg))
        self.core.drafter_policy(spec, self.sampling)  # fails here if no draft model is loaded
        self.spec = spec
        self.err.print(f"K = {spec.k}")

    def _cmd_temp(self, arg: str) -> None:
        if not arg:
            self.err.print(f"temperature = {self.sampling.temperature}")
            return
        try:
            value = float(arg)
        except ValueError:
            raise UsageError(f"/temp needs a number, got {arg!r}") from None
        self.sampling = replace(self.sampling, temperature=value)
        self.err.print(f"temperature = {value}" + (" (greedy)" if value == 0 else ""))

    def _cmd_seed(self, arg: str) -> None:
        if not arg:
            self.err.print(f"seed = {self.seed}")
            return
        try:
            seed = int(arg)
        except ValueError:
            raise UsageError(f"/seed needs an integer, got {arg!r}") from None
        if seed < 0:
            raise UsageError(f"/seed needs an integer >= 0, got {seed}")
        self.seed = seed
        self.n_replies = 0
        self.err.print(f"seed = {self.seed}")

    def _cmd_stats(self, arg: str) -> None:
        if not self.turns:
            self.err.print("no replies yet")
            return
        self.err.print(f"this turn: {turn_line(self.turns[-1])}", highlight=False)
        self.err.print(f"session:   {totals_line(self.totals)}", highlight=False)
        in_ctx = len(self.chat.messages) - self.chat.start
        self.err.print(f"context:   {self.target.n_past} of {self.target.n_ctx} tokens cached, "
                       f"{in_ctx} messages in context, {self.chat.start} dropped", highlight=False)

    def _cmd_save(self, arg: str) -> None:
        if not arg:
            raise UsageError("/save needs a file name")
        self._save(Path(arg).expanduser())

    def _cmd_system(self, arg: str) -> None:
        if not arg:
            self.err.print(f"system prompt: {self.chat.system!r}" if self.chat.system
                           else "no system prompt (the template's default applies)", markup=False)
            return
        self.chat.system = arg
        self.err.print("system prompt set")
        self.autosave()

    def _cmd_show(self, arg: str) -> None:
        if arg not in SHOW_MODES:
            raise UsageError(f"/show takes {', '.join(SHOW_MODES)}; got {arg!r}")
        self.show = arg
        self.err.print(f"show {arg}")

