"""The buffer-type decision (pure, with the backend's reports faked), its backend queries on
this machine, and the GPU-offload default (offload support faked at the function boundary)."""

from __future__ import annotations

import re

import pytest

from specli.llama import placement
from specli.llama.gguf import TensorInfo

Q4_K, Q6_K, F32 = 12, 14, 0


def qwen_like(n_layer: int = 3) -> list[TensorInfo]:
    """A Q4_K_M-shaped model: Q4_K projections, Q6_K ffn_down, F32 norms, Q6_K token_embd."""
    out = [TensorInfo("token_embd.weight", Q6_K, (64, 1000))]
    for i in range(n_layer):
        for s in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
            out.append(TensorInfo(f"blk.{i}.{s}.weight", Q4_K, (64, 64)))
        out.append(TensorInfo(f"blk.{i}.ffn_down.weight", Q6_K, (64, 64)))
        out.append(TensorInfo(f"blk.{i}.attn_norm.weight", F32, (64,)))
        out.append(TensorInfo(f"blk.{i}.attn_q.bias", F32, (64,)))
    out.append(TensorInfo("output_norm.weight", F32, (64,)))
    out.append(TensorInfo("output.weight", Q6_K, (64, 1000)))
    return out


def repack_takes_q4k(t) -> bool:  # what the x86 CPU_REPACK answers for these shapes
    return t.ggml_type == Q4_K and t.dims[1] % 8 == 0


def matched(p: placement.Placement, names) -> set[str]:
    return {n for n in names if any(re.search(pat, n) for pat, _ in p.overrides)}


def test_no_amx_leaves_llama_cpp_alone():
    p = placement.decide(["CPU_REPACK"], qwen_like(), repack_takes_q4k, n_layer=3,
                         n_gpu_layers=0, allow_amx=False)
    assert p.use_extra_bufts and p.overrides == () and p.decision == "default" and p.key == ""


def test_amx_is_avoided_and_repack_kept_for_exactly_what_it_takes():
    tensors = qwen_like()
    p = placement.decide(["AMX", "CPU_REPACK"], tensors, repack_takes_q4k, n_layer=3,
                         n_gpu_layers=0, allow_amx=False)
    assert not p.use_extra_bufts and p.decision == "avoid-amx"
    assert all(buft == "CPU_REPACK" for _, buft in p.overrides)
    want = {t.name for t in tensors if t.ggml_type == Q4_K}
    assert matched(p, [t.name for t in tensors]) == want
    assert p.repacked == len(want) == 18
    assert len(p.overrides) == 6  # one grouped pattern per projection, not one per tensor


def test_patterns_do_not_match_other_layers_or_prefixes():
    pats = placement.patterns(["blk.1.ffn_up.weight", "blk.12.ffn_up.weight"])
    hit = lambda n: any(re.search(p, n) for p in pats)  # noqa: E731
    assert hit("blk.1.ffn_up.weight") and hit("blk.12.ffn_up.weight")
    assert not hit("blk.2.ffn_up.weight") and not hit("blk.11.ffn_up.weight")
    assert not hit("blk.1.ffn_up.weight.extra") and not hit("xblk.1.ffn_up.weight")


def test_token_embd_and_vectors_never_forced():
    p = placement.decide(["AMX", "CPU_REPACK"], qwen_like(), lambda t: True, n_layer=3,
                         n_gpu_layers=0, allow_amx=False)
    got = matched(p, [t.name for t in qwen_like()])
    assert "token_embd.weight" not in got  # GET_ROWS, and maybe the tied output head
    assert not any(n.endswith(".bias") or "norm" in n for n in got)
    assert "output.weight" in got  # a matmul weight like the others when repack takes it


def test_amx_without_repack_means_plain_cpu():
    p = placement.decide(["AMX"], qwen_like(), repack_takes_q4k, n_layer=3, n_gpu_layers=0,
                         allow_amx=False)
    assert not p.use_extra_bufts and p.overrides == ()


def test_escape_hatch_restores_llama_cpp_choice():
    assert placement.amx_allowed({"SPECLI_ALLOW_AMX": "1"})
    assert not placement.amx_allowed({"SPECLI_ALLOW_AMX": "0"}) and not placement.amx_allowed({})
    p = placement.decide(["AMX", "CPU_REPACK"], qwen_like(), repack_takes_q4k, n_layer=3,
                         n_gpu_layers=0, allow_amx=True)
    assert p.use_extra_bufts and p.overrides == () and p.decision == "amx-allowed"


@pytest.mark.parametrize("ngl, cpu_blocks, output_on_cpu", [
    (0, {0, 1, 2}, True), (1, {0, 1, 2}, False), (2, {0, 1}, False), (4, set(), False),
    (-1, set(), False), (99, set(), False)])
def test_only_layers_left_on_the_cpu_are_overridden(ngl, cpu_blocks, output_on_cpu):
    p = placement.decide(["AMX", "CPU_REPACK"], qwen_like(), lambda t: True, n_layer=3,
                         n_gpu_layers=ngl, allow_amx=False)
    got = matched(p, [t.name for t in qwen_like()])
    assert {int(n.split(".")[1]) for n in got if n.startswith("blk.")} == cpu_blocks
    assert ("output.weight" in got) == output_on_cpu


# --- the backend's reports on this machine -------------------------------------------------

def test_backend_reports_extra_bufts_and_repack_answers():
    from specli.llama import backend

    bufts = backend.cpu_extra_bufts()
    assert all(isinstance(k, str) and v for k, v in bufts.items())
    if "CPU_REPACK" not in bufts:
        pytest.skip(f"this llama.cpp build offers no CPU_REPACK ({list(bufts)})")
    # F32 weights are never repacked, whatever the CPU.
    assert not backend.buft_supports(bufts["CPU_REPACK"], TensorInfo("w", F32, (256, 256)))
    info = backend.system_info()
    if "AVX2 = 1" in info:  # x86: Q4_K is repacked 8 rows at a time, Q6_K is not
        assert backend.buft_supports(bufts["CPU_REPACK"], TensorInfo("w", Q4_K, (256, 256)))
        assert not backend.buft_supports(bufts["CPU_REPACK"], TensorInfo("w", Q4_K, (256, 260)))
        assert not backend.buft_supports(bufts["CPU_REPACK"], TensorInfo("w", Q6_K, (256, 256)))


def test_plan_placement_on_a_tiny_model_matches_the_cpu(tiny_target):
    from specli.llama import backend

    p, bufts = backend.plan_placement(tiny_target, 0)
    assert p.decision == ("avoid-amx" if "AMX" in bufts else "default")
    p2, _ = backend.plan_placement(tiny_target, 0, env={"SPECLI_ALLOW_AMX": "1"})
    assert p2.use_extra_bufts


# --- GPU by default ------------------------------------------------------------------------

@pytest.mark.parametrize("supported, given, want", [
    (True, None, -1), (False, None, 0), (True, 0, 0), (True, 5, 5), (False, 7, 7)])
def test_gpu_layers_default_follows_offload_support(monkeypatch, supported, given, want):
    from specli.llama import backend

    monkeypatch.setattr(backend, "supports_gpu_offload", lambda: supported)
    assert backend.resolve_gpu_layers(given) == want


def test_model_load_uses_resolved_default(monkeypatch, tiny_target):
    from specli.llama import backend

    monkeypatch.setattr(backend, "supports_gpu_offload", lambda: False)
    with backend.LlamaModel(tiny_target, n_ctx=64) as m:
        assert m.n_gpu_layers == 0 and m.device == "CPU"
