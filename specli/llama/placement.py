"""Where a model's weights go on the CPU: which buffer types llama.cpp may use, and why.

llama.cpp stores each weight in the first buffer type of its list that takes it: GPU
devices, then the CPU backend's *extra* buffer types (AMX, then CPU_REPACK, on an x86
build with AMX), then plain CPU memory. On AMX CPUs the AMX buffer type takes Q4_K,
Q6_K, Q8_0 and more, and its matmul segfaults on the first decode (llama.cpp issue
#20824, closed as stale without a fix). Turning the extra buffer types off
(`use_extra_bufts = false`) avoids the crash but also drops CPU_REPACK, whose
interleaved Q4_K/Q4_0 kernels are ~1.5x faster than plain CPU ones.

So on a CPU that offers AMX, specli turns the extra buffer types off and gives back
CPU_REPACK, by name, to exactly the weights CPU_REPACK's own `supports_op` accepts (the
backend answers that, per tensor shape and type; see backend.repack_supports). Every
weight then lands where a build without AMX would put it: the crash is gone and the
repacked kernels stay. `SPECLI_ALLOW_AMX=1` restores llama.cpp's own choice (for when
upstream fixes the crash).

`decide` is pure: it takes what the backend reported and returns the load settings.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

AMX = "AMX"
REPACK = "CPU_REPACK"
ALLOW_AMX_ENV = "SPECLI_ALLOW_AMX"

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Placement:
    """Load settings for one model: whether llama.cpp may use the extra buffer types, and
    which tensors go to a named buffer type regardless ((regex, buffer type) pairs)."""

    use_extra_bufts: bool
    overrides: tuple[tuple[str, str], ...]
    decision: str  # "default" | "avoid-amx" | "amx-allowed"
    reason: str
    repacked: int = 0  # weights given CPU_REPACK by override

    @property
    def key(self) -> str:
        """What changes the kernels, for the cost cache key ("" when llama.cpp decides)."""
        return "" if self.decision == "default" else self.decision


def amx_allowed(env: dict | None = None) -> bool:
    value = (env if env is not None else os.environ).get(ALLOW_AMX_ENV, "")
    return value.strip().lower() in {"1", "yes", "true", "on"}


def cpu_tensor(name: str, n_layer: int, n_gpu_layers: int) -> bool:
    """Whether llama.cpp keeps this tensor on the CPU for this --n-gpu-layers.

    llama.cpp offloads the last n_gpu_layers of the n_layer + 1 "layers" (the blocks and
    then the output layer): block i is on the GPU when i >= n_layer + 1 - n_gpu_layers,
    the output layer when n_gpu_layers >= 1; input tensors stay on the CPU.
    """
    if n_gpu_layers < 0:
        n_gpu_layers = n_layer + 1
    m = _LAYER.match(name)
    if m:
        return int(m.group(1)) < n_layer + 1 - n_gpu_layers
    return n_gpu_layers < 1


def matmul_weight(name: str, dims: Sequence[int]) -> bool:
    """A 2-D weight that llama.cpp multiplies with (a block's projections, the output head).

    token_embd is looked up by row (GET_ROWS), which CPU_REPACK does not run; it may also
    be the tied output head, loaded a second time under the same name, so it is left to
    llama.cpp.
    """
    return len(dims) == 2 and (bool(_LAYER.match(name)) or name == "output.weight") \
        and name.endswith(".weight")


def decide(extra_bufts: Sequence[str], tensors: Sequence, repack_ok: Callable[[object], bool], *,
           n_layer: int, n_gpu_layers: int, allow_amx: bool) -> Placement:
    """The load settings, from the CPU backend's extra buffer types (names, in llama.cpp's
    order) and the model's tensors (objects with name, ggml_type, dims).

    `repack_ok(tensor)` answers whether CPU_REPACK takes that tensor (backend query).
    """
    if AMX not in extra_bufts:
        return Placement(True, (), "default", "no AMX buffer type: llama.cpp's own placement")
    if allow_amx:
        return Placement(True, (), "amx-allowed",
                         f"{ALLOW_AMX_ENV}=1: llama.cpp may use AMX (crashes with issue #20824)")
    chosen = []
    if REPACK in extra_bufts:
        chosen = [t for t in tensors
                  if matmul_weight(t.name, t.dims) and cpu_tensor(t.name, n_layer, n_gpu_layers)
                  and repack_ok(t)]
    overrides = tuple((pattern, REPACK) for pattern in patterns([t.name for t in chosen]))
    return Placement(False, overrides, "avoid-amx",
                     f"AMX avoided (llama.cpp #20824 segfault); {len(chosen)} weights in "
                     f"{REPACK}, the rest in plain CPU memory", repacked=len(chosen))


def patterns(names: Sequence[str]) -> list[str]:
    """Anchored regexes matching exactly `names`, one per tensor suffix.

    llama.cpp compiles every override pattern for every tensor it creates, so a few
    grouped patterns (`^blk\\.(0|1|5)\\.ffn_up\\.weight$`) load much faster than one
    pattern per tensor.
    """
    layers: dict[str, list[str]] = defaultdict(list)
    out = []
    for name in names:
        m = _LAYER.match(name)
        if m:
            layers[m.group(2)].append(m.group(1))
        else:
            out.append(f"^{re.escape(name)}$")
    for suffix, ids in sorted(layers.items()):
        out.append(rf"^blk\.({'|'.join(ids)})\.{re.escape(suffix)}$")
    return out
