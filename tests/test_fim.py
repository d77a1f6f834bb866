"""Fill-in-the-middle prompts (specli/fim.py) on real tiny GGUFs: the FIM tokens llama.cpp
finds, llama-server's layout and budgets, and the editors' stopping rules."""

from __future__ import annotations

import pytest

from specli.fim import Chunk, EditorStops, FimError, fim_tokens, infill_tokens
from specli.llama.backend import LlamaModel
from tinymodels import FIM_TOKENS, fim_id


@pytest.fixture(scope="module")
def fim_model(tiny_target_fim):
    m = LlamaModel(tiny_target_fim, n_ctx=2048, n_threads=1)
    yield m
    m.close()


def ids(text: str):
    return fim_id(text)


def test_fim_tokens_from_metadata_and_from_their_texts(fim_model):
    """pre/suf/mid are named in the metadata, pad/rep/sep only by their text: llama.cpp
    finds all six, and makes the pad/rep/sep tokens end a generation."""
    found = fim_tokens(fim_model)
    roles = ("pre", "suf", "mid", "pad", "rep", "sep")
    assert found == {r: fim_id(t) for r, t in zip(roles, FIM_TOKENS)}
    assert all(fim_model.is_eog(found[r]) for r in ("pad", "rep", "sep"))


def test_a_model_without_fim_tokens_is_refused_by_name(tiny_target):
    m = LlamaModel(tiny_target, n_ctx=256, n_threads=1)
    try:
        with pytest.raises(FimError, match="no prefix, suffix, middle token"):
            infill_tokens(m, "a", "b")
    finally:
        m.close()


def test_the_layout_is_llama_servers(fim_model):
    """[REP]myproject\\n [SEP]name\\n text ... [SEP]filename\\n [PRE]prefix prompt [SUF]suffix [MID]"""
    m = fim_model
    tok = lambda s: m.tokenize(s, add_special=False, parse_special=False)  # noqa: E731
    got = infill_tokens(m, "def f(x):\n", "\nprint(f(1))\n", [Chunk("import os\n", "a.py"),
                                                             Chunk("y = 2\n")], "    return")
    want = ([ids("<|repo_name|>"), *tok("myproject\n"),
             ids("<|file_sep|>"), *tok("a.py\n"), *tok("import os\n"),
             ids("<|file_sep|>"), *tok("tmp\n"), *tok("y = 2\n"),
             ids("<|file_sep|>"), *tok("filename\n"),
             ids("<|fim_prefix|>"), *tok("def f(x):\n"), *tok("    return"),
             ids("<|fim_suffix|>"), *tok("\nprint(f(1))\n"), ids("<|fim_middle|>")])
    assert got.tokens == want
    assert not got.truncated and got.left_out == []


def test_special_token_texts_in_code_stay_text_but_the_prompt_parses_them(fim_model):
    """Code that spells a FIM token is code (llama-server tokenizes the prefix, suffix and
    chunks without parsing specials); the `prompt` field is parsed, as there."""
    m = fim_model
    got = infill_tokens(m, "<|fim_middle|>", "", [Chunk("<|file_sep|>")]).tokens
    assert got.count(ids("<|fim_middle|>")) == 1 and got.count(ids("<|file_sep|>")) == 2
    assert infill_tokens(m, "", "", prompt="<|fim_pad|>").tokens.count(ids("<|fim_pad|>")) == 1


def test_budgets_keep_the_prefix_end_the_suffix_start_and_the_newest_chunks(fim_model):
    """n_batch 64: the prefix keeps its last 48 tokens, the suffix its first 16 - 2 - len(prompt),
    the extra chunks the end of n_ctx - n_batch + 2; what is cut goes to `left_out`."""
    m = fim_model
    tok = lambda s: m.tokenize(s, add_special=False, parse_special=False)  # noqa: E731
    prefix = "".join(f"a{i} = {i}\n" for i in range(40))
    suffix = "".join(f"b{i} = {i}\n" for i in range(40))
    chunks = [Chunk("".join(f"c{i}_{j} = 0\n" for j in range(30)), f"f{i}.py") for i in range(4)]
    got = infill_tokens(m, prefix, suffix, chunks, "x", n_batch=64, n_ctx=256)
    p, s = tok(prefix), tok(suffix)
    n_prompt = len(tok("x"))
    assert got.n_prefix == 48 and got.n_suffix == 16 - 2 - n_prompt
    pre_at = got.tokens.index(ids("<|fim_prefix|>"))
    assert got.tokens[pre_at + 1: pre_at + 49] == p[-48:]
    suf_at = got.tokens.index(ids("<|fim_suffix|>"))
    assert got.tokens[suf_at + 1: -1] == s[: got.n_suffix]
    # n_ctx - n_batch + 2, unless that overfills the context (llama-server's budgets can
    # by a few tokens when all are full): then as many as leave one token free.
    after = len(got.tokens) - pre_at
    assert got.n_extra == pre_at == min(256 - 64 + 2, 256 - 1 - after)
    assert got.truncated
    # The rest of the suffix first (what the middle meets), then the oldest chunk's start.
    assert got.left_out[: len(s) - got.n_suffix] == s[got.n_suffix:]
    assert got.left_out[len(s) - got.n_suffix] == ids("<|repo_name|>")


def test_extra_chunks_are_cut_further_to_leave_room(fim_model):
    m = fim_model
    chunks = [Chunk("z = 1\n" * 200, "big.py")]
    got = infill_tokens(m, "x", "y", chunks, n_batch=64, n_ctx=256, room=100)
    assert len(got.tokens) + 100 <= 256 and got.truncated


def feed_all(stops: EditorStops, pieces, elapsed=0.0) -> str:
    for piece in pieces:
        stops.feed(piece, elapsed)
        if stops.hit:
            break
    return stops.text


def test_n_indent_cuts_a_line_that_leaves_the_block_as_llama_server():
    """The line is judged two tokens after the newline that starts it; the cut keeps its
    indentation and drops the rest (the clients trim it)."""
    s = EditorStops(n_indent=4)
    assert feed_all(s, ["x = 1", "\n", "    ", "y", "\n", "z", " = ", "2"]) == "x = 1\n    y\n"
    assert s.hit
    s = EditorStops(n_indent=4)  # deep enough: never cut
    assert feed_all(s, ["a", "\n", "        b", "\n", "    c"]) == "a\n        b\n    c" and not s.hit
    s = EditorStops(n_indent=4)  # the first line is exempt, and an EOS right after a line
    assert feed_all(s, ["}", "\n}"]) == "}\n}" and not s.hit  # is never judged


def test_n_indent_holds_back_only_the_line_under_judgement():
    s = EditorStops(n_indent=2)
    s.feed("ab\n", 0)
    assert s.safe == 3  # the first line is final; the next one is not judged yet
    s.feed("  c", 0)
    assert s.safe == 3
    s.feed("d", 0)
    assert s.safe == len(s.text) == 7  # judged and kept: all final
    s.feed("\n", 0)
    assert s.safe == 8


def test_t_max_predict_ms_stops_at_a_newline_after_the_limit():
    s = EditorStops(t_max_predict_ms=100)
    s.feed("a\n", 50)
    assert not s.hit
    s.feed("b", 150)
    assert not s.hit  # no newline in it
    s.feed("c\nd", 160)
    assert s.hit and s.text == "a\nbc\nd"


def test_suggestions_predict_the_rest_of_what_the_user_is_typing():
    from specli.fim import Suggestions

    s = Suggestions(size=2)
    s.remember("vim", "def f(x):\n    ret", "\n", "urn x + 1")
    assert s.predict("vim", "def f(x):\n    retur", "\n") == "n x + 1"
    assert s.predict("vim", "def f(x):\n    ret", "\n") == "urn x + 1"
    assert s.predict("vim", "def f(x):\n    reta", "\n") is None  # typed something else
    assert s.predict("vim", "def f(x):\n    retur", "\nmore") is None  # the suffix changed
    assert s.predict("code", "def f(x):\n    retur", "\n") is None  # another client
    assert s.predict("vim", "def f(x):\n    return x + 1", "\n") is None  # all typed
    s.remember("a", "x", "", "y")
    s.remember("b", "x", "", "y")
    assert s.predict("vim", "def f(x):\n    retur", "\n") is None  # the oldest is dropped
    s.remember("c", ("tokens",), "", "y")  # a prefix given as tokens is not remembered


def llama_cpp_infill(model, ids, logits) -> list[int]:
    """The ids llama.cpp's own infill sampler keeps of these candidates (its C code)."""
    import ctypes

    import llama_cpp as lc

    n = len(ids)
    data = (lc.llama_token_data * n)(*[lc.llama_token_data(int(t), float(z), 0.0)
                                       for t, z in zip(ids, logits)])
    arr = lc.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    smpl = lc.llama_sampler_init_infill(model._vocab)
    try:
        lc.llama_sampler_apply(smpl, ctypes.byref(arr))
    finally:
        lc.llama_sampler_free(smpl)
    return sorted(int(data[i].id) for i in range(arr.size))


def test_the_infill_sampler_keeps_what_llama_cpps_keeps(fim_model):
    """Against llama.cpp's C implementation on 400 candidate sets drawn from the tiny
    vocabulary (byte tokens and the merges they begin, end-of-generation ids, flat and
    peaked rows): the same survivors, sampled by their own renormalised probabilities
    (llama.cpp's final dist re-reads the logits)."""
    import numpy as np

    from specli.core.sampling import InfillVocab, infill_filter

    m = fim_model
    vocab = InfillVocab(m)
    rng = np.random.default_rng(5)
    eogs = m.eog_tokens()
    branches = set()
    for trial in range(400):
        n = int(rng.integers(2, 40))
        pool = rng.choice(m.n_vocab, size=n, replace=False)
        if trial % 3 == 0:
            pool[0] = eogs[trial % len(eogs)]
        pool = np.unique(pool)
        scale = [0.3, 1.0, 3.0, 8.0][trial % 4]
        z = rng.standard_normal(len(pool)) * scale
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        got = infill_filter(pool.astype(np.int64), probs, vocab)
        want = llama_cpp_infill(m, pool, z)
        assert got.ids.tolist() == want, (trial, got.ids.tolist(), want)
        if len(want) > 1 or want[0] in pool:
            sub = probs[np.isin(pool, want)]
            np.testing.assert_allclose(got.probs, sub / sub.sum(), rtol=1e-9)
        branches.add("end" if all(vocab.is_eog(t) for t in want) else
                      "one" if len(want) == 1 else "several")
    assert branches == {"end", "one", "several"}
