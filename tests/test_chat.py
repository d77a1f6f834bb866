"""specli chat: the session driven through its input/output streams on the tiny models,
the command in a real pseudo-terminal, and two turns on the real pair."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_cli_run import default_sigint
from rich.console import Console

from specli.llama.backend import LlamaModel
from specli.chat import (ChatSession, LineCancelled, Transcript, load_transcript, read_message,
                         save_transcript)
from specli.cli.common import RichReporter
from specli.session import Generation
from specli.config import SamplingConfig, SpecConfig
from specli.errors import UsageError
from specli.session import Loaded, ModelPaths


# --- helpers ------------------------------------------------------------------------------
def console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, no_color=True, width=200,
                   highlight=False, soft_wrap=True)


def text_of(c: Console) -> str:
    return c.file.getvalue()


def script(*items):
    """A read(prompt) that returns the given lines; exceptions (classes) are raised; then EOF."""
    it = iter(items)

    def read(prompt: str) -> str:
        item = next(it, EOFError)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    return read


def lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def open_pair(target_path, draft_path, n_ctx=512) -> Loaded:
    t = LlamaModel(target_path, n_ctx=n_ctx, n_threads=1)
    d = LlamaModel(draft_path, n_ctx=n_ctx, n_threads=1) if draft_path else None
    return Loaded(t, d, min(t.n_vocab, d.n_vocab) if d else t.n_vocab)


@pytest.fixture(scope="module")
def loaded(tiny_target, tiny_draft):
    pair = open_pair(tiny_target, tiny_draft)
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def paths(tiny_target, tiny_draft):
    return ModelPaths(tiny_target, tiny_draft)


def make_session(loaded, paths, *, k=4, temperature=0.0, max_tokens=12, drafter="model",
                 interactive=True, **kw) -> ChatSession:
    err = console()
    gen = Generation(loaded, paths, SamplingConfig(temperature=temperature),
                     SpecConfig(k=k, max_tokens=max_tokens, seed=0, drafter=drafter), drafter,
                     RichReporter(err))
    return ChatSession(gen, out=console(), err=err, interactive=interactive, **kw)


# --- turns and prefix reuse -----------------------------------------------------------------
def test_turns_go_into_history_and_stream_to_out(loaded, paths):
    s = make_session(loaded, paths, system="You are terse.")
    s.run(script("Hello there", "Tell me more"))
    roles = [m["role"] for m in s.chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in s.chat.messages[::2]] == ["Hello there", "Tell me more"]
    out = text_of(s.out)
    for m in s.chat.messages[1::2]:
        assert m["content"] and m["content"].rstrip("\ufffd").strip() in out  # (an undecodable tail is not shown)
    assert s.context()[0] == {"role": "system", "content": "You are terse."}
    err = text_of(s.err)
    assert "session: 2 replies" in err and "prompt tokens evaluated" in err


def test_turn_two_evaluates_only_the_new_tokens(loaded, paths):
    s = make_session(loaded, paths, system="Answer briefly.")
    s.chat.messages.append({"role": "user", "content": "What is a fox?"})
    prompt1 = s.prompt_tokens()
    s.reply()
    reply1 = list(s.chat.messages[-1]["tokens"])
    assert reply1
    cached = list(loaded.target.tokens)
    models = (loaded.target, loaded.draft)
    saved = [s.core.prompt_states(m).saved for m in models]  # (turn 1 saved what an earlier test left)
    s.chat.messages.append({"role": "user", "content": "And a dog?"})
    prompt2 = s.prompt_tokens()
    turn = s.reply()
    # The second prompt repeats what the models saw and generated, token for token ...
    assert prompt2[: len(prompt1) + len(reply1)] == prompt1 + reply1
    # ... so everything cached is reused but (at most) the reply's pending last token.
    reused = lcp(cached, prompt2)
    assert reused >= len(prompt1) + len(reply1) - 1
    assert turn.prompt_tokens == len(prompt2)
    assert turn.prompt_evaluated == len(prompt2) - reused
    assert turn.prompt_evaluated <= len(prompt2) - len(prompt1) - len(reply1) + 1
    # The draft model catches up on the same tokens (one more after an all-accepted round).
    assert turn.draft_evaluated is not None
    assert turn.draft_evaluated <= turn.prompt_evaluated + 1
    assert s.totals.prompt_evaluated == s.turns[0].prompt_evaluated + turn.prompt_evaluated
    # A conversation that goes on never copies its KV state: it is saved only when a
    # prompt would discard it (a client switching conversations).
    assert [s.core.prompt_states(m).saved for m in models] == saved


def test_a_reply_that_retokenizes_differently_is_still_reused(loaded, paths):
    """Reply text need not round-trip through the tokenizer (here: random bytes from the tiny
    model); the prompt splices in the reply's own tokens, so the cache still matches."""
    s = make_session(loaded, paths, max_tokens=24)
    s.send("Hello there")
    reply = s.chat.messages[-1]
    assert loaded.target.tokenize(reply["content"], add_special=False) != list(reply["tokens"])
    s.chat.messages.append({"role": "user", "content": "Go on"})
    prompt2 = s.prompt_tokens()
    turn = s.reply()
    assert turn.prompt_evaluated <= len(prompt2) - s.turns[0].prompt_tokens - len(reply["tokens"]) + 1


# --- slash commands ------------------------------------------------------------------------
def test_slash_commands(loaded, paths, tmp_path):
    s = make_session(loaded, paths)
    saved = tmp_path / "now.json"
    s.run(script("/help", "/k 2", "/temperature 0.3", "/temp 0.7", "/seed 5", "/show accepted", "/system Be brief.",
                 "/bogus", "/[/]", "/k 99", "/temp hot", "/seed -3", "/show [/fancy]", "Hello", "/stats", "/retry",
                 f"/save {saved}", "/reset", "/stats", "/exit", "never sent"))
    err = text_of(s.err)
    assert "/retry" in err and "Multi-line input" in err  # /help
    assert "temperature = 0.3" in err  # /temperature: the long name of /temp
    assert s.spec.k == 2 and s.sampling.temperature == 0.7 and s.seed == 5
    assert s.show == "accepted" and s.chat.system == "Be brief."
    assert "unknown command /bogus" in err and "unknown command /[/]" in err  # not markup
    assert err.count("error:") == 4  # /k 99, /temp hot, /seed -3, /show [/fancy]: told, not fatal
    assert "/seed needs an integer >= 0, got -3" in err
    assert "got '[/fancy]'" in err
    assert "this turn:" in err and "prompt tokens evaluated" in err and "context:" in err
    assert len(s.turns) == 2  # Hello, then /retry
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant"]
    assert s.chat.start == 2 and s.context() == [{"role": "system", "content": "Be brief."}]
    assert all(m["content"] != "never sent" for m in s.chat.messages)  # /exit stopped the loop
    assert "session: 2 replies" in err


def test_retry_replaces_the_last_reply(loaded, paths):
    s = make_session(loaded, paths)  # greedy: the same reply again
    s.send("Once upon a time")
    first = dict(s.chat.messages[-1])
    s.handle("/retry")
    assert len(s.chat.messages) == 2
    assert s.chat.messages[-1]["content"] == first["content"]
    assert len(s.turns) == 2
    # Nothing was new but the pending token: the whole prompt came from the cache.
    assert s.turns[-1].prompt_evaluated == 1


def test_retry_without_a_message_says_so(loaded, paths):
    s = make_session(loaded, paths)
    s.handle("/retry")
    assert "nothing to retry" in text_of(s.err) and not s.turns


def test_temperature_and_k_change_between_turns(loaded, paths):
    s = make_session(loaded, paths, temperature=0.0)
    s.send("Hello")
    s.handle("/temp 0.9")  # the draft's q must now be sampled at the same temperature
    s.handle("/k 0")
    s.send("Again")
    s.handle("/k 3")
    s.send("And again")
    s.handle("/temp 0")
    s.send("Once more")
    assert [t.stop_reason for t in s.turns].count("interrupted") == 0
    assert len(s.turns) == 4 and s.turns[1].stats.drafted == 0
    assert s.turns[2].stats.drafted > 0 and s.turns[3].stats.drafted > 0


def test_k_needs_a_draft_model_when_drafting_with_the_model(tiny_target, paths):
    pair = open_pair(tiny_target, None)
    try:
        s = make_session(pair, ModelPaths(tiny_target, None), k=0)
        s.handle("/k 4")
        assert "needs a draft model" in text_of(s.err) and s.spec.k == 0
        s.send("Hello")  # still works, target alone
        assert s.turns[-1].stats.new_tokens > 0
    finally:
        pair.close()


def test_seed_makes_sampled_replies_reproducible(loaded, paths):
    a = make_session(loaded, paths, temperature=0.9, max_tokens=10)
    b = make_session(loaded, paths, temperature=0.9, max_tokens=10)
    a.run(script("/seed 7", "Hello", "Again"))
    b.run(script("/seed 7", "Hello", "Again"))
    assert [m["content"] for m in a.chat.messages] == [m["content"] for m in b.chat.messages]


def test_double_slash_sends_a_message_starting_with_a_slash(loaded, paths):
    s = make_session(loaded, paths)
    s.handle("//etc/hosts is a file")
    assert s.chat.messages[0]["content"] == "/etc/hosts is a file"


# --- input ---------------------------------------------------------------------------------
def test_multiline_input():
    assert read_message(script("first \\", "second\\", "third")) == "first \nsecond\nthird"
    assert read_message(script('"""', "a", "", "  b", '"""')) == "a\n\n  b"
    assert read_message(script('"""start', "end\"\"\"")) == "start\nend"
    assert read_message(script('"""one line"""')) == "one line"
    assert read_message(script('"""', "unterminated")) == "unterminated"  # EOF ends the block
    assert read_message(script("plain")) == "plain"


def test_ctrl_c_on_a_continuation_line_drops_the_input_only(loaded, paths):
    s = make_session(loaded, paths)
    s.run(script('"""', "half a block", KeyboardInterrupt, "line \\", KeyboardInterrupt, "Hello"))
    assert [m["content"] for m in s.chat.messages[::2]] == ["Hello"]
    assert text_of(s.err).count("line dropped") == 2


def test_template_fallback_warns_and_chats(tiny_target_notemplate, tiny_draft):
    pair = open_pair(tiny_target_notemplate, tiny_draft)
    try:
        s = make_session(pair, ModelPaths(tiny_target_notemplate, tiny_draft), system="Be brief.")
        assert "no chat template" in text_of(s.err)
        s.run(script("Hello", "Again"))
        # The fallback renders an earlier reply as "Assistant: " + text, while the model saw
        # "Assistant:" then its tokens: the prefix is reused up to there.
        first, second = s.turns
        assert second.prompt_evaluated <= second.prompt_tokens - first.prompt_tokens + 1
        text = s.template.render(s.context())
        assert text.startswith("Be brief.\n\nUser: Hello\nAssistant:")
    finally:
        pair.close()


def test_multiline_message_reaches_the_history(loaded, paths):
    s = make_session(loaded, paths)
    s.run(script('"""', "def f():", "    return 1", '"""', "line one \\", "line two"))
    assert [m["content"] for m in s.chat.messages[::2]] == ["def f():\n    return 1",
                                                           "line one \nline two"]


def test_piped_mode_reads_one_message_per_line(loaded, paths):
    s = make_session(loaded, paths, interactive=False)
    s.run(script("first \\", '"""', "/stats"))
    assert [m["content"] for m in s.chat.messages[::2]] == ["first \\", '"""']
    err = text_of(s.err)
    assert "this turn:" in err  # /stats answers, on stderr
    assert "session: 2 replies" not in err  # but no exit summary when scripted


# --- interrupts -----------------------------------------------------------------------------
def test_ctrl_c_or_ctrl_d_at_an_empty_prompt_exits_with_a_summary(loaded, paths):
    for key in (KeyboardInterrupt, EOFError):
        s = make_session(loaded, paths)
        s.run(script("Hello", key, "never read"))
        assert len(s.turns) == 1
        assert "session: 1 replies" in text_of(s.err)


def test_ctrl_c_on_a_typed_line_drops_the_line_only(loaded, paths):
    s = make_session(loaded, paths)
    s.run(script(LineCancelled, "Hello"))
    assert len(s.turns) == 1 and "line dropped" in text_of(s.err)


def test_ctrl_c_mid_reply_keeps_the_partial_reply_marked(loaded, paths):
    s = make_session(loaded, paths, max_tokens=40)
    shown = []

    def interrupt_on_second_round(rnd):
        shown.append(rnd.text)
        if len(shown) == 2:
            raise KeyboardInterrupt

    s.on_round = interrupt_on_second_round
    s.send("Hello there")
    msg = s.chat.messages[-1]
    assert msg["interrupted"] is True and s.turns[-1].stop_reason == "interrupted"
    assert msg["content"] == "".join(shown)
    assert "[interrupted]" in text_of(s.err)
    # The session goes on, reusing the cache up to the partial reply.
    s.on_round = None
    cached = list(loaded.target.tokens)
    s.chat.messages.append({"role": "user", "content": "Continue"})
    prompt2 = s.prompt_tokens()
    turn = s.reply()
    assert turn.stop_reason != "interrupted"
    assert turn.prompt_evaluated == len(prompt2) - lcp(cached, prompt2)
    # (after Ctrl-C the last cached token is given up: see the next test)
    assert lcp(cached, prompt2) >= s.turns[0].prompt_tokens + len(msg["tokens"]) - 2


@pytest.mark.parametrize("which, nth", [("target", 4), ("draft", 12)])
def test_ctrl_c_right_after_a_llama_decode_does_not_break_the_next_turn(loaded, paths,
                                                                         monkeypatch, which, nth):
    """Ctrl-C during llama_decode raises as the call returns, before the backend counts the
    tokens: the KV cache then holds cells past n_past. The next turn must still decode."""
    s = make_session(loaded, paths, max_tokens=40)
    model = getattr(loaded, which)
    real = model.decode
    calls = []

    def decode(tokens, n_logits=1):
        calls.append(1)
        rows = real(tokens, n_logits)
        if len(calls) == nth:  # a few rounds in
            del model.tokens[len(model.tokens) - len(tokens):]  # decoded, but not recorded
            raise KeyboardInterrupt
        return rows

    monkeypatch.setattr(model, "decode", decode)
    s.run(script("Hello there", "Next", "And next"))
    err = text_of(s.err)
    assert "error" not in err, err
    assert s.chat.messages[1]["interrupted"] is True and s.chat.messages[1]["content"]
    assert [m.get("interrupted") for m in s.chat.messages[3::2]] == [None, None]
    assert s.turns[1].stats.new_tokens > 0


# --- overflow -------------------------------------------------------------------------------
def test_overflow_drops_the_oldest_turns_and_keeps_the_system_prompt(tiny_target, tiny_draft):
    pair = open_pair(tiny_target, tiny_draft, n_ctx=256)
    try:
        s = make_session(pair, ModelPaths(tiny_target, tiny_draft), max_tokens=16,
                         system="You are a terse assistant.")
        n_ctx = pair.target.n_ctx  # llama.cpp rounds up to a multiple of 256
        words = "the quick brown fox jumps over the lazy dog " * max(1, n_ctx // 60)
        for i in range(8):
            s.send(f"{i}: {words}")
            assert len(s.prompt_tokens()) <= n_ctx
        assert len(s.turns) == 8
        err = text_of(s.err)
        assert "dropped the oldest" in err and "system prompt is kept" in err
        assert s.chat.start > 0 and len(s.chat.messages) == 16  # the transcript keeps all
        assert s.context()[0]["role"] == "system"
        assert s.context()[1]["role"] == "user"
        # A message that cannot fit at all is refused, and the session goes on.
        s.send("word " * (2 * n_ctx))
        assert "does not fit" in text_of(s.err) and len(s.chat.messages) == 16
        s.send("short")
        assert len(s.turns) == 9
    finally:
        pair.close()


# --- transcripts ----------------------------------------------------------------------------
def test_save_and_load_round_trip(loaded, paths, tmp_path):
    path = tmp_path / "talk.json"
    s = make_session(loaded, paths, system="Sys.", save_path=path)
    s.send("Hello")
    assert json.loads(path.read_text())["messages"][-1]["role"] == "assistant"  # after each turn
    s.on_round = lambda rnd: (_ for _ in ()).throw(KeyboardInterrupt)
    s.send("Go on")
    s.on_round = None
    assert sorted(os.listdir(tmp_path)) == ["talk.json"]  # no temp file left behind

    t = load_transcript(path)
    assert t.system == "Sys."
    assert t.messages == [{k: v for k, v in m.items() if k != "tokens"} for m in s.chat.messages]
    assert t.messages[-1]["interrupted"] is True

    resumed = make_session(loaded, paths, transcript=t)
    assert resumed.context() == s.context()
    resumed.send("Third")
    assert len(resumed.chat.messages) == 6
    assert resumed.turns[0].prompt_tokens > s.turns[-1].prompt_tokens  # the old turns are in it


def test_context_start_survives_a_round_trip(tmp_path):
    t = Transcript("S", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}], start=2)
    save_transcript(tmp_path / "t.json", t)
    assert load_transcript(tmp_path / "t.json") == t


def test_load_accepts_a_bare_message_list(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]))
    t = load_transcript(p)
    assert t.system == "S" and t.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("content, needle", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"messages": 3}', "no 'messages' list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "needs a role"),
    ('[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]', "only the first"),
])
def test_load_errors_are_usage_errors(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UsageError, match=needle):
        load_transcript(p)


def test_save_to_a_missing_directory_is_reported_not_fatal(loaded, paths, tmp_path):
    s = make_session(loaded, paths)
    s.send("Hello")
    s.handle(f"/save {tmp_path / 'no' / 'such' / 'dir.json'}")
    assert "cannot write" in text_of(s.err)


# --- the command, as a person runs it ---------------------------------------------------------
def specli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "specli", *map(str, args)]


def test_piped_stdin_one_message_per_line(tiny_target, tiny_draft, tmp_path):
    save = tmp_path / "piped.json"
    r = subprocess.run(specli_cmd("chat", "--target", tiny_target, "--draft", tiny_draft,
                                  "--threads", "1", "--temperature", "0", "-n", "8",
                                  "--save", save),
                       input="Hello there\n/stats\n\nTell me more\n", capture_output=True,
                       text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "prompt tokens evaluated" in r.stderr and ">>>" not in r.stdout
    data = json.loads(save.read_text())
    assert [m["content"] for m in data["messages"][::2]] == ["Hello there", "Tell me more"]
    for m in data["messages"][1::2]:
        assert m["content"].rstrip("\ufffd").strip() in r.stdout


def test_missing_transcript_is_a_usage_error(tiny_target, tiny_draft, tmp_path):
    r = subprocess.run(specli_cmd("chat", "--target", tiny_target, "--draft", tiny_draft,
                                  "--load", tmp_path / "nope.json"),
                       input="", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("specli: error: transcript not found")


def test_chat_in_a_pseudo_terminal(tiny_target, tiny_draft, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    save = tmp_path / "pty.json"
    child = pexpect.spawn(sys.executable, ["-m", "specli", "chat", "--target", str(tiny_target),
                                           "--draft", str(tiny_draft), "--threads", "1",
                                           "--temperature", "0", "-n", "10", "--save", str(save)],
                          encoding="utf-8", timeout=60, dimensions=(40, 120),
                          preexec_fn=default_sigint)
    try:
        child.expect("specli chat")
        child.expect_exact(">>> ")
        child.sendline("Hello there")
        child.expect("prompt tokens evaluated")
        child.expect_exact(">>> ")
        child.sendline('"""')
        child.expect_exact("... ")
        child.sendline("two")
        child.sendline('lines"""')
        child.expect_exact(">>> ")
        child.sendline("/stats")
        child.expect("this turn:")
        child.expect_exact(">>> ")
        child.send("half typed")
        child.expect_exact("half typed")  # echoed: readline holds it
        child.sendintr()  # Ctrl-C on a typed line drops the line
        child.expect("line dropped")
        child.expect_exact(">>> ")
        child.sendintr()  # Ctrl-C at an empty prompt exits
        child.expect("session: 2 replies")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    data = json.loads(save.read_text())
    assert [m["content"] for m in data["messages"][::2]] == ["Hello there", "two\nlines"]


# --- the real pair ----------------------------------------------------------------------------
NEAR_TIE = 0.1  # as in test_real_pair: batch-size numerics may flip argmax at a near-tie


@pytest.fixture(scope="module")
def real_loaded(real_pair):
    draft_path, target_path = real_pair
    t = LlamaModel(target_path, n_ctx=1024)
    d = LlamaModel(draft_path, n_ctx=1024)
    pair = Loaded(t, d, min(t.n_vocab, d.n_vocab))
    yield pair, ModelPaths(target_path, draft_path)
    pair.close()


def test_real_pair_two_turns(real_loaded):
    from specli.core.engine import speculative_generate

    loaded, paths = real_loaded
    s = make_session(loaded, paths, max_tokens=32)
    s.send("Write a Python function that adds two numbers. Code only.")
    cached = list(loaded.target.tokens)
    s.chat.messages.append({"role": "user", "content": "Now make it multiply instead."})
    prompt2 = s.prompt_tokens()
    turn = s.reply()
    first = s.turns[0]
    reply1 = s.chat.messages[1]["tokens"]
    assert lcp(cached, prompt2) >= first.prompt_tokens + len(reply1) - 1
    assert turn.prompt_evaluated == len(prompt2) - lcp(cached, prompt2)
    assert turn.prompt_evaluated < len(prompt2) - first.prompt_tokens - len(reply1) + 2
    assert turn.stats.drafted > 0
    # Greedy: the same reply as the target alone on the same prompt (or a near-tie split).
    *_, base = speculative_generate(loaded.target, None, prompt2, SamplingConfig(temperature=0.0),
                                    SpecConfig(k=0, max_tokens=32))
    spec_tokens = s.chat.messages[-1]["tokens"]
    if tuple(base.tokens) != tuple(spec_tokens):
        i = lcp(base.tokens, spec_tokens)
        loaded.target.reset()
        row = loaded.target.decode(prompt2 + list(base.tokens[:i]), 1)[0]
        a, b = np.sort(row)[-2:]
        assert b - a < NEAR_TIE, f"split at {i} is not a near-tie (gap {b - a:.3f})"


def test_real_pair_ctrl_c_mid_reply_in_a_pseudo_terminal(real_pair, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    draft, target = real_pair
    save = tmp_path / "real.json"
    child = pexpect.spawn(sys.executable, ["-m", "specli", "chat", "--target", str(target),
                                           "--draft", str(draft), "--temperature", "0",
                                           "-n", "60", "--ctx", "2048", "--save", str(save)],
                          encoding="utf-8", timeout=120, dimensions=(40, 120),
                          env={**os.environ, "NO_COLOR": "1"}, preexec_fn=default_sigint)
    try:
        child.expect_exact(">>> ")
        child.sendline("Write a long tutorial on sorting algorithms in Python.")
        child.expect(r"[1-9]\d* tokens · ")  # the live footer: the reply is streaming
        child.sendintr()
        child.expect_exact("[interrupted]")
        child.expect_exact(">>> ")
        child.sendline("Thanks. Stop there.")  # the session goes on after the interrupt
        child.expect(r"prompt tokens evaluated (\d+) of (\d+)")
        evaluated, total = map(int, child.match.groups())
        assert evaluated < total // 2  # the interrupted turn's tokens are reused
        child.expect_exact(">>> ")
        child.sendline("/stats")
        child.expect("this turn:")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect("session: 2 replies")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    data = json.loads(save.read_text())
    assert data["messages"][1]["interrupted"] is True and data["messages"][1]["content"]
    assert "error" not in child.before


def test_each_reply_starts_from_the_match_priors(loaded, paths, monkeypatch):
    """The conversation core keeps one --k auto policy per setting across replies; each
    reply resets its n-gram match acceptance (costs carry over), see NgramPolicy.new_reply."""
    from specli.core.policy import AutoK

    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    calls = []
    monkeypatch.setattr(AutoK, "new_reply", lambda self: calls.append(self))
    s = make_session(loaded, paths, k="auto", drafter="auto")
    s.core.drafter_policy(s.gen.spec, s.gen.sampling)
    s.core.drafter_policy(s.gen.spec, s.gen.sampling)
    assert len(calls) == 2 and calls[0] is calls[1]  # the same policy, reset before each reply


def test_warm_up_decodes_nothing_and_the_first_reply_uses_its_policy(loaded, paths, monkeypatch):
    """The server warms the core before it says ready: template compiled, default policy
    made (read from the cost cache), and the KV caches untouched."""
    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    s = make_session(loaded, paths, k="auto", drafter="auto")
    for m in (loaded.target, loaded.draft):
        m.truncate(0)
    s.core.warm_up()
    assert loaded.target.n_past == 0 and loaded.draft.n_past == 0
    assert "_compiled" in vars(s.core.template)  # compiled once, now
    (warmed,) = s.core._policies.values()
    _, policy = s.core.drafter_policy(s.gen.spec, s.gen.sampling)
    assert policy is warmed


@pytest.mark.parametrize("drafter", ["ngram", "auto"])
def test_a_prediction_is_drafted_from_and_changes_nothing(loaded, paths, drafter, monkeypatch):
    """The conversation core drafts from a predicted output: the reply it predicts right
    is accepted nearly whole, a wrong one costs rounds only; the tokens never change."""
    import dataclasses

    from specli.core.engine import Done

    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    s = make_session(loaded, paths, k=4, drafter=drafter, max_tokens=48)
    s.core.history = None  # the prediction alone: earlier replies would draft these too
    prompt = s.core.tokens([{"role": "user", "content": "Hello, world! How are you today?"}])

    def run(prediction, k):
        spec = dataclasses.replace(s.gen.spec, k=k, strict=True)
        reply = s.core.reply(list(prompt), spec, s.gen.sampling, drafter, prediction=prediction)
        done = next(ev for ev in reply.events if isinstance(ev, Done))
        reply.finish(done)
        return list(done.tokens), done.stats, reply.prediction_counts

    out, _, counts = run(None, 0)
    assert counts is None and len(out) > 16
    got, stats, (drafted, accepted) = run(out, 4)
    assert got == out
    assert accepted >= drafted - 4  # every draft kept (but where max_tokens cut the last)
    assert stats.rounds <= len(out) // 5 + 2  # K = 4 accepted and the bonus token, per round
    wrong = [(t + 7) % loaded.n_vocab for t in out]
    got, stats, (drafted, accepted) = run(wrong, 4)
    assert got == out and drafted >= 4 and accepted <= 2
    assert run(None, 4)[2] is None  # the next reply without one drafts from the context only


def test_a_retry_drafts_the_reply_it_replaces_from_the_session_history(loaded, paths,
                                                                       monkeypatch):
    """The REPL keeps a draft history of its replies (on by default, read under --k auto):
    /retry at temperature 0 drafts the reply it regenerates from the first one, and gets
    it again."""
    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    s = make_session(loaded, paths, k="auto", drafter="ngram", max_tokens=32)
    s.send("Hello, world! How are you today?")
    first = s.chat.messages[-1]["tokens"]
    assert len(s.core.history) == 1 and s.core._ngram.history_drafted == 0
    s.handle("/retry")
    assert s.chat.messages[-1]["tokens"] == first
    assert s.core._ngram.history_accepted >= len(first) // 3
    assert len(s.core.history) == 1  # the same request and reply: stored once
