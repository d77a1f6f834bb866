"""Shared fixtures: tiny real GGUF models, an isolated config dir, the real pair."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: CI cannot flake on a rare draw.
settings.register_profile("specli", derandomize=True, deadline=None)
settings.load_profile("specli")

from tinymodels import (
    CHATML_TEMPLATE, LLAMA3_TOOLS_TEMPLATE, N_VOCAB_PADDING, TOOLS_TEMPLATE, swapped_token_texts,
    write_tiny_model,
)

TARGET_SEED = 0
DRAFT_SEED = 1

REAL_DRAFT = (
    "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "ebb2015119c907b064c512bf053e945850b5875f",
)
REAL_TARGET = (
    "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "f86cb2c1fa58255f8052cc32aeede1b7482d4361",
)


@pytest.fixture(autouse=True)
def isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user config dir and the cost cache at a fresh tmp dir so no test reads or
    writes the real ones.

    The Hugging Face cache is left alone on purpose: the real-pair tests read it.
    """
    config_home = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.delenv("SPECLI_MODELS", raising=False)
    # Remembered costs (specli.core.costcache) go to a fresh file per test, never ~/.cache.
    monkeypatch.setenv("SPECLI_COST_CACHE", str(config_home / "costs.json"))
    return config_home


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_target(tiny_models_dir: Path) -> Path:
    """Tiny llama target with a ChatML chat template."""
    return write_tiny_model(tiny_models_dir / "target.gguf", seed=TARGET_SEED, chat_template=CHATML_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_target_tools(tiny_models_dir: Path) -> Path:
    """The same weights and vocabulary as tiny_target, with a template that renders tools."""
    return write_tiny_model(tiny_models_dir / "target-tools.gguf", seed=TARGET_SEED,
                            chat_template=TOOLS_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_target_llama3(tiny_models_dir: Path) -> Path:
    """tiny_target's weights and vocabulary with a Llama 3.x-style tool-calling template."""
    return write_tiny_model(tiny_models_dir / "target-llama3.gguf", seed=TARGET_SEED,
                            chat_template=LLAMA3_TOOLS_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_target_fim(tiny_models_dir: Path) -> Path:
    """tiny_target's weights and vocabulary plus Qwen2.5-Coder's six FIM tokens."""
    return write_tiny_model(tiny_models_dir / "target-fim.gguf", seed=TARGET_SEED, fim=True)


@pytest.fixture(scope="session")
def tiny_draft_fim(tiny_models_dir: Path) -> Path:
    """tiny_draft with the FIM tokens: the draft of tiny_target_fim."""
    return write_tiny_model(tiny_models_dir / "draft-fim.gguf", seed=DRAFT_SEED,
                            perturb_of=TARGET_SEED, fim=True)


@pytest.fixture(scope="session")
def tiny_target_notemplate(tiny_models_dir: Path) -> Path:
    """The same weights and vocabulary as tiny_target, without tokenizer.chat_template."""
    return write_tiny_model(tiny_models_dir / "target-notemplate.gguf", seed=TARGET_SEED, chat_template=None)


@pytest.fixture(scope="session")
def tiny_draft(tiny_models_dir: Path) -> Path:
    """tiny_target's weights plus noise: same vocabulary, agrees on most greedy tokens."""
    return write_tiny_model(tiny_models_dir / "draft.gguf", seed=DRAFT_SEED, perturb_of=TARGET_SEED)


@pytest.fixture(scope="session")
def tiny_draft_padded(tiny_models_dir: Path) -> Path:
    """tiny_draft with N_VOCAB_PADDING "[PAD{i}]" tokens appended (shared ids identical).

    Its logits on the shared ids equal tiny_draft's; the padding ids carry random
    output rows (about 22% of the probability mass, argmax ~15% of greedy steps), so an
    engine that forgets to mask ids >= the target's n_vocab fails loudly, and a masked
    one behaves exactly like tiny_draft.
    """
    return write_tiny_model(
        tiny_models_dir / "draft-padded.gguf",
        seed=DRAFT_SEED,
        perturb_of=TARGET_SEED,
        n_vocab_extra=N_VOCAB_PADDING,
    )


@pytest.fixture(scope="session")
def tiny_draft_mismatch(tiny_models_dir: Path) -> Path:
    """tiny_draft with pairs of token texts swapped: same size, incompatible vocabulary."""
    return write_tiny_model(
        tiny_models_dir / "draft-mismatch.gguf",
        seed=DRAFT_SEED,
        perturb_of=TARGET_SEED,
        token_text_override=swapped_token_texts(),
    )


def _hub_cache() -> Path:
    # Read the environment now: huggingface_hub fixes its default when first imported,
    # and a test that redirects HF_HUB_CACHE must not redirect the real pair.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


_REAL_CACHE = _hub_cache()  # taken at collection, before any test changes the environment


def _cached(repo_id: str, filename: str, revision: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision, cache_dir=_REAL_CACHE)
    return Path(found) if isinstance(found, str) else None


@pytest.fixture(scope="session")
def real_pair() -> tuple[Path, Path]:
    """(draft_path, target_path) of the Qwen2.5-Coder 0.5B/1.5B Q4_K_M pair, or skip."""
    draft, target = _cached(*REAL_DRAFT), _cached(*REAL_TARGET)
    if draft is None or target is None:
        pytest.skip("real pair absent: run ../shared/models/fetch-test-pair")
    return draft, target
