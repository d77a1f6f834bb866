"""Greedy exactness on the GPU: the suite's tiny models, both offloaded, K = 0 vs K = 1..8.

The test suite runs its tiny models on the CPU (LlamaModel's default n_gpu_layers=0);
this runs the same check as tests/test_engine.py::test_greedy_equals_target_alone_for_every_k
with n_gpu_layers=-1, where batched (verify) and single-token decodes take different
kernels. The tiny draft agrees with the target most of the time, so drafts are accepted.

  python3 benchmarks/gpu/tiny_exact.py [--n-gpu-layers -1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tinymodels import write_tiny_model  # noqa: E402

from specli.llama.backend import LlamaModel  # noqa: E402
from specli.config import SamplingConfig, SpecConfig  # noqa: E402
from specli.core.drafters import ModelDrafter  # noqa: E402
from specli.core.engine import Done, speculative_generate  # noqa: E402

PROMPTS = ["The quick brown fox", "Once upon a time there was", "def main():\n    x = 1"]
GREEDY = SamplingConfig(temperature=0.0)


def generate(target, draft, prompt, k, max_tokens=48):
    target.reset()
    draft.reset()
    tokens = target.tokenize(prompt, add_special=False)
    drafter = ModelDrafter(draft, GREEDY, target.n_vocab) if k else None
    for ev in speculative_generate(target, drafter, tokens, GREEDY, SpecConfig(k=k, max_tokens=max_tokens)):
        if isinstance(ev, Done):
            return ev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gpu-layers", type=int, default=-1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = {"n_gpu_layers": args.n_gpu_layers, "cases": []}
    with tempfile.TemporaryDirectory() as d:
        tp = write_tiny_model(Path(d) / "target.gguf", seed=0)
        dp = write_tiny_model(Path(d) / "draft.gguf", seed=1, perturb_of=0)
        cpu = LlamaModel(tp, n_ctx=512, n_threads=1)
        target = LlamaModel(tp, n_ctx=512, n_threads=1, n_gpu_layers=args.n_gpu_layers)
        draft = LlamaModel(dp, n_ctx=512, n_threads=1, n_gpu_layers=args.n_gpu_layers)
        ok = True
        for prompt in PROMPTS:
            base = generate(target, draft, prompt, 0)
            cpu_base = generate(cpu, draft, prompt, 0)
            case = {"prompt": prompt, "k0_tokens": len(base.tokens),
                    "gpu_k0_equals_cpu_k0": base.tokens == cpu_base.tokens, "k": {}}
            for k in range(1, 9):
                done = generate(target, draft, prompt, k)
                same = done.tokens == base.tokens
                ok &= same
                case["k"][k] = {"equal_to_k0": same, "acceptance": round(done.stats.acceptance_rate, 3)}
            out["cases"].append(case)
            print(f"{prompt!r}: K=1..8 equal to K=0: "
                  f"{all(v['equal_to_k0'] for v in case['k'].values())}; "
                  f"acceptance {[v['acceptance'] for v in case['k'].values()]}; "
                  f"GPU K=0 == CPU K=0: {case['gpu_k0_equals_cpu_k0']}", flush=True)
        for m in (cpu, target, draft):
            m.close()
    out["all_equal"] = ok
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"tiny greedy exactness with n_gpu_layers={args.n_gpu_layers}: {'PASS' if ok else 'FAIL'} "
          f"({out['seconds']}s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
