"""`specli serve --parallel N`: concurrent requests batched in one context, through the
official openai SDK, each answered as the target alone would answer it."""

from __future__ import annotations

import json
import time

import pytest

from serveutil import request
from test_batch import together as at_once
from test_serve import chat, specli_run, start

openai = pytest.importorskip("openai")

PROMPTS = ["Write a haiku about the sea", "Hello, world! How are you today?",
           "List three colours", "def add(a, b):"]


@pytest.fixture(scope="module")
def model_args(tiny_target, tiny_draft):
    return ["--target", tiny_target, "--draft", tiny_draft, "--threads", "1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-parallel")


@pytest.fixture(scope="module")
def server(model_args, workdir):
    s = start(model_args, workdir, "par", "--ctx", "512", "--parallel", "3")
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


def test_health_reports_the_slots(server):
    status, _, body = request(server, "GET", "/health")
    assert status == 200 and b'"slots":3' in body.replace(b" ", b"")
    assert "3 parallel" in server.log


def test_concurrent_greedy_replies_equal_each_target_alone(server, model_args):
    """Four clients at once on three slots (one waits), each with its own K: every reply is
    the target's own greedy reply (K = 0, alone), and the steps were shared."""
    client = server.client()
    ks = [0, 4, "auto", 2]
    calls = [lambda p=p, k=k: chat(client, p, temperature=0, max_tokens=40,
                                   extra_body={"speculative": {"k": k}})
             for p, k in zip(PROMPTS, ks)]
    before = json.loads(request(server, "GET", "/health")[2])["steps_shared"]
    replies = at_once(calls)
    assert json.loads(request(server, "GET", "/health")[2])["steps_shared"] > before
    for p, r in zip(PROMPTS, replies):
        base = specli_run(*model_args, "--ctx", "512", "--k", "0", "--temperature", "0",
                          "-n", "40", p)
        assert r.choices[0].message.content == base["text"], p
    streams = [lambda p=p: "".join(c.choices[0].delta.content or "" for c in chat(
        client, p, temperature=0, max_tokens=40, stream=True)) for p in PROMPTS[:3]]
    assert at_once(streams) == [r.choices[0].message.content for r in replies[:3]]


def test_strict_requests_beside_others_stay_exact(server, model_args):
    client = server.client()
    calls = [lambda: chat(client, PROMPTS[0], temperature=0, max_tokens=40,
                          extra_body={"speculative": {"k": 4, "strict": True}}),
             lambda: chat(client, PROMPTS[1], temperature=0, max_tokens=60)]
    strict, _ = at_once(calls)
    base = specli_run(*model_args, "--ctx", "512", "--k", "0", "--temperature", "0", "-n",
                      "40", PROMPTS[0])
    assert strict.choices[0].message.content == base["text"]


def test_a_disconnect_frees_its_slot_while_others_go_on(server):
    """A streamed request whose client leaves is cancelled at its next round; the others
    finish, and the server answers again on every slot."""
    client = server.client()

    def leave():
        stream = chat(client, PROMPTS[1], temperature=0.8, max_tokens=200, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                stream.close()
                return "left"

    out = at_once([leave, lambda: chat(client, PROMPTS[2], temperature=0, max_tokens=30)])
    assert out[0] == "left" and out[1].choices[0].message.content
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = request(server, "GET", "/health")[2].replace(b" ", b"")
        if b'"slots_idle":3' in body:
            break
        time.sleep(0.1)
    assert b'"slots_idle":3' in body
    again = at_once([lambda p=p: chat(client, p, temperature=0, max_tokens=8) for p in PROMPTS[:3]])
    assert all(r.choices[0].message.content is not None for r in again)


def test_bad_parallel_is_a_one_line_error(model_args):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "specli", "serve", *map(str, model_args),
                        "--parallel", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--parallel must be" in r.stderr
    assert "Traceback" not in r.stderr
