"""Fill-in-the-middle prompts: the code before and after a cursor -> the target's FIM tokens.

The layout and budgets are llama-server's (`format_prompt_infill`, tools/server), so a
request gets the prompt it would get there, token for token, and the same greedy text:

    [FIM_REP]myproject\\n [FIM_SEP]file\\n chunk ... [FIM_SEP]filename\\n      (input_extra)
    [BOS?] [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]                (then generate)

This is Qwen2.5-Coder's repo-level format; a model with FIM_PRE/SUF/MID but no FIM_SEP
gets its extra chunks after a plain "--- snippet ---" line. The prefix keeps its last
3/4 of a batch, the suffix its first 1/4 (less the prompt), the extra chunks the end of
what is left of the context. What is cut from the suffix and the extra chunks is
returned too: the n-gram drafter drafts from it (it is text the middle may copy).

Also here: the stopping rules editors ask for (llama-server's `n_indent` and
`t_max_predict_ms`), as a pure scanner over the generated text. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from specli.errors import SpecliError

REPO_NAME = "myproject"  # llama-server's repository name (it takes none from the request)
CURRENT_FILE = "filename"  # ... and its name for the file being edited
DEFAULT_CHUNK_NAME = "tmp"  # an extra chunk without a filename
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"  # between chunks, for models without FIM_SEP
REQUIRED = ("pre", "suf", "mid")
ROLE_NAMES = {"pre": "prefix", "suf": "suffix", "mid": "middle"}


class FimError(SpecliError):
    """The model cannot fill in the middle (no FIM tokens), or the input is malformed."""


@dataclass(frozen=True)
class Chunk:
    """Another file's text (or part of it) the completion may draw on: `input_extra`."""

    text: str
    filename: str = DEFAULT_CHUNK_NAME


@dataclass(frozen=True)
class Infill:
    """A FIM prompt: its tokens, whether any input was cut to fit, and the cut tokens."""

    tokens: list[int]
    truncated: bool  # part of the prefix, suffix or extra chunks did not fit
    n_prefix: int  # prefix tokens kept (of the prefix, not the prompt)
    n_suffix: int  # suffix tokens kept
    n_extra: int  # extra-context tokens kept
    left_out: list[int] = field(default_factory=list)  # cut suffix and extra tokens


def fim_tokens(model) -> dict[str, int]:
    """The model's FIM token ids; FimError naming what is missing when it cannot infill."""
    found = model.fim_tokens()
    missing = [ROLE_NAMES[r] for r in REQUIRED if r not in found]
    if missing:
        raise FimError("fill-in-the-middle is not supported by this model: its vocabulary has "
                       f"no {', '.join(missing)} token (tokenizer.ggml.fim_*_token_id); "
                       "use a code model trained for it, such as Qwen2.5-Coder")
    return found


def _text_tokens(model, value, what: str) -> list[int]:
    """A string, or llama-server's mixed list of strings and token ids, as tokens."""
    if isinstance(value, str):
        return model.tokenize(value, add_special=False, parse_special=False)
    out: list[int] = []
    for i, part in enumerate(value):
        if isinstance(part, str):
            out += model.tokenize(part, add_special=False, parse_special=False)
        elif isinstance(part, int) and not isinstance(part, bool) and 0 <= part < model.n_vocab:
            out.append(part)
        else:
            raise FimError(f"{what}[{i}]: a string or a token id of this model, got {part!r}")
    return out


def infill_tokens(model, prefix, suffix, extra: Sequence[Chunk] = (), prompt: str = "", *,
                  n_batch: int | None = None, n_ctx: int | None = None,
                  n_predict: int = -1, room: int = 1) -> Infill:
    """The FIM prompt for a cursor between `prefix` and `suffix` (llama-server's layout).

    `prompt`: text typed after the prefix (editors send the cursor line's start here);
    its special tokens are parsed, as llama-server does. `extra`: chunks of other files.
    `n_batch`, `n_ctx`: the budgets' sizes (default: the model's); `n_predict`: the
    server's generation limit (-1: none), which the extra chunks leave room for;
    `room`: tokens the prompt must leave free in the context (beyond llama-server's
    budgets, which can overfill it by a few tokens, extra chunks are cut further).
    """
    fim = fim_tokens(model)
    n_batch = n_batch or model.n_batch
    n_ctx = n_ctx or model.n_ctx
    pre_toks = _text_tokens(model, prefix, "input_prefix")
    suf_toks = _text_tokens(model, suffix, "input_suffix")
    prompt_toks = model.tokenize(prompt, add_special=False, parse_special=True) if prompt else []

    extra_toks: list[int] = []
    if "rep" in fim:
        extra_toks += [fim["rep"], *model.tokenize(REPO_NAME + "\n", add_special=False,
                                                   parse_special=False)]
    for chunk in extra:
        if "sep" in fim:
            extra_toks += [fim["sep"], *model.tokenize(chunk.filename + "\n", add_special=False,
                                                       parse_special=False)]
        else:
            extra_toks += model.tokenize(SNIPPET_SEPARATOR, add_special=False, parse_special=False)
        extra_toks += model.tokenize(chunk.text, add_special=False, parse_special=False)
    if "sep" in fim:
        extra_toks += [fim["sep"], *model.tokenize(CURRENT_FILE + "\n", add_special=False,
                                                   parse_special=False)]

    n_prefix = min(len(pre_toks), 3 * (n_batch // 4))
    n_suffix = min(len(suf_toks), max(0, n_batch // 4 - (2 + len(prompt_toks))))
    head = [fim["pre"], *pre_toks[len(pre_toks) - n_prefix:], *prompt_toks]
    tail = [fim["suf"], *suf_toks[:n_suffix]]
    if model.adds_bos:
        head.insert(0, model.bos)
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra_toks),
                  max(0, n_ctx - room - len(head) - len(tail) - 1))
    kept_extra = extra_toks[len(extra_toks) - n_extra:] if n_extra else []
    tokens = [*kept_extra, *head, *tail, fim["mid"]]
    # The rest of the suffix first: what follows the cursor is what the middle meets.
    left_out = suf_toks[n_suffix:] + extra_toks[: len(extra_toks) - n_extra]
    truncated = n_prefix < len(pre_toks) or bool(left_out)
    return Infill(tokens, truncated, n_prefix, n_suffix, n_extra, left_out)


class EditorStops:
    """llama-server's stopping rules for code completion, fed one token's text at a time.

    `n_indent`: a line (after the first) whose first non-blank character has fewer than
    n_indent spaces/tabs before it ends the completion, cut just before that character
    (the completion has left the block it was in). `t_max_predict_ms`: a token holding a
    newline, generated after that many milliseconds of generation, ends it (newline kept).
    Mirrored from llama-server's process_token step by step, including when a line is
    looked at (two tokens after the newline that starts it), so that the same tokens
    give the same text.
    """

    def __init__(self, n_indent: int = 0, t_max_predict_ms: int = 0) -> None:
        self.n_indent, self.t_max_predict_ms = n_indent, t_max_predict_ms
        self.text = ""  # what was generated so far (cut where a rule ended it)
        self.has_new_line = False
        self.last_nl_pos = 0
        self.approved = 0  # start of the last line whose indentation was judged (or the first)
        self.hit = False

    @property
    def active(self) -> bool:
        return self.n_indent > 0 or self.t_max_predict_ms > 0

    @property
    def safe(self) -> int:
        """How much of the text no rule can cut any more: up to the end of the last line
        judged (a later line may still be cut where its first character is)."""
        if self.n_indent <= 0 or self.hit:
            return len(self.text)
        nl = self.text.find("\n", self.approved)
        return nl + 1 if nl >= 0 else len(self.text)

    def feed(self, piece: str, elapsed_ms: float) -> int:
        """One token's text; returns how many characters of the text so far are kept
        (less than before when a rule cut the current line). Sets `hit` when it ends."""
        self.text += piece
        if self.has_new_line and self.n_indent > 0:
            text, pos = self.text, self.last_nl_pos
            if pos > 0:
                while pos < len(text) and text[pos] in " \t":
                    pos += 1
                if pos < len(text):
                    if pos - self.last_nl_pos < self.n_indent:
                        self.hit = True
                        self.text = text[:pos]
                        return len(self.text)
                    self.approved = self.last_nl_pos
            nl = text.find("\n", self.last_nl_pos)
            if nl >= 0:
                self.last_nl_pos = nl + 1
        if "\n" in piece:
            self.has_new_line = True
            if self.t_max_predict_ms > 0 and elapsed_ms > self.t_max_predict_ms:
                self.hit = True
        return len(self.text)


class Suggestions:
    """Each client's last completion, to draft its next one from.

    An editor asks again as the user types: when what was typed since is the start of
    the last suggestion, the new completion is most likely the rest of it, so that rest
    is drafted from (as a predicted output: it changes how fast, never what). Bounded:
    the most recent `size` clients.
    """

    def __init__(self, size: int = 16) -> None:
        from collections import OrderedDict

        self.size = size
        self._last: OrderedDict = OrderedDict()  # client -> (text before cursor, suffix, completion)

    def remember(self, client, before: str, suffix, text: str) -> None:
        if client is None or not isinstance(before, str):
            return
        self._last[client] = (before, suffix, text)
        self._last.move_to_end(client)
        while len(self._last) > self.size:
            self._last.popitem(last=False)

    def predict(self, client, before: str, suffix) -> str | None:
        """The rest of the client's last suggestion after what was typed since, if the
        text after the cursor is unchanged and the typing followed the suggestion."""
        last = self._last.get(client) if isinstance(before, str) else None
        if last is None:
            return None
        old_before, old_suffix, text = last
        if suffix != old_suffix or not before.startswith(old_before):
            return None
        typed = before[len(old_before):]
        if not text.startswith(typed):
            return None
        return text[len(typed):] or None
