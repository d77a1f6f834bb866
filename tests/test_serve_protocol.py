"""The server's pure parts: request validation, stop strings, and /health while loading."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")

from specli.config import SamplingConfig, SpecConfig  # noqa: E402
from specli.server.errors import ApiError  # noqa: E402
from specli.server.protocol import Defaults, parse_chat, parse_completion, parse_json  # noqa: E402
from specli.server.worker import StopScanner  # noqa: E402

DEFAULTS = Defaults(SamplingConfig(), SpecConfig(k="auto", max_tokens=256, drafter="auto"), "auto")
HI = [{"role": "user", "content": "Hi"}]


def test_a_field_left_out_takes_the_servers_default():
    job = parse_chat({"messages": HI, "temperature": 0, "speculative": {"k": 3}}, DEFAULTS)
    assert job.sampling == SamplingConfig(temperature=0.0)
    assert job.spec.k == 3 and job.spec.max_tokens == 256 and job.spec.seed == 0
    assert job.drafter == "auto" and job.stop == () and not job.stream


def test_max_completion_tokens_wins_and_is_named_in_errors():
    job = parse_chat({"messages": HI, "max_tokens": 5, "max_completion_tokens": 7}, DEFAULTS)
    assert job.spec.max_tokens == 7
    with pytest.raises(ApiError) as e:
        parse_chat({"messages": HI, "max_completion_tokens": 0}, DEFAULTS)
    assert e.value.param == "max_completion_tokens"


def test_messages_normalised():
    job = parse_chat({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "c", "name": "me"}]}, DEFAULTS)
    assert job.messages == ({"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "a\nb"},
                            {"role": "assistant", "content": ""},
                            {"role": "user", "content": "c"})


@pytest.mark.parametrize("stop, expected", [("x", ("x",)), (["a", "", "b"], ("a", "b")), (None, ())])
def test_stop_forms(stop, expected):
    assert parse_completion({"prompt": "p", "stop": stop}, DEFAULTS).stop == expected


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b'"s"', b'{"a": Infinity}', b"\x80"])
def test_malformed_json_is_400(raw):
    with pytest.raises(ApiError) as e:
        parse_json(raw)
    assert e.value.status == 400


def test_types_are_strict():
    for field, value in (("temperature", True), ("max_tokens", 2.5), ("stream", 1),
                         ("top_k", "4"), ("model", 3)):
        with pytest.raises(ApiError) as e:
            parse_chat({"messages": HI, field: value}, DEFAULTS)
        assert e.value.param == field, field


def chunks(scanner, texts):
    return [scanner.feed(t) for t in texts]


def test_stop_scanner_across_pieces():
    s = StopScanner(["</end>"])
    out = chunks(s, ["abc<", "/e", "nd> more"])
    assert "".join(out) == "abc" and s.hit
    s = StopScanner(["xyz"])
    out = chunks(s, ["ax", "y", "!", "x"])  # "xy!" is no stop: released once it cannot be one
    assert out == ["a", "", "xy!", ""] and not s.hit and s.flush() == "x"
    s = StopScanner(["ab", "b"])
    assert s.feed("cab") == "c" and s.hit  # the earliest match wins


def test_health_is_503_while_loading():
    import uvicorn

    from specli.server.app import ServerState, build_app
    from specli.server.main import bind, url_of

    state = ServerState(api_key=None, max_queue=1, log=lambda m: None)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        url = url_of("127.0.0.1", sock)
        for path, data in (("/health", None), ("/v1/chat/completions", b'{"messages": []}')):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url + path, data=data), timeout=30)
            assert e.value.code == 503 and e.value.headers["Retry-After"]
            assert json.loads(e.value.read())["error"]["code"] == "model_loading"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# --- guard: Origin and Host rules (pure) -------------------------------------------------------
@pytest.mark.parametrize("header, name", [
    ("localhost:8080", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:8080", "::1"),
    ("[::1]", "::1"), ("127.0.0.1", "127.0.0.1"), ("proxy.example:443", "proxy.example")])
def test_split_host(header, name):
    from specli.server.guard import split_host

    assert split_host(header) == name


def test_origin_rules():
    import re

    from specli.server.guard import Access

    rule = re.compile(Access(origins=("https://App.example/", "chrome-extension://*",
                                      "https://*.corp.example:8443")).origin_regex)
    allowed = ("https://app.example", "HTTPS://APP.EXAMPLE", "chrome-extension://abc",
               "https://a.b.corp.example:8443", "http://localhost", "http://localhost:3000",
               "http://127.1.2.3:80", "https://[::1]:8000", "http://x.localhost:1",
               "vscode-webview://abc123")
    refused = ("https://app.example:444", "http://app.example", "https://app.example.evil",
               "https://corp.example:8443", "https://a.corp.example", "https://evil.example",
               "http://localhost.evil.example", "http://127.0.0.1.evil.example", "null",
               "vscode-webview://", "file://")
    assert all(rule.fullmatch(o) for o in allowed), [o for o in allowed if not rule.fullmatch(o)]
    assert not any(rule.fullmatch(o) for o in refused), [o for o in refused if rule.fullmatch(o)]


@pytest.mark.parametrize("origins, hosts", [(("https://",), ()), (("ftp",), ()),
                                            ((" ",), ()), ((), ("",)), ((), ("a/b",))])
def test_bad_access_values_are_usage_errors(origins, hosts):
    from specli.errors import UsageError
    from specli.server.guard import Access

    with pytest.raises(UsageError):
        Access(origins=origins, hosts=hosts)
