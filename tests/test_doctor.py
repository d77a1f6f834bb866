"""`specli doctor`: the report's schema, failures as lines (never a traceback), the verdict."""

from __future__ import annotations

import json

import pytest

from test_cli_run import specli

TOP = {"versions", "cpu", "gpu", "threads", "default_pair", "buffer_types", "python_executable"}


def test_doctor_json_schema_without_probe():
    r = specli("doctor", "--json", "--no-probe")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert TOP <= set(rep) and "probe" not in rep
    assert rep["versions"]["specli"] and rep["versions"]["llama_cpp_python"]
    assert "CPU :" in rep["cpu"]["llama_cpp_system_info"]
    assert isinstance(rep["gpu"]["offload_supported"], bool)
    assert rep["gpu"]["default_n_gpu_layers"] == (-1 if rep["gpu"]["offload_supported"] else 0)
    assert isinstance(rep["buffer_types"]["extra_bufts"], list)
    assert {"target", "draft", "name"} <= set(rep["default_pair"])


def test_doctor_text_has_a_line_per_part():
    r = specli("doctor", "--no-probe")
    assert r.returncode == 0, r.stderr
    for name in ("versions", "cpu", "llama.cpp", "gpu", "threads", "default pair", "buffer types"):
        assert any(line.startswith(name) for line in r.stdout.splitlines()), name


def test_a_failing_part_is_one_line_not_a_traceback(monkeypatch):
    from specli import doctor
    from specli.cli.doctor import render_lines

    def boom():
        raise RuntimeError("no driver\nsecond line")

    monkeypatch.setattr(doctor, "gpu", boom)
    rep = doctor.collect(probe_models=False)
    assert rep["gpu"] == {"error": "RuntimeError: no driver"}
    assert any(line.startswith("gpu") and "failed: RuntimeError: no driver" in line
               for line in render_lines(rep))


@pytest.mark.parametrize("t_d, pays", [(0.004, True), (0.030, False)])
def test_auto_verdict_from_costs(t_d, pays):
    from specli.doctor import auto_verdict

    flat = {1: 0.030, 2: 0.031, 3: 0.032, 4: 0.033, 5: 0.034}  # a GPU-like verify curve
    steep = {n: 0.030 * n for n in range(1, 6)}  # verifying n costs n target steps
    v = auto_verdict(flat if pays else steep, t_d)
    assert ("pays when acceptance exceeds" in v["verdict"]) == pays
    assert set(v["best_by_alpha"]) == {"0.6", "0.8", "0.9", "1.0"}


@pytest.mark.real
def test_doctor_probe_on_the_real_pair(real_pair):
    r = specli("doctor", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    p = rep["probe"]
    assert "error" not in p, p
    assert p["t_verify_ms"]["1"] > 0 and p["t_verify_ms"]["4"] > 0 and p["t_draft_ms"] > 0
    bn = rep["batch_numerics"]
    assert set(bn) >= {"tv", "max_logit_diff", "invariant_up_to"}
    assert 1 <= bn["invariant_up_to"] <= bn["n_max"]
    if "AMX" in rep["buffer_types"]["extra_bufts"]:
        assert p["target"]["placement"] == "avoid-amx"


@pytest.mark.parametrize("given, spincount, policy", [
    ({}, None, None),  # specli sets nothing: libgomp's own spin (threads follow the load instead)
    ({"OMP_WAIT_POLICY": "passive"}, None, "passive"),  # the user's policy is left alone
    ({"GOMP_SPINCOUNT": "50000"}, "50000", None),  # and so is the user's spin count
])
def test_openmp_wait_settings_are_the_users_own(given, spincount, policy):
    """What llama.cpp's workers are started with, as doctor reports it: in a fresh process,
    because libgomp reads the environment once, when it loads."""
    import json as _json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import json, os; from specli.llama.backend import _llama; _llama(); "
            "from specli.doctor import threads; print(json.dumps(threads()['env']))")
    out = subprocess.run([sys.executable, "-c", code], env=env | given, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    reported = _json.loads(out.stdout.strip().splitlines()[-1])
    assert reported.get("GOMP_SPINCOUNT") == spincount
    assert reported.get("OMP_WAIT_POLICY") == policy
