"""Costs measured on this machine, remembered between runs so `--k auto` starts informed.

`--k auto` prices each draft length with the target's verify cost t_v(n) and the draft's
cost per token t_d. Those depend on the machine, the model files and the thread count,
not on the prompt, so a run need not rediscover them: without a remembered curve every
batch size has to be tried once before it can be priced, and on a CPU, where t_v(n) has
steps no smooth prior predicts, those trials cost more than a short answer gains.

One JSON file, `$XDG_CACHE_HOME/specli/costs.json` (default `~/.cache/specli/costs.json`):

    {"version": 1, "models": {KEY: {"t_verify": {"1": s, "2": s, ...}, "t_draft": s,
                                     "t_catchup": s}}}

(t_catchup: the draft's cost per token when it catches up after K = 0 rounds.)

KEY names the model file (name and size), the llama.cpp build, threads, GPU layers and
batch size. `specli bench` stores its full calibration; `run` and `chat` blend in what
each generation measured (an even mix with the old value, so one noisy run moves it
half way). `SPECLI_COST_CACHE=off` disables it; `SPECLI_COST_CACHE=PATH` moves it.
Reading or writing the file never fails a command: a missing, corrupt or unwritable
file only means starting from the priors, as before.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

VERSION = 1
OFF = {"off", "0", "no", "false", "none"}


def default_path() -> Path | None:
    """Where the cache lives, or None when SPECLI_COST_CACHE turns it off."""
    env = os.environ.get("SPECLI_COST_CACHE")
    if env is not None and env.strip():
        return None if env.strip().lower() in OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "specli" / "costs.json"


def model_key(model) -> str:
    """What a model's costs depend on: its file, the llama.cpp build and the runtime settings."""
    path = Path(model.path)
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    try:
        import llama_cpp

        build = getattr(llama_cpp, "__version__", "?")
    except Exception:  # noqa: BLE001 - the key only needs to be stable
        build = "?"
    key = (f"{path.name}|{size}|llama.cpp {build}|threads {getattr(model, 'n_threads', '?')}"
           f"|gpu_layers {getattr(model, 'n_gpu_layers', 0)}|batch {getattr(model, 'n_batch', '?')}")
    placement = getattr(model, "placement_key", "")  # which kernels run: AMX or not, say
    return f"{key}|{placement}" if placement else key


def _valid(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


class CostCache:
    """The cache file's contents; `save()` writes them back atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._models: dict[str, dict] = {}
        self.dirty = False
        if path is not None:
            self._models = self._read(path)

    @classmethod
    def open(cls) -> CostCache:
        return cls(default_path())

    @staticmethod
    def _read(path: Path) -> dict[str, dict]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return {}
        models = data.get("models")
        if not isinstance(models, dict):
            return {}
        clean: dict[str, dict] = {}
        for key, entry in models.items():  # keep only well-formed figures
            if not isinstance(entry, dict):
                continue
            table = entry.get("t_verify")
            table = {str(n): float(x) for n, x in table.items()
                     if str(n).isdigit() and int(n) >= 1 and _valid(x)} if isinstance(table, dict) else {}
            clean[str(key)] = {"t_verify": table}
            for name in ("t_draft", "t_catchup"):
                if _valid(entry.get(name)):
                    clean[str(key)][name] = float(entry[name])
            if isinstance(entry.get("numerics"), dict):  # checked on use (numerics.from_dict)
                clean[str(key)]["numerics"] = entry["numerics"]
        return clean

    def t_verify(self, key: str) -> dict[int, float]:
        """{n: seconds} remembered for this target (empty if none)."""
        entry = self._models.get(key, {})
        return {int(n): seconds for n, seconds in entry.get("t_verify", {}).items()}

    def t_draft(self, key: str) -> float | None:
        return self._models.get(key, {}).get("t_draft")

    def t_catchup(self, key: str) -> float | None:
        return self._models.get(key, {}).get("t_catchup")

    def numerics(self, key: str) -> dict | None:
        """The target's batch-numerics measurement remembered here (specli.core.numerics)."""
        return self._models.get(key, {}).get("numerics")

    def set_numerics(self, key: str, value: dict) -> None:
        self._models.setdefault(key, {})["numerics"] = value
        self.dirty = True

    def update(self, key: str, t_verify: Mapping[int, float] | None = None,
               t_draft: float | None = None, *, replace: bool = False,
               t_catchup: float | None = None) -> None:
        """Blend new measurements in (even mix with the old value), or replace them."""
        entry = self._models.setdefault(key, {})
        table = entry.setdefault("t_verify", {})
        for n, seconds in (t_verify or {}).items():
            if _valid(seconds):
                old = table.get(str(n))
                table[str(n)] = seconds if replace or not _valid(old) else (old + seconds) / 2
                self.dirty = True
        for name, new in (("t_draft", t_draft), ("t_catchup", t_catchup)):
            if new is not None and math.isfinite(new) and new >= 0:
                new = max(new, 1e-6)  # a free catch-up is still remembered (> 0 on disk)
                old = entry.get(name)
                entry[name] = new if replace or not _valid(old) else (old + new) / 2
                self.dirty = True

    def save(self) -> None:
        """Write the file if anything changed; errors are swallowed (the cache is optional)."""
        if self.path is None or not self.dirty:
            return
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            on_disk = self._read(self.path)  # another process may have written meanwhile
            on_disk.update(self._models)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".costs.", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": VERSION, "models": on_disk}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def store_measured(cache: CostCache | None, target, draft, t_verify: Mapping[int, float],
                   t_draft: float | None, t_catchup: float | None = None) -> None:
    """Blend what a generation measured into the cache and save it (see policy.remember)."""
    _store(cache, target, draft, t_verify, t_draft, replace=False, t_catchup=t_catchup)


def store_calibration(cache: CostCache | None, target, draft, t_verify, t_draft,
                      t_catchup: float | None = None) -> None:
    """Replace the remembered costs with a bench calibration (t_verify[n - 1] = t_v(n))."""
    _store(cache, target, draft, dict(enumerate(t_verify, start=1)), t_draft, replace=True,
           t_catchup=t_catchup)


def _store(cache, target, draft, t_verify, t_draft, *, replace: bool,
           t_catchup: float | None = None) -> None:
    if cache is None:
        return
    cache.update(model_key(target), t_verify, replace=replace)
    if draft is not None and (t_draft is not None or t_catchup is not None):
        cache.update(model_key(draft), t_draft=t_draft, t_catchup=t_catchup, replace=replace)
    cache.save()


PARALLEL_GAIN = 1.15
"""serve --parallel auto doubles the sequences while a shared step of twice the rows
gives at least this much more throughput: t_v(2n) <= 2 t_v(n) / PARALLEL_GAIN."""


def choose_parallel(t_verify: Mapping[int, float], n_max: int = 8) -> int:
    """Sequences per shared step that pay on this curve ({rows: seconds}, K = 0 rows): 1
    without the sizes to tell. On the 2-core CPU (t_v 68, 112, 141 ms at 1, 2, 4 rows,
    259 at 8) that is 4; on a GPU's nearly flat curve, n_max."""
    n = 1
    while 2 * n <= n_max and n in t_verify and 2 * n in t_verify:
        if t_verify[2 * n] > 2 * t_verify[n] / PARALLEL_GAIN:
            break
        n *= 2
    return n


def remembered_curve(cache: CostCache, path) -> dict[int, float]:
    """The fullest t_v curve remembered for the model file at `path`, whatever the runtime
    settings (threads, placement) it was measured with: for choosing before loading."""
    p = Path(path)
    try:
        start = f"{p.name}|{p.stat().st_size}|"
    except OSError:
        return {}
    curves = [cache.t_verify(key) for key in cache._models if key.startswith(start)]
    return max(curves, key=len, default={})
