"""`specli doctor`: what this machine and this install are, in one report for a bug report.

Each part is collected on its own; a part that fails becomes {"error": "..."} and the rest
goes on, so the doctor never crashes where the tool it diagnoses would. The probe part
loads the default pair (when cached) and measures, in a few seconds, what `--k auto`
decides from: the target's t_v(1) and t_v(4), the draft's t_d, and the batch-numerics gap.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from typing import Callable

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "neon", "asimd")
PROBE_CONTEXT = "def quicksort(items):\n    if len(items) <= 1:\n        return items\n"
ALPHAS = (0.6, 0.8, 0.9, 1.0)


def _part(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - each failure is one line of the report
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from specli import __version__

    try:
        lcp = version("llama-cpp-python")
    except PackageNotFoundError:
        lcp = None
    return {"specli": __version__, "llama_cpp_python": lcp,
            "python": platform.python_version(), "platform": platform.platform()}


def cpu() -> dict:
    from specli.llama.backend import physical_cores, system_info

    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": physical_cores(),
            "flags": sorted(f for f in CPU_FLAGS if f in flags), "load_avg": load,
            "llama_cpp_system_info": system_info()}


def gpu() -> dict:
    from specli.llama.backend import gpu_devices, resolve_gpu_layers, supports_gpu_offload

    return {"offload_supported": supports_gpu_offload(), "devices": gpu_devices(),
            "default_n_gpu_layers": resolve_gpu_layers(None)}


def threads() -> dict:
    """Threads per model, and the OpenMP settings llama.cpp's workers run with (the user's;
    specli sets none). Threads specli chose follow the machine's load: specli/threads.py."""
    from specli.llama.backend import physical_cores
    from specli.llama.threads import CpuSampler

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
           if k in os.environ}
    # Default threads only (--threads N keeps N), and only where /proc/stat can be read.
    return {"default": physical_cores(), "env": env, "follows_load": CpuSampler().available}


def default_pair() -> dict:
    from specli.models import catalogue
    from specli.models import hub as hf

    reg = catalogue.load_registry()
    target, draft = catalogue.pair_models(reg, reg.default_pair)
    out = {"name": reg.default_pair}
    for role, spec in (("target", target), ("draft", draft)):
        path = hf.cached_path(spec.hub) if spec.hub else None
        out[role] = {"name": spec.name, "cached": path is not None,
                     "path": str(path) if path else None}
    return out


def buffer_types(pair: dict) -> dict:
    from specli.llama import placement
    from specli.llama.backend import cpu_extra_bufts, plan_placement, resolve_gpu_layers

    out = {"extra_bufts": list(cpu_extra_bufts()), "allow_amx_env": placement.amx_allowed()}
    for role in ("target", "draft"):
        path = (pair.get(role) or {}).get("path")
        if path:
            p, _ = plan_placement(path, resolve_gpu_layers(None))
            out[role] = {"decision": p.decision, "reason": p.reason, "repacked_by_override": p.repacked}
    return out


def probe(pair: dict, n_threads: int | None = None, numerics_n_max: int = 9) -> dict:
    """Load the default pair and measure t_v(1), t_v(4), t_d and the batch-numerics gap."""
    from specli.llama.backend import LlamaModel
    from specli.bench.calibration import time_batches
    from specli.core.numerics import measure, measure_lengths

    paths = [(pair.get(r) or {}).get("path") for r in ("target", "draft")]
    if not all(paths):
        return {"skipped": "the default pair is not cached (specli models pull)"}
    with LlamaModel(paths[0], n_ctx=1024, n_threads=n_threads) as target, \
            LlamaModel(paths[1], n_ctx=512, n_threads=n_threads) as draft:
        ctx = target.tokenize(PROBE_CONTEXT)
        med = statistics.median
        t_v = {n: med(ts) for n, ts in time_batches(target, ctx, (1, 2, 3, 4, 5), 5).items()}
        t_d = med(time_batches(draft, ctx, (1,), 5, all_logits=False)[1])
        numerics = measure(target, numerics_n_max)
        numerics.invariant_by_length = measure_lengths(target, 4)
        out = {"target": {"device": target.device, "buffers_mib": target.buffers,
                          "placement": target.placement.decision},
               "draft": {"device": draft.device, "buffers_mib": draft.buffers,
                         "placement": draft.placement.decision},
               "threads": target.n_threads,
               "t_verify_ms": {n: round(s * 1e3, 2) for n, s in t_v.items()},
               "t_draft_ms": round(t_d * 1e3, 2),
               "batch_numerics": numerics.to_dict()}
    out["auto"] = auto_verdict(t_v, t_d)
    return out


def auto_verdict(t_v: dict[int, float], t_d: float) -> dict:
    """What --k auto concludes from these costs: the best K and speedup at each acceptance
    rate, and the acceptance model drafting needs to pay at all."""
    from specli.core.costs import break_even_alpha, predicted_speedup

    k_max = max(t_v) - 1
    curve = [t_v[n] for n in sorted(t_v)]
    best = {}
    for a in ALPHAS:
        k, s = max(((k, predicted_speedup(a, k, t_d, curve)) for k in range(1, k_max + 1)),
                   key=lambda x: x[1])
        best[str(a)] = {"k": k, "speedup": round(s, 3)}
    evens = {k: break_even_alpha(k, t_d, curve) for k in range(1, k_max + 1)}
    payable = {k: a for k, a in evens.items() if a is not None}
    if not payable:
        verdict = ("model drafting cannot pay here even if every draft were accepted: "
                   "--k auto runs the target alone unless an n-gram match pays")
    else:
        k, a = min(payable.items(), key=lambda x: x[1])
        verdict = f"model drafting pays when acceptance exceeds {a:.2f} (K = {k})"
    return {"best_by_alpha": best, "break_even_alpha": {str(k): a for k, a in evens.items()},
            "draft_over_target_step": round(t_d / t_v[1], 3), "verdict": verdict}


def collect(*, probe_models: bool = True, n_threads: int | None = None,
            progress: Callable[[str], None] = lambda _: None) -> dict:
    """The whole report, part by part."""
    report: dict = {}
    for name, fn in (("versions", versions), ("cpu", cpu), ("gpu", gpu), ("threads", threads),
                     ("default_pair", default_pair)):
        progress(name)
        report[name] = _part(fn)
    pair = report["default_pair"] if "error" not in report["default_pair"] else {}
    progress("buffer types")
    report["buffer_types"] = _part(lambda: buffer_types(pair))
    if probe_models:
        progress("probe: loading the default pair and timing it")
        report["probe"] = _part(lambda: probe(pair, n_threads))
        if "batch_numerics" in report["probe"]:
            report["batch_numerics"] = report["probe"]["batch_numerics"]
    report["python_executable"] = sys.executable
    return report
