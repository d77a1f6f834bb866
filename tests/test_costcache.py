"""Costs remembered between runs: the file, the policy seeding, and `run`/`bench` using it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from specli.core.costcache import CostCache, default_path, model_key
from specli.core.policy import remember, seed_policy
from specli.core.costs import VerifyCost
from specli.core.policy import AutoK


def fake_model(path: Path, threads: int = 2):
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return SimpleNamespace(path=path, n_threads=threads, n_gpu_layers=0, n_batch=512)


# --- the file --------------------------------------------------------------------------


def test_default_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    assert default_path() is None
    monkeypatch.setenv("SPECLI_COST_CACHE", str(tmp_path / "c.json"))
    assert default_path() == tmp_path / "c.json"
    monkeypatch.delenv("SPECLI_COST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "specli" / "costs.json"


def test_round_trip_blend_and_replace(tmp_path):
    path = tmp_path / "sub" / "costs.json"
    cache = CostCache(path)
    cache.update("m", {1: 0.040, 4: 0.120}, t_draft=0.020)
    cache.save()
    again = CostCache(path)
    assert again.t_verify("m") == {1: 0.040, 4: 0.120} and again.t_draft("m") == 0.020
    again.update("m", {1: 0.060}, t_draft=0.030)  # an even mix with what was there
    assert again.t_verify("m")[1] == pytest.approx(0.050)
    assert again.t_draft("m") == pytest.approx(0.025)
    again.update("m", {4: 0.200}, replace=True)
    assert again.t_verify("m")[4] == 0.200
    assert again.t_verify("other") == {} and again.t_draft("other") is None


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"version": 99, "models": {}}',
                                     '{"version": 1, "models": {"m": {"t_verify": {"x": 1, "2": -1, "3": "a"}}}}'])
def test_corrupt_or_foreign_file_is_ignored(tmp_path, content):
    path = tmp_path / "costs.json"
    path.write_text(content)
    cache = CostCache(path)
    assert cache.t_verify("m") == {}
    cache.update("m", {1: 0.03})
    cache.save()  # and it is replaced by a valid one
    assert json.loads(path.read_text())["models"]["m"]["t_verify"] == {"1": 0.03}


def test_unwritable_location_never_fails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = CostCache(blocker / "costs.json")  # its parent is a file: cannot be created
    cache.update("m", {1: 0.03})
    cache.save()
    assert not (tmp_path / "file" / "costs.json").exists()
    CostCache(None).save()  # disabled: nothing to do


def test_save_keeps_entries_another_process_wrote(tmp_path):
    path = tmp_path / "costs.json"
    a, b = CostCache(path), CostCache(path)
    a.update("target-a", {1: 0.03})
    a.save()
    b.update("target-b", {1: 0.05})
    b.save()
    assert set(json.loads(path.read_text())["models"]) == {"target-a", "target-b"}


def test_key_depends_on_file_and_threads(tmp_path):
    a = fake_model(tmp_path / "a.gguf")
    assert model_key(a) == model_key(fake_model(tmp_path / "a.gguf"))
    assert model_key(a) != model_key(fake_model(tmp_path / "a.gguf", threads=4))
    assert model_key(a) != model_key(fake_model(tmp_path / "b.gguf"))


# --- seeding the policy ----------------------------------------------------------------


def test_seeded_sizes_count_as_measured_but_not_as_this_runs_samples():
    verify = VerifyCost(8)
    verify.observe(1, 0.04)
    assert not verify.is_measured(5)
    verify.seed(5, 0.10)
    assert verify.is_measured(5) and verify(5) == 0.10
    assert verify.count(5) == 0 and verify.measured() == {1: 0.04}  # seeds are not re-saved
    verify.observe(5, 0.12)  # measured in this run: its own figure wins
    assert verify(5) == pytest.approx(0.12) and verify.measured() == {1: 0.04, 5: 0.12}
    verify.seed(99, 1.0)  # beyond the curve: ignored
    with pytest.raises(ValueError):
        verify.seed(2, float("nan"))


def test_remembered_costs_scale_with_this_runs_speed():
    """A slow moment raises the measured t_v(1); the remembered t_v(2..) and t_d must rise
    with it, or drafting looks cheap exactly when the machine is slow (it did: auto probed
    the draft model in runs where t_v(1) was 40% above the calibration, and lost 20%)."""
    auto = AutoK(8)
    curve = {1: 0.030, 2: 0.060, 3: 0.084, 4: 0.101}
    auto.seed(curve, t_draft=0.021)
    model = auto.model
    assert model.hopeless() and model.choose_k() == 0
    for _ in range(5):
        auto.verify.observe(1, 0.045)  # the machine is 1.5x slower now
    assert auto.verify.scale() == pytest.approx(1.5)
    assert auto.verify(3) == pytest.approx(0.084 * 1.5)
    assert model.t_draft == pytest.approx(0.021 * 1.5)
    assert model.hopeless() and model.choose_k() == 0


def test_remembered_curve_changes_the_ngram_choice(tmp_path):
    """A CPU step (a batch of 16 cheaper than 15) is used at once when remembered; without
    the memory the policy would first have to try the size. And what it measures is kept."""
    t1 = 0.04
    curve = {n: t1 * (1 + 0.45 * (n - 1)) for n in range(1, 33)}
    curve[16] = t1 * 6.0
    fresh = AutoK(8)
    for n in (1, 2, 4, 8):
        fresh.verify.observe(n, curve[n])
    seeded = AutoK(8)
    seeded.seed(curve, t_draft=0.02)
    assert seeded.ngram.best(64)[0] == 15
    assert seeded.model.t_draft == 0.02
    assert fresh.ngram.best(64)[0] != 15
    path = tmp_path / "c.json"
    cache = CostCache(path)
    target, draft = fake_model(tmp_path / "t.gguf"), fake_model(tmp_path / "d.gguf")
    seeded.verify.observe(1, 0.05)
    remember(seeded, cache, target, draft)
    stored = CostCache(path)
    assert stored.t_verify(model_key(target)) == {1: 0.05}  # only what the run measured
    fresh_policy = AutoK(8)
    seed_policy(fresh_policy, stored, target, draft)
    assert fresh_policy.verify(1) == 0.05


# --- through the CLI, with the tiny models ----------------------------------------------


def specli(*args, env):
    return subprocess.run([sys.executable, "-m", "specli", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "NO_COLOR": "1", **env})


def test_run_auto_remembers_costs_and_fixed_k_does_not(tiny_target, tiny_draft, tmp_path):
    path = tmp_path / "costs.json"
    env = {"SPECLI_COST_CACHE": str(path)}
    args = ["--target", tiny_target, "--draft", tiny_draft, "--threads", "1", "--ctx", "512",
            "--temperature", "0", "-n", "24", "--json", "Once upon a time"]
    r = specli("run", *args, "--k", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert not path.exists()
    r = specli("run", *args, "--k", "auto", env=env)
    assert r.returncode == 0, r.stderr
    models = json.loads(path.read_text())["models"]
    target_key = next(k for k in models if k.startswith(Path(tiny_target).name + "|"))
    assert "threads 1" in target_key
    assert models[target_key]["t_verify"]["1"] > 0
    off = specli("run", *args, "--k", "auto", env={"SPECLI_COST_CACHE": "off"})
    assert off.returncode == 0 and json.loads(off.stdout)["tokens"] == json.loads(r.stdout)["tokens"]


def test_bench_stores_its_calibration(tiny_target, tiny_draft, tmp_path):
    path = tmp_path / "costs.json"
    r = specli("bench", "--target", tiny_target, "--draft", tiny_draft, "--threads", "1",
               "--ctx", "512", "--temperature", "0", "--k", "0,auto", "--drafter", "ngram",
               "--prompts", _prompts(tmp_path), "--max-tokens", "8", "--warmup", "0",
               "--json", tmp_path / "out.json", env={"SPECLI_COST_CACHE": str(path)})
    assert r.returncode == 0, r.stderr
    calib = json.loads((tmp_path / "out.json").read_text())["summary"]["calibration"]["t_verify"]
    models = json.loads(path.read_text())["models"]
    stored = next(v for k, v in models.items() if k.startswith(Path(tiny_target).name + "|"))
    assert [stored["t_verify"][str(n)] for n in range(1, 33)] == pytest.approx(calib)


def _prompts(tmp_path: Path) -> Path:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "the cat sat on the mat, the cat sat"}) + "\n")
    return f


def test_catchup_cost_is_remembered_and_seeds_the_next_run(tmp_path):
    """The draft's catch-up cost per token a run measured is kept with the draft's entry, and
    the next run starts from it: with it dear, that run does not probe the draft at all."""
    path = tmp_path / "c.json"
    target, draft = fake_model(tmp_path / "t.gguf"), fake_model(tmp_path / "d.gguf")
    auto = AutoK(8)
    auto.verify.observe(1, 0.04)
    auto.model.observe_round(2, 0, 0.01, 0.08, catchup=(33, 0.005 + 32 * 0.004))
    assert auto.model.measured_catchup == pytest.approx(0.004, rel=0.3)
    remember(auto, CostCache(path), target, draft)
    stored = CostCache(path)
    assert stored.t_catchup(model_key(draft)) == pytest.approx(auto.model.measured_catchup)
    nxt = AutoK(8)
    seed_policy(nxt, stored, target, draft)
    assert nxt.model.t_catchup == pytest.approx(auto.model.measured_catchup)
    nxt.verify.observe(1, 0.04)
    assert nxt.model.probing_too_dear()  # 4 ms per token against a 40 ms target step
    stored.update(model_key(draft), t_catchup=0.0)  # free (a GPU): still kept, > 0
    assert 0 < stored.t_catchup(model_key(draft)) < 0.004
