"""The suite's tiny GGUF models load in real llama.cpp and behave as the tests need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymodels import CHATML_TEMPLATE, IM_END, N_VOCAB_PADDING, special_id

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The quick brown fox"
N_GREEDY = 64


def load(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, logits_all=False)


def last_logits(llm) -> np.ndarray:
    # Llama.scores stays empty without logits_all, so read llama.cpp's own buffer.
    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).astype(np.float64)  # [V]


def greedy_run(llm, prompt: str, n: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens after `prompt` (end-of-generation ignored) and the logits before each."""
    llm.reset()
    llm.eval(llm.tokenize(prompt.encode(), add_bos=False, special=False))
    tokens, rows = [], []
    for _ in range(n):
        row = last_logits(llm)
        tokens.append(int(np.argmax(row)))
        rows.append(row)
        llm.eval([tokens[-1]])
    return tokens, rows


def token_texts(llm) -> list[bytes]:
    return [llm.detokenize([i], special=True) for i in range(llm.n_vocab())]


@pytest.fixture(scope="module")
def target(tiny_target: Path):
    return load(tiny_target)


@pytest.fixture(scope="module")
def draft(tiny_draft: Path):
    return load(tiny_draft)


def test_target_greedy_text_is_varied(target) -> None:
    tokens, _ = greedy_run(target, PROMPT, N_GREEDY)
    assert len(set(tokens)) >= 8


def test_target_sampling_distribution_is_spread_out(target) -> None:
    _, rows = greedy_run(target, PROMPT, 16)
    for row in rows:
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        assert probs.max() < 0.9
        assert np.count_nonzero(probs > 1e-3) >= 10


def test_draft_agrees_with_target_mostly_but_not_always(target, draft) -> None:
    # Teacher forcing on the target's greedy continuation: the draft predicts the
    # target's next token from the same context, as in speculative decoding.
    tokens, target_rows = greedy_run(target, PROMPT, N_GREEDY)
    draft.reset()
    draft.eval(draft.tokenize(PROMPT.encode(), add_bos=False, special=False))
    agree = 0
    for token in tokens:
        agree += int(np.argmax(last_logits(draft))) == token
        draft.eval([token])
    rate = agree / len(tokens)
    assert 0.5 <= rate < 1.0, rate


def test_models_share_the_special_tokens(target, draft) -> None:
    assert target.n_vocab() == draft.n_vocab()
    assert target.token_eos() == draft.token_eos() == special_id(IM_END)
    assert target.tokenize(b"<|im_start|>user", add_bos=False, special=True)[0] == special_id("<|im_start|>")


def test_padded_draft_extends_the_vocabulary(target, tiny_draft_padded: Path) -> None:
    padded = load(tiny_draft_padded)
    assert padded.n_vocab() == target.n_vocab() + N_VOCAB_PADDING
    assert token_texts(padded)[: target.n_vocab()] == token_texts(target)


def test_padded_draft_shares_the_drafts_logits_on_shared_ids(draft, tiny_draft_padded: Path) -> None:
    padded = load(tiny_draft_padded)
    for llm in (draft, padded):
        llm.reset()
        llm.eval(llm.tokenize(PROMPT.encode(), add_bos=False, special=False))
    n = draft.n_vocab()
    np.testing.assert_allclose(last_logits(padded)[:n], last_logits(draft), rtol=1e-4, atol=1e-4)


def test_mismatch_draft_has_different_token_texts(target, tiny_draft_mismatch: Path) -> None:
    mismatch = load(tiny_draft_mismatch)
    assert mismatch.n_vocab() == target.n_vocab()
    differing = [a != b for a, b in zip(token_texts(mismatch), token_texts(target))]
    assert 0 < sum(differing) < len(differing)


def test_chat_template_present_or_absent(target, tiny_target_notemplate: Path) -> None:
    assert target.metadata.get("tokenizer.chat_template") == CHATML_TEMPLATE
    plain = load(tiny_target_notemplate)
    assert "tokenizer.chat_template" not in plain.metadata


def test_chat_template_renders_to_chatml_tokens(target) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(CHATML_TEMPLATE, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    prompt = formatter(messages=[{"role": "user", "content": "hi"}]).prompt
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tokens = target.tokenize(prompt.encode(), add_bos=False, special=True)
    assert tokens.count(special_id(IM_END)) == 1
    assert target.detokenize(tokens, special=True).decode() == prompt


def test_config_dir_is_isolated(isolated_config: Path) -> None:
    import os

    assert os.environ["XDG_CONFIG_HOME"] == str(isolated_config)
    assert "SPECLI_MODELS" not in os.environ


@pytest.mark.real
def test_real_pair_is_found_in_the_hub_cache(real_pair: tuple[Path, Path]) -> None:
    draft, target = real_pair
    assert draft.name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" and draft.is_file()
    assert target.name == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and target.is_file()
