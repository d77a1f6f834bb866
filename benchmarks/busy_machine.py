"""Target-alone speed under a controlled background load: specli (K = 0) and llama-bench.

llama.cpp's CPU threads meet at a barrier after every graph node and spin while they wait.
With more runnable threads than cores, each barrier waits for a thread the kernel has
descheduled, and decoding can collapse (a compile beside `specli run` took it from ~14 to
1.1 tok/s). This script measures it: for 0, 1 and 2 busy-loop processes (bounded: they
exit after the run), for each thread count and OpenMP wait setting (libgomp's default
300k spins, passive, 1000 spins, and specli's default since session 7: libgomp's spin
with threads that follow the load, specli/threads.py), the target's tok/s over the same
32 single-token decodes, in a fresh process each time.

    python benchmarks/busy_machine.py [--llama-bin DIR] [--tokens 32] [--repeats 2]

Prints a table and writes --json FILE. Benchmark only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOVERNED = "governed threads (specli)"  # libgomp's spin; specli/threads.py sheds threads
PROBE = r"""
import sys, time, numpy as np
from specli.llama.backend import LlamaModel
m = LlamaModel(sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]))
if sys.argv[4:] == ["govern"]:
    from specli.llama.threads import governor_for
    governor_for([m], threads_given=False)
tok = m.tokenize("def quicksort(items):\n")
row = m.decode(tok, 1)[0]
nxt = int(np.argmax(row))
m.decode([nxt], 1)  # warm
t0 = time.perf_counter()
n = int(sys.argv[3])
for _ in range(n):
    nxt = int(np.argmax(m.decode([nxt], 1)[0]))
print(n / (time.perf_counter() - t0))
"""


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def with_load(n_busy: int, seconds: float, fn):
    procs = [mp.Process(target=busy, args=(seconds,), daemon=True) for _ in range(n_busy)]
    for p in procs:
        p.start()
    time.sleep(0.2 if n_busy else 0)
    try:
        return fn()
    finally:
        for p in procs:
            p.terminate()
            p.join()


def specli_tps(target: str, threads: int, tokens: int, env: dict, govern: bool = False) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, target, str(threads), str(tokens)]
                         + (["govern"] if govern else []),
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return float(out.stdout.strip().splitlines()[-1])


def llama_bench_tps(bin_dir: Path, target: str, threads: int, tokens: int, env: dict) -> float:
    env = {**env, "LD_LIBRARY_PATH": str(bin_dir)}
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", target, "-p", "0", "-n", str(tokens),
                          "-t", str(threads), "-r", "1", "-o", "json"],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-200:])
    return float(json.loads(out.stdout)[0]["avg_ts"])


def default_target() -> str:
    from specli.models import catalogue
    from specli.models import hub as hf

    reg = catalogue.load_registry()
    target, _ = catalogue.pair_models(reg, reg.default_pair)
    path = hf.cached_path(target.hub)
    if path is None:
        sys.exit("the default target is not cached (specli models pull)")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None)
    ap.add_argument("--llama-bin", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loads", default="0,1,2")
    ap.add_argument("--threads", default=None, help="comma list (default: cores, cores - 1)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    target = args.target or default_target()
    cores = os.cpu_count() or 2
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({cores, max(1, cores - 1)}, reverse=True)
    policies = {"spin 300k (libgomp default)": {"GOMP_SPINCOUNT": "300000"},
                "passive": {"OMP_WAIT_POLICY": "passive"},
                "spin 1000": {"GOMP_SPINCOUNT": "1000"},
                GOVERNED: {}}
    rows = []
    for load in (int(x) for x in args.loads.split(",")):
        for t in threads:
            for pname, extra in policies.items():
                env = {k: v for k, v in os.environ.items()
                       if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | extra
                row = {"load": load, "threads": t, "wait_policy": pname}
                for tool in ("specli", "llama-bench"):
                    if tool == "llama-bench" and args.llama_bin is None:
                        continue
                    samples = []
                    for _ in range(args.repeats):
                        if tool == "llama-bench" and pname == GOVERNED:
                            break
                        fn = (lambda: specli_tps(target, t, args.tokens, env, pname == GOVERNED)) \
                            if tool == "specli" \
                            else (lambda: llama_bench_tps(args.llama_bin, target, t, args.tokens, env))
                        try:
                            samples.append(with_load(load, 300, fn))
                        except Exception as e:  # noqa: BLE001 - a failed cell is reported
                            row[f"{tool}_error"] = str(e)
                            break
                    if samples:
                        row[tool] = statistics.median(samples)
                        row[f"{tool}_samples"] = samples
                rows.append(row)
                print(f"load {load}  threads {t}  {pname:27} "
                      + "  ".join(f"{k} {row[k]:6.2f} tok/s" for k in ("specli", "llama-bench") if k in row),
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps({"target": target, "cores": cores, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
