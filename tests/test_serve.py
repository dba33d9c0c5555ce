"""`edgepref serve` against what a careless or hostile client sends: bodies that are not JSON or
have wrong fields, a model id it does not serve, a missing key, a bad or busy port. Each is a
clear answer (400, 422, 404, 401) or a one-line error, and no traceback reaches the client, the
server's log or the terminal. The server is the real one, on 127.0.0.1, serving both embedded
models (the test run's one server, tests/conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import QWEN, SERVER_KEY, SERVER_KEY_ENV, SMOL
from edgepref.backends.engine.serve import ServerProcess, free_port
from edgepref.models.modelfiles import resolve_model_path

pytest.importorskip("fastapi", reason="needs edgepref[server] (installed by edgepref[test])")

KEY_ENV, KEY = SERVER_KEY_ENV, SERVER_KEY
CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(real_server) -> ServerProcess:
    """The test run's one real server (tests/conftest.py): both embedded models, key required."""
    return real_server


def post(url: str, body: bytes, key: str | None = KEY, path: str = "/chat/completions") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw)  # every answer is JSON, errors too


def test_bad_bodies_and_unknown_models_get_clear_answers(server: ServerProcess) -> None:
    url = server.url
    # the key first: without it, a bad body says nothing but 401
    assert post(url, b"{not json", key=None)[0] == 401
    assert post(url, b"{not json", key="wrong")[0] == 401
    status, answer = post(url, b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    status, answer = post(url, b"\xff\xfe junk")
    assert status == 400
    status, answer = post(url, b"[1, 2]")
    assert status == 422 and "JSON object" in answer["error"]["message"]
    status, answer = post(url, json.dumps({"messages": "hi"}).encode())
    assert status == 422 and "messages" in answer["error"]["message"]
    status, answer = post(url, json.dumps({**CHAT, "max_tokens": "many"}).encode())
    assert status == 422 and "max_tokens" in answer["error"]["message"]
    status, answer = post(url, json.dumps({**CHAT, "model": "gpt-4"}).encode())
    assert status == 404 and "'gpt-4' is not served" in answer["error"]["message"]
    assert SMOL in answer["error"]["message"] and QWEN in answer["error"]["message"]
    status, answer = post(url, json.dumps({"model": "nope", "prompt": "x"}).encode(), path="/completions")
    assert status == 404
    # a grammar that does not parse (llama-cpp-python's server would crash on it)
    status, answer = post(url, json.dumps({**CHAT, "grammar": "root ::= ("}).encode())
    assert status == 400 and "grammar does not parse" in answer["error"]["message"]
    # an error inside llama-cpp-python's route (token ids that are not numbers): an error answer,
    # and one line in the log where llama-cpp-python prints a traceback
    status, answer = post(url, json.dumps({**CHAT, "logit_bias": {"abc": 1.0}}).encode())
    assert status >= 400 and "abc" in answer["error"]["message"]
    # and the server still answers a good request, under its id or none
    status, answer = post(url, json.dumps({**CHAT, "model": SMOL}).encode())
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant"
    assert post(url, json.dumps(CHAT).encode())[0] == 200
    log = Path(server.log).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "request failed: ValueError: invalid literal for int()" in log


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepref", "serve", SMOL, *args],
                          capture_output=True, text=True, timeout=120)


def test_a_bad_or_busy_port_is_a_one_line_error() -> None:
    done = serve_cli("--port", "99999")
    assert done.returncode == 1 and "--port 99999 is not a TCP port" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and "serving" not in done.stdout

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve_cli("--port", str(port))
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and "serving" not in done.stdout

    done = serve_cli("--host", "no-such-host.invalid", "--port", str(free_port()))
    assert done.returncode == 1 and "cannot listen on --host no-such-host.invalid" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_request_guard_checks_bodies_without_a_server() -> None:
    from edgepref.backends.engine.serve import RequestGuard

    path = resolve_model_path(SMOL)
    guard = RequestGuard(None, [(SMOL, path), ("other", path)], None)
    chat = "/v1/chat/completions"
    assert guard.check_body(chat, json.dumps(CHAT).encode()) is None
    assert guard.check_body(chat, json.dumps({**CHAT, "model": "other"}).encode()) is None
    assert guard.check_body(chat, b"")[0] == 400
    assert guard.check_body(chat, b'{"messages": [') [0] == 400
    assert guard.check_body(chat, b'"text"') == (422, "the request body must be a JSON object, not a string",
                                                 "invalid_request_error")
    status, message, _ = guard.check_body(chat, json.dumps({**CHAT, "model": 5}).encode())
    assert status == 422 and "model" in message
    status, message, _ = guard.check_body(chat, json.dumps({**CHAT, "model": "x"}).encode())
    assert (status, message) == (404, f"model 'x' is not served here; served: {SMOL}, other")
    status, message, _ = guard.check_body("/v1/embeddings", json.dumps({"input": 3}).encode())
    assert status == 422 and "input" in message
    status, message, _ = guard.check_body(chat, json.dumps({**CHAT, "grammar": "root ::= ("}).encode())
    assert status == 400 and message.startswith("the grammar does not parse: ") and "expecting ')'" in message
    assert guard.check_body(chat, json.dumps({**CHAT, "grammar": 'root ::= "hi"'}).encode()) is None
