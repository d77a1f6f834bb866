#!/usr/bin/env python3
"""specli against llama.cpp's own C++ speculative loop, same pair, same kernels: prints figures.

For each prompt (rendered with the target's chat template by specli, and the *rendered
text* handed to llama.cpp with -p, so both tokenize the same string), the same K,
temperature 0, the same threads per model and the same number of new tokens, it runs

  native  llama-speculative-simple --spec-type draft-simple --spec-draft-n-max K
  specli  the engine at K (in-process: models loaded once; a fresh drafter per run)
  native  llama-bench -p 0 -n N -d P tg (the target alone, after P cached tokens: the prompt's)
  specli  K = 0 (the target alone, after the same prompt)

Throughput on both sides excludes loading and the prompt: llama.cpp prints
"decoded N tokens in S seconds" (timed after the prompt is encoded), specli reports
new tokens / decode seconds (timed after the prefill). Runs are interleaved:

  warm-up: one native and one specli run of the first prompt (dropped)
  for repeat r: for prompt p: native target, specli K=0, then for K: native K, specli K

Ratios are medians of per-(prompt, repeat) ratios of runs made moments apart; tok/s
columns are medians over all runs. The `model` column is the ratio the two loops' decode
calls alone allow (decode_cost_model): from t_v(1..K+1) and the draft's batch costs,
calibrated in-process before the runs and once more per repeat, and specli's acceptance.
Per round specli decodes K+1 tokens on the target and K times on the draft (1 token, or 2
after an all-accepted round); draft-simple also decodes each verified batch on the draft.
Measured ≈ model means neither side's overhead outside llama_decode matters: the ratio
is set by that extra draft batch. specli empties both KV caches before each run, as each
native run starts fresh (--reuse-cache keeps them: then text may vary between repeats,
since the cache's cell layout changes the attention's summation order at near-ties).
Each run records the CPU share other processes took meanwhile (from /proc/stat);
--max-foreign 0.1 leaves out prompt×repeat groups where that exceeded 10%. Greedy text: native's generated text (from its
stdout, after the echoed prompt) is compared with specli's over their common length
(native may overshoot N by up to K tokens); mismatches are counted and shown.

With --ngram it also compares, on the `edit` suite, llama.cpp's prompt-lookup mode
(--spec-type ngram-simple --spec-draft-n-max 12, no draft model) with specli's
n-gram and hybrid drafters (K from --ngram-k, default auto), against specli K = 0.

Usage:
  python benchmarks/vs_llama_cpp.py --llama-bin "$(../shared/anchors/build-llama-cpp-tools)"
      [--target T.gguf --draft D.gguf] [--k 2,3,4] [--prompts code|FILE.jsonl] [--limit 2]
      [--n 128] [--repeats 3] [--threads 2] [--json OUT.json] [--ngram] [--max-foreign 0.1]
Run it on a quiet machine (it prints the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DECODED_RE = re.compile(r"decoded\s+(\d+)\s+tokens\s+in\s+([0-9.]+)\s+seconds")
ENCODED_RE = re.compile(r"encoded\s+(\d+)\s+tokens\s+in\s+([0-9.]+)\s+seconds")
N_DRAFTED_RE = re.compile(r"n_drafted\s*=\s*(\d+)")
N_ACCEPT_RE = re.compile(r"n_accept\s*=\s*(\d+)")


# --------------------------------------------------------------------------- parsing


def parse_decoded(log: str) -> tuple[int, float] | None:
    """llama.cpp's "decoded N tokens in S seconds" -> (N, S); None if absent."""
    m = DECODED_RE.search(log)
    return (int(m.group(1)), float(m.group(2))) if m else None


def parse_encoded(log: str) -> int | None:
    """llama.cpp's "encoded N tokens in S seconds" -> N (the prompt's token count)."""
    m = ENCODED_RE.search(log)
    return int(m.group(1)) if m else None


def parse_acceptance(log: str) -> tuple[int, int] | None:
    """(n_drafted, n_accept) from llama-speculative-simple's summary."""
    d, a = N_DRAFTED_RE.search(log), N_ACCEPT_RE.search(log)
    return (int(d.group(1)), int(a.group(1))) if d and a else None


def parse_llama_bench(stdout: str) -> float | None:
    """tok/s of the tg test in `llama-bench -o json` output (avg_ts of the n_gen > 0 entry)."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    for entry in data if isinstance(data, list) else [data]:
        if entry.get("n_gen", 0) > 0 and entry.get("n_prompt", 0) == 0:  # (n_depth may be > 0)
            return float(entry["avg_ts"])
    return None


def extract_generated(stdout: str, prompt_text: str) -> str | None:
    """The generated text in llama-speculative-simple's stdout.

    Its stdout is "\\n\\n" + the prompt's token pieces + the generated pieces + "\\n\\n"
    (and one more "\\n\\n" at exit). None if the echoed prompt is not found.
    """
    body = stdout[2:] if stdout.startswith("\n\n") else stdout
    if not body.startswith(prompt_text):
        i = stdout.find(prompt_text)
        if i < 0:
            return None
        body = stdout[i:]
    gen = body[len(prompt_text):]
    for tail in ("\n\n\n\n", "\n\n"):
        if gen.endswith(tail):
            return gen[: -len(tail)]
    return gen


@dataclass(frozen=True)
class TextMatch:
    """Greedy agreement of two texts over their common length."""

    same: bool
    compared: int  # characters compared (the shorter text's length)
    first_diff: int | None  # index of the first differing character
    context: str = ""  # a snippet around the difference, both sides

    def to_dict(self) -> dict:
        return {"same": self.same, "compared": self.compared, "first_diff": self.first_diff,
                "context": self.context}


def compare_texts(a: str, b: str, snippet: int = 30) -> TextMatch:
    """Same if one text is a prefix of the other (one side may generate a few more tokens)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            lo = max(0, i - snippet)
            ctx = f"…{a[lo:i + snippet]!r} vs …{b[lo:i + snippet]!r}"
            return TextMatch(False, n, i, ctx)
    return TextMatch(True, n, None)


# --------------------------------------------------------------------------- summary


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _spread(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def variant_key(row: dict) -> str:
    return f"{row['engine']}:{row['mode']}:{row['k']}"


def decode_cost_model(hist: list[int], k: int, t_v, t_db) -> dict | None:
    """Decode time of both loops over the same rounds, from calibrated llama_decode costs.

    hist[a]: rounds in which a of the K drafts were accepted (greedy: native drafts and
    verifies the same tokens, so its rounds are the same). t_v(n): the target decoding n
    tokens with n logits rows; t_db(n): the draft decoding n tokens with one row.
      specli  t_v(K+1) + catch-up + (K-1) t_db(1); the catch-up feeds 2 tokens after an
              all-accepted round (its last draft and the bonus token), else 1
      native  t_v(K+1) + t_db(K+1) + K t_db(1): draft-simple first decodes the whole
              verified batch on the draft (its process step), then drafts K tokens from
              the target's last token
    Sampling, Python and C++ bookkeeping are left out: the ratio is what the loops' decode
    calls alone allow, the part of specli/native no overhead work can change.
    """
    rounds = sum(hist)
    if not rounds or k < 1:
        return None
    full = hist[k] if len(hist) > k else 0
    tokens = sum(a * n for a, n in enumerate(hist)) + rounds  # accepted drafts + 1 per round
    specli = rounds * (t_v(k + 1) + (k - 1) * t_db(1)) + full * t_db(2) + (rounds - full) * t_db(1)
    native = rounds * (t_v(k + 1) + t_db(k + 1) + k * t_db(1))
    return {"rounds": rounds, "full_rounds": full, "tokens": tokens,
            "specli_ms_per_token": 1e3 * specli / tokens, "native_ms_per_token": 1e3 * native / tokens,
            "ratio": native / specli}


def summarize(rows: list[dict], ks: list, ngram_ks: list | None = None,
              max_foreign: float | None = None, calib=None) -> dict:
    """Medians of tok/s per variant, and medians of paired ratios (same prompt and repeat).

    rows: one dict per run with engine, mode, k, prompt, repeat, tok_s (and text_match,
    foreign_cpu). With max_foreign, every run of a (prompt, repeat) in which some run saw
    other processes use more than that share of the CPU is left out of the figures.
    """
    all_rows = rows
    noisy = {(r["prompt"], r["repeat"]) for r in rows
             if max_foreign is not None and (r.get("foreign_cpu") or 0.0) > max_foreign}
    rows = [r for r in rows if (r["prompt"], r["repeat"]) not in noisy]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(variant_key(r), []).append(r)
    variants = {}
    for key, rs in by.items():
        tps = [r["tok_s"] for r in rs]
        lo, hi = _spread(tps)
        variants[key] = {"runs": len(rs), "tok_s_median": _median(tps), "tok_s_min": lo,
                         "tok_s_max": hi}
        accs = [r.get("accept_rate") for r in rs if r.get("accept_rate") is not None]
        if accs:
            variants[key]["accept_rate_median"] = _median(accs)
        shares = [r.get("python_share") for r in rs if r.get("python_share") is not None]
        if shares:
            variants[key]["python_share_median"] = _median(shares)
        foreign = [r.get("foreign_cpu") for r in rs if r.get("foreign_cpu") is not None]
        if foreign:
            variants[key]["foreign_cpu_max"] = max(foreign)

    def paired(num_key: str, den_key: str) -> dict | None:
        den = {(r["prompt"], r["repeat"]): r["tok_s"] for r in by.get(den_key, [])}
        ratios = [r["tok_s"] / den[(r["prompt"], r["repeat"])] for r in by.get(num_key, [])
                  if den.get((r["prompt"], r["repeat"]))]
        if not ratios:
            return None
        lo, hi = _spread(ratios)
        return {"median": _median(ratios), "min": lo, "max": hi, "n": len(ratios)}

    per_k = {}
    for k in ks:
        per_k[str(k)] = {
            "specli_vs_native": paired(f"specli:model:{k}", f"native:draft-simple:{k}"),
            "specli_vs_specli_target": paired(f"specli:model:{k}", "specli:target:0"),
            "native_vs_native_target": paired(f"native:draft-simple:{k}", "native:target:0"),
            "native_vs_specli_target": paired(f"native:draft-simple:{k}", "specli:target:0"),
        }
        if calib is not None and calib.t_draft is not None:
            hist: list[int] = []  # rounds by accepted count, over all of specli's runs at K
            for r in by.get(f"specli:model:{k}", []):
                for a, n in enumerate(r.get("accepted_hist") or []):
                    hist += [0] * (a + 1 - len(hist))
                    hist[a] += n
            per_k[str(k)]["decode_cost_model"] = decode_cost_model(hist, k, calib.t_v, calib.t_db)
    out = {"variants": variants, "per_k": per_k,
           "target_alone_specli_vs_native": paired("specli:target:0", "native:target:0"),
           "calibration": calib.to_dict() if calib is not None else None}
    if ngram_ks is not None:
        out["ngram"] = {
            "native_ngram_vs_specli_target": paired("native:ngram-simple:12", "specli:ngram-target:0"),
        }
        for nk in ngram_ks:
            for mode in ("ngram", "auto"):
                out["ngram"][f"specli_{mode}_{nk}_vs_specli_target"] = paired(
                    f"specli:{mode}:{nk}", "specli:ngram-target:0")
                out["ngram"][f"specli_{mode}_{nk}_vs_native_ngram"] = paired(
                    f"specli:{mode}:{nk}", "native:ngram-simple:12")
    out["text"] = text_agreement(all_rows)
    foreign = [r["foreign_cpu"] for r in all_rows if r.get("foreign_cpu") is not None]
    out["noise"] = {"max_foreign": max_foreign, "excluded_groups": sorted(map(list, noisy)),
                    "foreign_cpu_median": _median(foreign),
                    "foreign_cpu_max": max(foreign) if foreign else None}
    return out


def text_agreement(rows: list[dict]) -> dict:
    """How often specli's greedy text equals native's (and specli K's equals specli K=0)."""
    checked = [r for r in rows if r.get("text_match") is not None]
    diffs = [r for r in checked if not r["text_match"]["same"]]
    texts: dict[str, set] = {}
    for r in rows:
        if r.get("text") is not None:
            texts.setdefault(f"{r['prompt']} {variant_key(r)}", set()).add(r["text"])
    return {"compared": len(checked), "differ": len(diffs),
            "varies_across_repeats": sorted(k for k, v in texts.items() if len(v) > 1),
            "examples": [{"prompt": r["prompt"], "engine": r["engine"], "mode": r["mode"],
                          "k": r["k"], "vs": r.get("text_vs"), **r["text_match"]}
                         for r in diffs[:10]]}


def _fmt(x, spec=".1f", suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _ratio(d):
    if not d:
        return "-"
    return f"{d['median']:.2f}× [{d['min']:.2f}–{d['max']:.2f}]"


def format_table(summary: dict, ks: list) -> str:
    v = summary["variants"]

    def tps(key):
        e = v.get(key)
        return _fmt(e and e["tok_s_median"])

    lines = []
    if not ks:
        return _format_rest(summary, v, tps, lines)
    lines.append("target alone:  native llama-bench tg {} tok/s · specli K=0 {} tok/s · "
                 "specli/native {}".format(tps("native:target:0"), tps("specli:target:0"),
                                           _ratio(summary.get("target_alone_specli_vs_native"))))
    lines.append("")
    hdr = f"{'K':>2}  {'native tok/s':>12}  {'specli tok/s':>12}  {'specli/native':>22}  " \
          f"{'model':>5}  {'specli/K0':>22}  {'native/bench-tg':>22}  {'acc nat/spc':>11}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for k in ks:
        pk = summary["per_k"][str(k)]
        nk, sk = f"native:draft-simple:{k}", f"specli:model:{k}"
        acc = "{}/{}".format(_fmt(v.get(nk, {}).get("accept_rate_median"), ".2f"),
                             _fmt(v.get(sk, {}).get("accept_rate_median"), ".2f"))
        model = pk.get("decode_cost_model")
        lines.append(f"{k:>2}  {tps(nk):>12}  {tps(sk):>12}  {_ratio(pk['specli_vs_native']):>22}  "
                     f"{_fmt(model and model['ratio'], '.2f', '×'):>5}  "
                     f"{_ratio(pk['specli_vs_specli_target']):>22}  "
                     f"{_ratio(pk['native_vs_native_target']):>22}  {acc:>11}")
    cal = summary.get("calibration")
    if cal and cal.get("t_draft_batch"):
        tv = " ".join(f"{1e3 * t:.0f}" for t in cal["t_verify"])
        db = " ".join(f"{1e3 * cal['t_draft_batch'][str(n)]:.0f}" for n in range(1, len(cal["t_verify"]) + 1)
                      if str(n) in cal["t_draft_batch"])
        lines.append(f"model: specli/native if both loops spent time only in llama_decode, from the "
                     f"calibrated costs (ms) t_v(1..) {tv} · draft t_d(1..) {db} and specli's "
                     f"acceptance; native's draft also decodes each verified batch (K+1 tokens) once")
    return _format_rest(summary, v, tps, lines)


def _format_rest(summary: dict, v: dict, tps, lines: list[str]) -> str:
    if "ngram" in summary:
        lines.append("")
        lines.append("prompt lookup (edit suite): native ngram-simple {} tok/s · specli K=0 {} tok/s "
                     "· native/specli-K0 {}".format(tps("native:ngram-simple:12"),
                                                    tps("specli:ngram-target:0"),
                                                    _ratio(summary["ngram"]["native_ngram_vs_specli_target"])))
        for key, val in summary["ngram"].items():
            if key.startswith("specli_") and val:
                lines.append(f"  {key:<40} {_ratio(val)}")
        for key in sorted(v):
            if key.startswith(("specli:ngram:", "specli:auto:")):
                lines.append(f"  {key:<40} {tps(key)} tok/s")
    nz = summary.get("noise")
    if nz:
        lines.append("")
        lines.append(f"other processes' CPU share during runs: median {_fmt(nz['foreign_cpu_median'], '.1%')}, "
                     f"max {_fmt(nz['foreign_cpu_max'], '.1%')}"
                     + (f"; left out (> {nz['max_foreign']:.0%}): {len(nz['excluded_groups'])} "
                        f"prompt×repeat groups" if nz["max_foreign"] is not None else ""))
    t = summary["text"]
    lines.append("")
    lines.append(f"greedy text: {t['compared'] - t['differ']}/{t['compared']} runs agree "
                 f"(over the common length)")
    if t.get("varies_across_repeats"):
        lines.append("  same settings, different text across repeats: "
                     + ", ".join(t["varies_across_repeats"]))
    for ex in t["examples"]:
        lines.append(f"  differ: {ex['prompt']} {ex['engine']}:{ex['mode']}:K{ex['k']} vs "
                     f"{ex['vs']} at char {ex['first_diff']}: {ex['context']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


def cpu_busy_seconds() -> float | None:
    """Machine-wide busy CPU seconds so far (all cores), from /proc/stat; None if unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def foreign_share(busy0, busy1, own_cpu: float, wall: float) -> float | None:
    """Share of the machine's CPU used by *other* processes during a run (0 = quiet).

    (machine busy seconds - the run's own CPU seconds) / (wall seconds x cores).
    """
    if busy0 is None or busy1 is None or wall <= 0:
        return None
    return max(0.0, (busy1 - busy0 - own_cpu) / (wall * (os.cpu_count() or 1)))


def read_hwm_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a running process, from /proc; None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_native(cmd: list[str], env: dict, timeout: float = 600) -> tuple[int, str, str, float | None, float | None]:
    """Run a llama.cpp tool; return (rc, stdout, stderr, peak RSS MiB, foreign CPU share).

    Peak RSS is polled from /proc (VmHWM) every 50 ms: wait4's ru_maxrss is no good here,
    since a child started by vfork + exec inherits this process's high-water mark.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, t0 = cpu_busy_seconds(), time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        hwm = None
        try:
            while True:
                h = read_hwm_mib(p.pid)
                if h is not None and h > (hwm or 0):
                    hwm = h
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:  # Ctrl-C: never leave a llama.cpp process running
            p.kill()
            os.wait4(p.pid, 0)
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        foreign = foreign_share(busy0, cpu_busy_seconds(), ru.ru_utime + ru.ru_stime,
                                time.monotonic() - t0)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), hwm, foreign)


@dataclass
class Setup:
    bin: Path
    target: Path
    draft: Path
    n: int
    threads: int
    draft_threads: int
    ctx: int
    env: dict = field(default_factory=dict)
    log: list = field(default_factory=list)  # exact commands run (first of each kind)

    def tool(self, name: str) -> str:
        return str(self.bin / name)


def native_spec_cmd(s: Setup, prompt_text: str, spec_type: str, k: int) -> list[str]:
    cmd = [s.tool("llama-speculative-simple"), "-m", str(s.target)]
    if spec_type == "draft-simple":
        cmd += ["-md", str(s.draft), "--spec-draft-p-min", "0", "--spec-draft-n-min", "0"]
    cmd += ["--spec-type", spec_type, "--spec-draft-n-max", str(k), "-p", prompt_text,
            "--no-escape", "-n", str(s.n), "--temp", "0", "--seed", "0", "-c", str(s.ctx),
            "-t", str(s.threads), "-tb", str(s.threads)]
    if spec_type == "draft-simple":
        cmd += ["-td", str(s.draft_threads), "-tbd", str(s.draft_threads)]
    return cmd


def _log_cmd(s: Setup, kind: str, cmd: list[str]) -> None:
    if not any(k == kind for k, _ in s.log):
        shown = ["<rendered prompt>" if i and cmd[i - 1] == "-p" and len(c) > 40 else c
                 for i, c in enumerate(cmd)]
        s.log.append((kind, "LD_LIBRARY_PATH=" + str(s.bin) + " " + shlex.join(shown)))


def native_spec(s: Setup, prompt, prompt_text: str, n_prompt: int, spec_type: str, k: int) -> dict:
    cmd = native_spec_cmd(s, prompt_text, spec_type, k)
    _log_cmd(s, f"native {spec_type}", cmd)
    rc, out, err, rss, foreign = run_native(cmd, s.env)
    dec = parse_decoded(err + out)
    if rc != 0 or dec is None:
        raise RuntimeError(f"{cmd[0]} failed (rc={rc}):\n{err[-2000:]}")
    n_tok, secs = dec
    enc = parse_encoded(err + out)
    acc = parse_acceptance(err + out)
    text = extract_generated(out, prompt_text)
    return {"engine": "native", "mode": spec_type, "k": k, "tokens": n_tok, "seconds": secs,
            "tok_s": n_tok / secs if secs > 0 else None, "prompt_tokens": enc,
            "prompt_tokens_match": enc == n_prompt,
            "accept_rate": (acc[1] / acc[0]) if acc and acc[0] else None,
            "peak_rss_mib": rss, "text": text, "foreign_cpu": foreign}


def native_bench(s: Setup, depth: int = 0) -> dict:
    """llama-bench tg: the target alone, N tokens after `depth` cached tokens (the prompt's)."""
    cmd = [s.tool("llama-bench"), "-m", str(s.target), "-p", "0", "-n", str(s.n), "-d", str(depth),
           "-t", str(s.threads), "-r", "1", "-o", "json"]
    _log_cmd(s, "native llama-bench", cmd)
    rc, out, err, rss, foreign = run_native(cmd, s.env)
    tps = parse_llama_bench(out)
    if rc != 0 or tps is None:
        raise RuntimeError(f"llama-bench failed (rc={rc}):\n{err[-2000:]}")
    return {"engine": "native", "mode": "target", "k": 0, "tokens": s.n, "seconds": s.n / tps,
            "tok_s": tps, "peak_rss_mib": rss, "text": None, "foreign_cpu": foreign}


def _own_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Specli:
    """Both models loaded once; each run builds a fresh drafter and policy, like `specli run`
    (--k auto starts from the costs remembered on this machine, see specli.core.costcache:
    `specli bench` once fills them; SPECLI_COST_CACHE=off measures a cold start)."""

    def __init__(self, s: Setup, load_draft: bool = True, fresh_cache: bool = True) -> None:
        from specli.config import RuntimeConfig, SamplingConfig, SpecConfig
        from specli.session import Generation, ModelPaths, load_models

        paths = ModelPaths(s.target, s.draft)
        rt = RuntimeConfig(n_ctx=s.ctx, n_threads=s.threads, draft_n_threads=s.draft_threads)
        self.loaded = load_models(paths, rt, load_draft=load_draft)
        self.gen = Generation(self.loaded, paths, SamplingConfig(temperature=0.0),
                              SpecConfig(k=0, max_tokens=s.n), "model")
        self.n = s.n
        self.fresh_cache = fresh_cache
        self.sampler = None  # CostSampler, once sample_costs runs

    def sample_costs(self, tokens: list[int], n_max: int, reps: int) -> None:
        """More samples of t_v(1..n_max) and of the draft's batches of 1..n_max tokens (one
        logits row), decoded after `tokens`, for the decode-cost model (see
        decode_cost_model); the caches end as they began."""
        from specli.bench.calibration import CostSampler
        from specli.config import SamplingConfig

        if self.sampler is None:
            self.sampler = CostSampler(self.loaded.target, self.loaded.draft, n_max,
                                       SamplingConfig(temperature=0.0), self.loaded.n_vocab,
                                       draft_sizes=range(1, n_max + 1))
        self.sampler.sample(tokens, reps)

    def calibration(self):
        return self.sampler.result() if self.sampler is not None else None

    def tokens(self, text: str) -> tuple[list[int], str]:
        from specli.prompt import ChatTemplate, tokenize_chat

        tpl = ChatTemplate.of(self.loaded.target)
        messages = [{"role": "user", "content": text}]
        return tokenize_chat(self.loaded.target, tpl, messages), tpl.render(messages)

    def run(self, tokens: list[int], drafter: str, k) -> dict:
        from specli.config import SpecConfig
        from specli.session import make_drafter

        spec = SpecConfig(k=k, max_tokens=self.n, seed=0, drafter=drafter)
        # A fresh drafter each run, as `specli run` has; --k auto starts from the costs
        # remembered on this machine and keeps what it measured (Generation.generate).
        d = make_drafter(self.loaded, drafter, self.gen.sampling) if k != 0 else None
        if self.fresh_cache:  # like each native run: empty KV caches (the prefill is not timed)
            for m in (self.loaded.target, self.loaded.draft):
                if m is not None:
                    m.reset()
        busy0, t0, own0 = cpu_busy_seconds(), time.monotonic(), _own_cpu()
        done, _ = self.gen.collect(self.gen.generate(tokens, spec=spec, drafter=d))
        st = done.stats
        return {"engine": "specli", "mode": "target" if k == 0 else drafter, "k": k,
                "tokens": st.new_tokens, "seconds": st.decode_seconds, "tok_s": st.tokens_per_s,
                "prompt_tokens": len(tokens), "accept_rate": st.acceptance_rate if k else None,
                "python_share": st.python_share, "rounds": st.rounds, "text": done.text,
                "accepted_hist": list(st.accepted_hist),
                "stop": done.stop_reason,
                "foreign_cpu": foreign_share(busy0, cpu_busy_seconds(), _own_cpu() - own0,
                                             time.monotonic() - t0)}

    def close(self) -> None:
        self.loaded.close()


def _check_text(row: dict, ref_text: str | None, vs: str) -> None:
    if row.get("text") is None or ref_text is None:
        row["text_match"] = None
        return
    row["text_match"] = compare_texts(row["text"], ref_text).to_dict()
    row["text_vs"] = vs


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_draft_comparison(s: Setup, sp: Specli, prompts, ks, repeats: int) -> list[dict]:
    rows: list[dict] = []
    rendered = [sp.tokens(p.prompt) for p in prompts]
    first_tokens, first_text = rendered[0]
    _progress("warm-up (dropped)")
    native_spec(s, prompts[0], first_text, len(first_tokens), "draft-simple", ks[0])
    sp.run(first_tokens, "model", ks[0])
    sp.run(first_tokens, "model", 0)
    if sp.loaded.draft is not None:  # decode costs for the model column; again every repeat
        _progress("calibrating decode costs")
        sp.sample_costs(first_tokens, max(ks) + 1, reps=3)
    for r in range(repeats):
        if r and sp.loaded.draft is not None:
            sp.sample_costs(first_tokens, max(ks) + 1, reps=1)
        for p, (tokens, text) in zip(prompts, rendered):
            tag = {"prompt": p.id, "repeat": r}
            _progress(f"repeat {r + 1}/{repeats} · {p.id} · target alone")
            rows.append({**native_bench(s, len(tokens) - 1), **tag})
            base = {**sp.run(tokens, "model", 0), **tag}
            rows.append(base)
            for k in ks:
                _progress(f"repeat {r + 1}/{repeats} · {p.id} · K={k}")
                nat = {**native_spec(s, p, text, len(tokens), "draft-simple", k), **tag}
                spc = {**sp.run(tokens, "model", k), **tag}
                _check_text(spc, nat["text"], f"native:draft-simple:{k}")
                nat["text_match"] = None
                # specli K against specli K=0 (exactness of the engine itself)
                spc["text_match_k0"] = compare_texts(spc["text"], base["text"]).to_dict()
                if not nat["prompt_tokens_match"]:
                    _progress(f"  warning: llama.cpp tokenized {nat['prompt_tokens']} prompt "
                              f"tokens, specli {len(tokens)}")
                rows += [nat, spc]
            _check_text(base, rows[-2]["text"] if ks else None, "native (last K)")
    return rows


def run_ngram_comparison(s: Setup, sp: Specli, prompts, ngram_ks, repeats: int) -> list[dict]:
    rows: list[dict] = []
    rendered = [sp.tokens(p.prompt) for p in prompts]
    t0, txt0 = rendered[0]
    _progress("ngram warm-up (dropped)")
    native_spec(s, prompts[0], txt0, len(t0), "ngram-simple", 12)
    sp.run(t0, "auto", ngram_ks[0])
    for r in range(repeats):
        for p, (tokens, text) in zip(prompts, rendered):
            tag = {"prompt": p.id, "repeat": r}
            _progress(f"ngram repeat {r + 1}/{repeats} · {p.id}")
            base = {**sp.run(tokens, "model", 0), **tag, "mode": "ngram-target"}
            nat = {**native_spec(s, p, text, len(tokens), "ngram-simple", 12), **tag}
            _check_text(base, nat["text"], "native:ngram-simple:12")
            rows += [base, nat]
            for nk in ngram_ks:
                for mode in ("ngram", "auto"):
                    row = {**sp.run(tokens, mode, nk), **tag}
                    _check_text(row, nat["text"], "native:ngram-simple:12")
                    rows.append(row)
    return rows


# --------------------------------------------------------------------------- main


def _parse_ks(text: str) -> list[int]:
    ks = [int(x) for x in text.split(",") if x.strip()]
    if not ks or any(k < 1 for k in ks):
        raise SystemExit("--k: give positive integers, e.g. 2,3,4")
    return ks


def _parse_ngram_ks(text: str) -> list:
    return [x.strip() if x.strip() == "auto" else int(x) for x in text.split(",") if x.strip()]


def _load_prompts(spec: str, limit: int | None):
    from specli.bench.suites import SUITE_NAMES, load_prompts_file, load_suite

    prompts = load_suite(spec) if spec in (*SUITE_NAMES, "all") else load_prompts_file(spec)
    return prompts[:limit] if limit else prompts


def _default_pair() -> tuple[Path, Path]:
    from specli.session import resolve_paths

    paths = resolve_paths(pair=None, target=None, draft=None, progress=False)
    if paths.draft is None:
        raise SystemExit("the default pair has no draft model; give --target and --draft")
    return paths.target, paths.draft


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="specli vs llama.cpp's llama-speculative-simple (and llama-bench), same pair, "
                    "same K, temperature 0.",
        epilog="Example: python benchmarks/vs_llama_cpp.py --llama-bin "
               "\"$(../shared/anchors/build-llama-cpp-tools)\" --k 2,3,4 --limit 2 --repeats 3")
    ap.add_argument("--llama-bin", type=Path, required=True,
                    help="llama.cpp's bin folder (llama-speculative-simple, llama-bench)")
    ap.add_argument("--target", type=Path, help="target GGUF (default: the default pair's)")
    ap.add_argument("--draft", type=Path, help="draft GGUF (default: the default pair's)")
    ap.add_argument("--k", default="2,3,4", help="draft lengths to compare (default 2,3,4)")
    ap.add_argument("--prompts", default="code", help="a suite name or a JSONL file (default code)")
    ap.add_argument("--limit", type=int, default=2, help="first N prompts (default 2; 0 = all)")
    ap.add_argument("--n", type=int, default=128, help="new tokens per run (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the target (default 2)")
    ap.add_argument("--draft-threads", type=int, default=None,
                    help="threads of the draft (default: --threads)")
    ap.add_argument("--ctx", type=int, default=4096, help="context size of both (default 4096)")
    ap.add_argument("--json", type=Path, help="write rows and summary here")
    ap.add_argument("--ngram", action="store_true",
                    help="also compare prompt lookup: native ngram-simple vs specli ngram/auto")
    ap.add_argument("--ngram-prompts", default="edit", help="suite or JSONL for --ngram (default edit)")
    ap.add_argument("--ngram-k", default="auto", help="specli K for --ngram runs (default auto)")
    ap.add_argument("--reuse-cache", action="store_true",
                    help="let specli reuse KV caches across runs (default: empty them before each "
                         "run, as each native run starts fresh)")
    ap.add_argument("--max-foreign", type=float, default=None,
                    help="leave out prompt×repeat groups where other processes used more than "
                         "this share of the CPU during a run (e.g. 0.1); all runs stay in the JSON")
    ap.add_argument("--no-draft-comparison", action="store_true",
                    help="skip the draft-model comparison (with --ngram: only prompt lookup)")
    return ap


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, _raise_interrupt)  # kill(1) stops the llama.cpp child too
    ks = _parse_ks(args.k)
    ngram_ks = _parse_ngram_ks(args.ngram_k) if args.ngram else None
    bin_dir = args.llama_bin.expanduser().resolve()
    for tool in ("llama-speculative-simple", "llama-bench"):
        if not (bin_dir / tool).exists():
            raise SystemExit(f"{bin_dir / tool} not found (build it with build-llama-cpp-tools)")
    if args.target and args.draft:
        target, draft = args.target, args.draft
    else:
        target, draft = _default_pair()
    env = dict(os.environ, LD_LIBRARY_PATH=f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    s = Setup(bin_dir, Path(target), Path(draft), args.n, args.threads,
              args.draft_threads or args.threads, args.ctx, env)
    load_before = os.getloadavg()
    t0 = time.time()
    sp = Specli(s, fresh_cache=not args.reuse_cache)
    rows: list[dict] = []
    try:
        if not args.no_draft_comparison:
            rows += run_draft_comparison(s, sp, _load_prompts(args.prompts, args.limit or None),
                                         ks, args.repeats)
        if args.ngram:
            rows += run_ngram_comparison(s, sp, _load_prompts(args.ngram_prompts, args.limit or None),
                                         ngram_ks, args.repeats)
        calib = sp.calibration()
    finally:
        sp.close()
    from specli.bench.machine import peak_rss_mib

    summary = summarize(rows, [] if args.no_draft_comparison else ks, ngram_ks, args.max_foreign,
                        calib)
    files_mib = (s.target.stat().st_size + s.draft.stat().st_size) / 2**20
    summary["machine"] = {"load_before": [round(x, 2) for x in load_before],
                          "load_after": [round(x, 2) for x in os.getloadavg()],
                          "seconds": round(time.time() - t0, 1), "threads": args.threads,
                          "draft_threads": s.draft_threads, "ctx": args.ctx, "n": args.n,
                          "repeats": args.repeats}
    native_rss = [r["peak_rss_mib"] for r in rows
                  if r["engine"] == "native" and r["mode"] == "draft-simple" and r["peak_rss_mib"]]
    summary["memory"] = {"files_mib": round(files_mib, 1), "specli_peak_rss_mib": round(peak_rss_mib(), 1),
                         "native_spec_peak_rss_mib": round(max(native_rss), 1) if native_rss else None}
    summary["commands"] = dict(s.log)
    print(f"specli vs llama.cpp · {s.target.name} ← {s.draft.name} · temperature 0 · "
          f"{args.n} tokens · {args.threads}+{s.draft_threads} threads · ctx {args.ctx}")
    print(f"load {summary['machine']['load_before']} -> {summary['machine']['load_after']}, "
          f"{summary['machine']['seconds']} s")
    print(format_table(summary, summary["per_k"] and ks or []))
    m = summary["memory"]
    print(f"\npeak RSS: specli {m['specli_peak_rss_mib']} MiB (process, both models) · native "
          f"speculative {m['native_spec_peak_rss_mib']} MiB · GGUF files {m['files_mib']} MiB")
    for kind, cmd in s.log:
        print(f"$ {cmd}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
