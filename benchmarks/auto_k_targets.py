#!/usr/bin/env python3
"""Issue 5's targets, from `specli bench --json` files: prints figures, asserts nothing.

For each file (one suite x temperature each, or several suites in one file) it prints
  - --k auto against the baseline of the same run (target: >= 0.97x),
  - --k auto against the best fixed K (target: >= 0.95x, ratio of median tok/s),
  - predicted against measured speedup for every fixed K with model drafts
    (target: within 15%), both the Leviathan formula and the replay of the rounds.

Usage:
  python benchmarks/auto_k_targets.py FILE.json [FILE.json ...]
  python benchmarks/auto_k_targets.py --run OUTDIR [--suites code,edit,chat,summarize]
      [--temperatures 0,0.7] [--k 0,1,2,3,4,6,8,auto] [-- extra specli bench options]
With --run it calls `specli bench` once per suite and temperature (sequentially: never run
two benchmarks at once on a small machine), writes OUTDIR/<suite>-t<T>.json, then reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run_all(outdir: Path, suites, temps, ks, extra) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    files = []
    for t in temps:
        for suite in suites:
            path = outdir / f"{suite}-t{t}.json"
            cmd = ["specli", "bench", "--suite", suite, "--k", ks, "--temperature", t,
                   "--json", str(path), *extra]
            print("$", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            files.append(path)
    return files


def _fmt(x, spec=".2f", suffix="×") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def report(path: Path) -> None:
    data = json.loads(path.read_text())
    s = data["summary"]
    temp = (s.get("sampling") or {}).get("temperature")
    other = s.get("other_cpu_share")
    print(f"\n== {path.name}  (temperature {temp}, {len(data['results'])} runs, other processes "
          f"used {'?' if other is None else f'{100 * other:.0f}%'} of the CPUs)")
    for suite, ss in s["suites"].items():
        best = ss.get("best_fixed") or {}
        line = f"  {suite:<10} best fixed K {best.get('k')} ({best.get('drafter')}) {_fmt(best.get('speedup'))}"
        for d, a in (ss.get("auto") or {}).items():
            ok1 = a["vs_baseline"] >= 0.97
            ok2 = a["vs_best_fixed"] is None or a["vs_best_fixed"] >= 0.95
            line += (f" | auto[{d}] {_fmt(a['vs_baseline'])} baseline {'ok' if ok1 else 'MISS'}, "
                     f"{_fmt(a['vs_best_fixed'])} best fixed {'ok' if ok2 else 'MISS'}")
        print(line)
    print("  K  drafter  measured  formula (err)   +catch-up (err)  replay (err)")
    for v in s["variants"]:
        if v["k"] == 0 or not v.get("runs") or not v.get("speedup"):
            continue
        m = v["speedup"]["median"]
        p, c, r = (v.get("predicted_speedup"), v.get("predicted_speedup_catchup"),
                   v.get("replayed_speedup"))
        err = lambda x: "" if x is None else f"({100 * (x - m) / m:+.0f}%)"  # noqa: E731
        print(f"  {v['k']:<2} {v['drafter']:<8} {m:7.2f}×  {_fmt(p):>7} {err(p):<8} "
              f"{_fmt(c):>7} {err(c):<8} {_fmt(r):>7} {err(r)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--run", type=Path, metavar="OUTDIR")
    ap.add_argument("--suites", default="code,edit,chat,summarize")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--k", default="0,1,2,3,4,6,8,auto")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after "--" goes to specli bench as is
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args, unknown = ap.parse_known_args(argv)
    extra = unknown + extra
    files = list(args.files)
    if args.run:
        files += run_all(args.run, args.suites.split(","), args.temperatures.split(","), args.k, extra)
    if not files:
        ap.error("give bench JSON files, or --run OUTDIR")
    for f in files:
        report(f)


if __name__ == "__main__":
    main()
