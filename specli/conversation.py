"""The conversation core: messages -> chat template -> tokens -> engine, reusing the KV caches.

Read by the chat REPL (specli.chat) and the HTTP server (specli.server) alike; both only
read and write around it. Each reply renders the whole conversation with the target's
chat template and tokenizes it once, with the target's tokenizer. Both models keep their
KV caches between replies and `reuse_prefix` keeps the longest common prefix, so only the
tokens after it are decoded, even when the template re-renders earlier turns differently.
An assistant message may carry the `tokens` it was generated as: they are spliced into
the prompt, so the prompt repeats exactly what is in the caches. When a conversation no
longer fits the context, `fit` drops the oldest turns (system messages stay).

Nothing here prints or imports the engine's readers; errors are SpecliErrors.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from specli.config import PROMPT_CACHE_BYTES, SamplingConfig, SpecConfig
from specli.errors import ContextFullError, SpecliError

MAX_POLICIES = 32  # K policies kept (one per K and sampling setting), oldest dropped first
# A prediction is indexed as if it followed the prompt's last tokens, so that the first
# round already drafts its start.
PREDICTION_ANCHOR = 8


# --- prompt tokens ----------------------------------------------------------------------
def tokenize_conversation(model, template, messages: Sequence[dict],
                          tools: Sequence[dict] | None = None) -> list[int]:
    """Render and tokenize `messages`, splicing in the generated tokens of earlier replies.

    A message with a non-empty `tokens` entry (a reply the models generated) is rendered
    as a placeholder; the text between placeholders is tokenized on its own and the
    reply's own tokens go in between, so the prompt repeats what is in the KV caches. If
    the template alters the content (trims it, drops old turns' reasoning...), the
    placeholders do not survive intact and the whole text is tokenized as usual.
    `tools`: tool definitions the template lists (messages may then carry tool_calls, and
    tool results their tool_call_id).
    """
    from specli.prompt import tokenize_chat

    plain_msgs = [{k: v for k, v in m.items() if k != "tokens"} for m in messages]
    marks = {i: f"\x00specli-reply-{i}\x00" for i, m in enumerate(messages) if m.get("tokens")}
    if not marks:
        return tokenize_chat(model, template, plain_msgs, tools=tools)
    marked = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(plain_msgs)]
    text = template.render(marked, tools=tools)
    plain = template.render(plain_msgs, tools=tools)
    pieces, order, rest = [], [], text
    for i, mark in marks.items():
        before, found, rest = rest.partition(mark)
        if not found:
            break
        pieces.append(before)
        order.append(i)
    restored = "".join(p + plain_msgs[i]["content"] for p, i in zip(pieces, order)) + rest
    if len(order) != len(marks) or restored != plain:
        return tokenize_chat(model, template, plain_msgs, tools=tools)
    add_bos = model.adds_bos and not (template.bos_token and text.startswith(template.bos_token))
    tokens: list[int] = []
    for n, (piece, i) in enumerate(zip(pieces, order)):
        tokens += model.tokenize(piece, add_special=add_bos and n == 0, parse_special=True)
        tokens += messages[i]["tokens"]
    return tokens + model.tokenize(rest, add_special=False, parse_special=True)


def json_echoes(messages: Sequence[dict], prompt: str = "") -> str:
    """What a JSON reply (a tool call's arguments, a schema's strings) is likely to copy,
    spelled as it would be inside a JSON string: the tool results and the last user
    message (or a raw prompt), escaped as json.dumps writes them, one per line. A file a
    tool returned is copied into write_file's "content" with its newlines as \\n and its
    quotes as \\": the lookup over the prompt itself misses those. Drafted from as a
    prediction (measured on an agent's write turn, Qwen2.5-Coder 1.5B, 2 cores, forced
    call: 24.6 tok/s from the prompt alone, 33.7 with these; K = 0 16.2)."""
    import json

    texts = [m["content"] for m in messages if m.get("role") == "tool" and m.get("content")]
    users = [m["content"] for m in messages if m.get("role") == "user" and m.get("content")]
    texts += users[-1:] or ([prompt] if prompt else [])
    return "\n".join(json.dumps(t, ensure_ascii=False)[1:-1] for t in texts)


def raw_tokens(model, text: str) -> list[int]:
    """A prompt fed as is, without the chat template (as `run --raw` feeds it)."""
    from specli.prompt import build_prompt

    return build_prompt(model, text, raw=True)[0]


# --- one reply --------------------------------------------------------------------------
@dataclass
class Turn:
    """What one reply cost. prompt_evaluated counts the prompt tokens the target decoded."""

    prompt_tokens: int
    prompt_evaluated: int
    draft_evaluated: int | None  # None when no draft model ran this turn
    stop_reason: str
    stats: object  # engine.Stats


@dataclass
class Fitted:
    """A conversation's prompt after trimming: its tokens and the first message kept."""

    tokens: list[int]
    start: int  # index of the first non-system message still in the context
    dropped: int  # messages dropped by this fit


class Reply:
    """One generation over a prompt: the engine's events, and the bookkeeping around them.

    Iterate `events` (Round events, then a Done); `interrupt()` ends the stream early
    with a Done; `finish(done)` must follow, whatever happened: it keeps --k auto's
    measured costs, leaves both KV caches consistent for the next reply, and adds the
    prompt and the reply to the conversation's draft history (when there is a Done).
    """

    def __init__(self, conv: "Conversation", tokens: list[int], spec: SpecConfig,
                 sampling: SamplingConfig, drafter_name: str | None = None,
                 trace: bool = False, prediction: Sequence[int] | None = None,
                 rules=None, logprobs: int | None = None, grammar=None,
                 anchored: bool = True, history_key: str | None = None) -> None:
        drafter, self.policy = conv.drafter_policy(
            spec, sampling, drafter_name, prediction=prediction,
            anchor=tokens[-PREDICTION_ANCHOR:] if anchored else (), history_key=history_key)
        # The n-gram drafter holds this reply's prediction and history, if it drafts from
        # them (auto or ngram, K > 0: drafter_policy sets or clears both for every reply).
        ngram = conv._ngram
        self._reference = ngram if ngram is not None and ngram.reference is not None else None
        self._history = ngram if ngram is not None and ngram.history is not None else None
        self._prompt, self._history_key = tuple(tokens), history_key  # its document's start
        # --strict: batch-invariant verify calls. First: measuring them may use the target.
        if spec.strict and spec.k != 0:
            conv.gen.verify_chunk()
        self.conv, self.prompt_tokens = conv, len(tokens)
        target = conv.target
        # A saved state of an earlier prompt may share more with this one than the live
        # cache does (a client alternating between conversations): start from it.
        t0 = time.perf_counter()
        self.restored = conv.prompt_states(target).prepare(target, tokens)
        # Keep the longest cached prefix now, to count what is evaluated; the engine's own
        # reuse_prefix then finds nothing more to drop.
        self.prompt_evaluated = len(tokens) - target.reuse_prefix(tokens)
        self.draft_model = drafter.draft_model if drafter is not None else None
        if self.draft_model is not None:
            conv.prompt_states(self.draft_model).prepare(self.draft_model, tokens)
        self.restore_seconds = time.perf_counter() - t0  # part of the prompt's time
        self._draft_reused = (self.draft_model.reuse_prefix(tokens)
                              if self.draft_model is not None else 0)
        self.events = conv.gen.generate(tokens, spec=spec, sampling=sampling, trace=trace,
                                        drafter=drafter, policy=self.policy, remember=False,
                                        rules=rules, logprobs=logprobs, grammar=grammar)

    @property
    def draft_evaluated(self) -> int | None:
        """Prompt tokens the draft model decoded for this reply so far (None: no draft).

        The hybrid drafter decodes the prompt in the draft only when it first drafts with
        it, so a reply that never did reports 0, not the prompt it might have decoded."""
        if self.draft_model is None:
            return None
        return max(0, min(self.draft_model.n_past, self.prompt_tokens) - self._draft_reused)

    @property
    def prediction_counts(self) -> tuple[int, int] | None:
        """(tokens drafted from the request's prediction, of which accepted); None when
        there was no prediction or nothing drafts from it (K = 0, the model drafter)."""
        if self._reference is None:
            return None
        return self._reference.reference_drafted, self._reference.reference_accepted

    @property
    def history_counts(self) -> tuple[int, int] | None:
        """(tokens drafted from earlier requests, of which accepted); None when nothing
        drafts from a history this reply (no history, K = 0, the model drafter)."""
        if self._history is None:
            return None
        return self._history.history_drafted, self._history.history_accepted

    @property
    def prompt_reused(self) -> int:
        """Prompt tokens the target took from its cache instead of decoding them."""
        return self.prompt_tokens - self.prompt_evaluated

    def interrupt(self):
        """Stop between rounds: the engine ends its stream with Done("interrupted")."""
        return _throw_interrupt(self.events)

    def finish(self, done) -> Turn | None:
        """After the stream: remember costs, resync the caches, add the reply to the draft
        history; the Turn (None if no Done: a failed reply is not added)."""
        if self.policy is not None:
            self.conv.gen.remember(self.policy)  # --k auto: what this reply measured, for the next
        if done is None or done.stop_reason == "interrupted":
            for model in (self.conv.target, self.draft_model):
                _drop_uncounted_cells(model)
        # The caches now hold this reply. It is saved only when a later prompt would discard
        # it (PromptStates.prepare): a conversation that goes on, the common case, never
        # pays for a copy of itself.
        if done is None:
            return None
        if self.conv.history is not None:  # an interrupted reply's tokens are real output too
            self.conv.history.add(self._history_key, [*self._prompt, *done.tokens])
        return Turn(self.prompt_tokens, self.prompt_evaluated, self.draft_evaluated,
                    done.stop_reason, done.stats)


class Conversation:
    """A loaded pair (a session.Generation) answering conversations, one reply at a time.

    Holds what carries over between replies: the chat template and, per K and sampling
    setting, the --k auto policy with what it measured. The KV caches live in the models.
    """

    def __init__(self, gen, state_bytes: int = PROMPT_CACHE_BYTES, history=None) -> None:
        """state_bytes: memory for saved prompt states per model (0: none kept);
        history: a core.history.DraftHistory every finished reply is added to and the
        n-gram drafters draft from (shared by conversations: a server's slots), or None."""
        from specli.prompt import ChatTemplate

        self.gen = gen
        self.state_bytes = state_bytes
        self.history = history
        self.target = gen.loaded.target
        self.template = ChatTemplate.of(self.target)
        self._policies: dict = {}  # --k auto keeps what it measured across replies
        self._ngram = None  # one n-gram index for every reply (see drafter_policy)
        self._states: dict[int, object] = {}  # per model: saved prompt states (promptcache)

    def warm_up(self) -> None:
        """Do now the one-time work of the first reply, so that it is as quick as the next:
        compile the chat template, import the engine, and make the default K policy (which
        reads the remembered costs). Measured on the default pair: 75 ms off the first
        request of a server (20 ms template, 20 ms policy, the rest imports)."""
        import specli.core.engine  # noqa: F401

        try:
            self.tokens([{"role": "user", "content": "Hi"}])
        except SpecliError:
            pass  # a template that refuses this conversation will say so on a real one
        self.drafter_policy(self.gen.spec, self.gen.sampling)

    def prompt_states(self, model):
        """The saved KV states of recent prompts for `model` (target or draft)."""
        from specli.promptcache import PromptStates

        states = self._states.get(id(model))
        if states is None:
            states = self._states[id(model)] = PromptStates(max_bytes=self.state_bytes)
        return states

    def tokens(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[int]:
        """The prompt of `messages` (dicts with role, content, and maybe the reply's tokens;
        tool calls and results too), with `tools` listed where the template puts them."""
        return tokenize_conversation(self.target, self.template, messages, tools)

    def fit(self, messages: Sequence[dict], start: int, max_tokens: int) -> Fitted:
        """The prompt of messages[start:] (system messages always kept), dropping the
        oldest turns until it fits with room to reply. A conversation that cannot fit
        even with one user message left is returned as is: check it with `check_fits`."""
        n_ctx = self.target.n_ctx
        room = min(max_tokens, n_ctx // 4)
        first = start
        tokens = self.tokens(_in_context(messages, start))
        while len(tokens) + room > n_ctx:
            nxt = next((i for i in range(start + 1, len(messages))
                        if messages[i]["role"] == "user"), None)
            if nxt is None:
                break
            start = nxt
            tokens = self.tokens(_in_context(messages, start))
        dropped = sum(1 for m in messages[first:start] if m["role"] != "system")
        return Fitted(tokens, start, dropped)

    def check_fits(self, tokens: Sequence[int]) -> None:
        """ContextFullError when a prompt leaves no room for a single new token."""
        n_ctx = self.target.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextFullError(f"the prompt is {len(tokens)} tokens and the context "
                                   f"{n_ctx}; it does not fit")

    def reply(self, tokens: list[int], spec: SpecConfig, sampling: SamplingConfig,
              drafter_name: str | None = None, trace: bool = False,
              prediction: Sequence[int] | None = None, rules=None,
              logprobs: int | None = None, grammar=None, anchored: bool = True,
              history_key: str | None = None) -> Reply:
        """Start generating the reply to `tokens` (see Reply for the protocol).

        `drafter_name` (model, ngram, auto) defaults to the loaded pair's own setting;
        `trace`: rounds carry what verification saw (for --html); `prediction`: tokens the
        reply is expected to repeat (the server's `prediction` field), drafted from by the
        n-gram and auto drafters; `rules`: a core.logits.LogitRules the reply is sampled
        under (logit bias, penalties); `logprobs`: rounds carry each token's log-probability
        and this many alternatives; `grammar`: a core.grammar.Grammar the reply keeps to;
        `anchored`: the prediction may follow the prompt directly (False: it is only text
        the reply may copy from, such as the code a fill-in-the-middle prompt left out);
        `history_key`: the partition of the history this reply drafts from and is added to
        (the request's API key; None: the keyless one).
        Drafts never change what is sampled, only how fast.
        """
        return Reply(self, tokens, spec, sampling, drafter_name, trace, prediction, rules,
                     logprobs, grammar, anchored, history_key)

    def prefill(self, tokens: list[int]) -> tuple[int, float]:
        """Evaluate a prompt into the target's cache without generating (an editor's cache
        warm-up): (tokens evaluated, seconds). A later prompt sharing its start reuses it."""
        target = self.target
        t0 = time.perf_counter()
        self.prompt_states(target).prepare(target, tokens)
        n = target.reuse_prefix(tokens)
        if n < len(tokens):
            target.decode(tokens[n:], n_logits=0)
        return len(tokens) - n, time.perf_counter() - t0

    def prediction_tokens(self, text: str) -> list[int]:
        """A predicted output's tokens: plain text, as the reply would spell it (no more
        than a context's worth: a reply cannot be longer)."""
        n_ctx = self.target.n_ctx
        return self.target.tokenize(text[: 16 * n_ctx], add_special=False,
                                    parse_special=False)[:n_ctx]

    def drafter_policy(self, spec: SpecConfig, sampling: SamplingConfig,
                       drafter_name: str | None = None, prediction: Sequence[int] | None = None,
                       anchor: Sequence[int] = (), history_key: str | None = None):
        """The drafter for this reply, warping exactly as the target does (same sampling).

        The model drafter is made afresh (its KV state lives in the draft model); the n-gram
        index carries over: at prefill it keeps the prefix the new prompt shares with what
        it indexed and indexes the rest, so after a retry, a reset or trimming it is never
        stale, and a growing conversation is not re-indexed from its start every reply.
        The history, if any, is read under `history_key` (a request may not see another
        API key's requests).
        """
        if self._ngram is not None:
            self._ngram.set_reference(None)  # a prediction is one reply's only
            self._ngram.set_history(None)  # and so is the key it may read the history under
        if spec.k == 0:
            return None, None
        from specli.core.drafters import NgramDrafter, drafter_kind

        name = drafter_name or self.gen.drafter_name
        if self._ngram is None:
            self._ngram = NgramDrafter()
        if prediction and drafter_kind(name).lookup:
            self._ngram.set_reference(prediction, anchor)
        # Only under --k auto, which adapts to what it measured anyway: with a fixed K the
        # drafts, and so a sampled reply for a given seed, depend on the request alone
        # (the same request and seed sent twice gives the same text).
        if self.history is not None and drafter_kind(name).lookup and spec.k == "auto":
            self._ngram.set_history(self.history, history_key)
        drafter = self.gen.drafter(sampling, name, ngram=self._ngram)
        key = (spec.k, spec.k_max, name, sampling)
        if key not in self._policies:
            self._policies[key] = self.gen.policy(spec)  # --k auto: remembered costs
            while len(self._policies) > MAX_POLICIES:  # a server sees any number of settings
                self._policies.pop(next(iter(self._policies)))
        policy = self._policies[key]
        policy.new_reply()  # --k auto: costs carry over, n-gram acceptance does not
        # ... except that of drafts from the history, shared by every reply drafting from it
        policy.price_history(self._ngram.history.acceptance_for(sampling)
                             if self._ngram.history is not None else None)
        return drafter, policy


def _in_context(messages: Sequence[dict], start: int) -> list[dict]:
    """System messages before `start` stay; other messages before it have left the context."""
    return [m for i, m in enumerate(messages) if i >= start or m["role"] == "system"]


class ReplyMemory:
    """The tokens of recent replies, by their text, for clients that re-send the history.

    An HTTP client sends an earlier reply back as text; re-tokenizing it may split it
    differently from how it was generated, which would end the cached prefix there.
    Looking the text up here gives back the generated tokens. Bounded (oldest first out).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._tokens: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def remember(self, text: str, tokens: Sequence[int]) -> None:
        if not text or not tokens:
            return
        self._tokens[text] = tuple(tokens)
        self._tokens.move_to_end(text)
        while len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def annotate(self, messages: Sequence[dict]) -> list[dict]:
        """`messages` with each assistant reply remembered here given its `tokens`."""
        out = []
        for m in messages:
            tokens = (self._tokens.get(m["content"]) if m["role"] == "assistant"
                      and not m.get("tool_calls") else None)
            out.append(dict(m, tokens=tokens) if tokens else m)
        return out


# --- KV bookkeeping after an interrupt ----------------------------------------------------
def _drop_uncounted_cells(model) -> None:
    """After an interrupt, make the KV cache hold exactly `model.tokens` again.

    A Ctrl-C during llama_decode raises as soon as the call returns, before the backend
    records the tokens: the cache then holds cells past n_past, and the next decode at
    n_past fails. truncate(n) clears every cell >= n, so giving up the last counted token
    (decoded again next turn) clears those too.
    """
    if model is not None and model.n_past > 0:
        model.truncate(model.n_past - 1)


def _throw_interrupt(events):
    """End the engine's stream from outside it (Ctrl-C while rendering, a client gone)."""
    try:
        return events.throw(KeyboardInterrupt)
    except (KeyboardInterrupt, StopIteration):
        return None
