"""The server path against a real server: llama-cpp-python's OpenAI-compatible server
(`edgepref serve`, which is `llama_cpp.server` with the engine's buffer-type choice) on
127.0.0.1, serving the embedded models, started once per test run (tests/conftest.py,
`real_server`). No mock of the HTTP layer: where a server must die mid-run, the endpoint is a
proxy in front of the real one (`KillableProxy`) whose socket closes, and a server that comes
back is a new proxy at the same address.

The llama-cpp-python server answers one request at a time, so the spread test keeps one
request in flight per endpoint and checks that both endpoints answered some.
"""

from __future__ import annotations

import json
import math

import pytest

from .conftest import QWEN, SERVER_KEY, SERVER_KEY_ENV, SMOL, KillableProxy, ThreadedHttpServer
from edgepref.backends.base import ChatRequest, Sampling
from edgepref.backends.engine.serve import ServerProcess, free_port
from edgepref.stages.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.core.errors import ConfigError, ModelNotFoundError
from edgepref.runs.pipeline import run_pipeline
from edgepref.backends.remote import AuthError, EndpointsDownError, ServerBackend
from edgepref.backends.cache import CachedBackend
from edgepref.core.files import read_jsonl

pytest.importorskip("fastapi", reason="needs edgepref[server] (installed by edgepref[test])")

KEY_ENV, KEY = SERVER_KEY_ENV, SERVER_KEY


@pytest.fixture(scope="module")
def key_env(real_server):
    return KEY_ENV  # set by the real server's fixture for the whole test run


@pytest.fixture(scope="module")
def server(real_server) -> ServerProcess:
    """The test run's one real server: both embedded models, key required."""
    return real_server


@pytest.fixture
def spare_server(real_server) -> KillableProxy:
    """A second endpoint that a test may kill: a proxy in front of the real server."""
    proxy = KillableProxy(real_server.url)
    yield proxy
    proxy.kill()


def prompts(n: int, max_tokens: int = 12) -> list[ChatRequest]:
    topics = ["tea", "rain", "maps", "bees", "salt", "glass", "clocks", "kites", "moss", "wind"]
    return [
        ChatRequest([{"role": "user", "content": f"One sentence about {topics[i % len(topics)]}."}],
                    Sampling(max_tokens=max_tokens), id=i)
        for i in range(n)
    ]


def qwen_backend(urls: list[str], **kw) -> ServerBackend:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("retries", 1)
    kw.setdefault("backoff", 0.05)
    return ServerBackend(QWEN, urls, QWEN, **kw)


# ---------------------------------------------------------------- one server: same output as local


def greedy_config() -> PipelineConfig:
    cfg = PipelineConfig(
        pool=[PoolMember(QWEN, temperature=0.0, max_tokens=28), PoolMember(SMOL, temperature=0.0, max_tokens=28)],
        # the judge's own answer rewritten (a follow-up turn locally, a request of its own on the
        # server): each extra greedy text is one more place where a near-tie can part the two
        # paths (as the ratings below may), and a server rewrites any answer the same way
        evolve=EvolveConfig(num_evolutions=1, temperature=0.0, max_tokens=28, pick="own"),
        judge=JudgeConfig(models=[QWEN], n_ctx=2048, mode="rationale", max_rationale_chars=40),  # compared below
    )
    # One sequence, each prompt decoded in one call: the same arithmetic as the server's
    # one-at-a-time Llama (llama.cpp's kernels round differently for other batch shapes).
    cfg.engine.slots = 1
    cfg.engine.prompt_block = 512
    cfg.engine.n_ctx = 2048
    # the verdict chain is the judge alone, deciding at any margin: the server's verdicts and
    # the engine's are compared pair by pair below; one candidate pair per instruction, the
    # ratings' best and worst
    cfg.pair.min_confidence, cfg.pair.candidates = 0.0, 1
    return cfg


def test_pipeline_on_a_server_matches_the_local_engine(server, tmp_path):
    # one instruction: every stage and comparison below runs on it (a second one doubled the
    # test's time, the slowest of the suite, and covered no other line)
    instructions = ["Name two uses of copper."]
    local = run_pipeline(instructions, tmp_path / "local", greedy_config())
    cfg = greedy_config()
    cfg.models = {m: {"endpoints": [server.url], "api_key_env": KEY_ENV} for m in (QWEN, SMOL)}
    remote = run_pipeline(instructions, tmp_path / "remote", cfg)

    assert remote.summary.request_errors == 0
    assert set(remote.summary.endpoints) == {QWEN, SMOL}
    # Locally the rewrites run in place; the server client has no follow-up turns, so the evolve
    # stage sends them itself.
    assert local.summary.continued_requests == 1 and remote.summary.continued_requests == 0
    for a, b in zip(local.records, remote.records):
        assert [(c.id, c.text) for c in a.completions] == [(c.id, c.text) for c in b.completions]
        ra = {r.completion_id: r for r in a.ratings}
        rb = {r.completion_id: r for r in b.ratings}
        assert ra.keys() == rb.keys() and ra
        # Greedy ratings are the same text unless the two paths part: the server decodes the
        # prompt in one batch and the engine in blocks, so where two next tokens are nearly tied
        # the texts may differ from there on (seen on an Intel Xeon with AMX, before and after the
        # verdict read path), and so may every score written after that point.
        for cid in ra:
            assert ra[cid].rationale and rb[cid].rationale and 1 <= rb[cid].score <= 5
        # the rating lines in the order they were written, up to the first that parted: each
        # has the same score and distribution; the first line of every record is before any parting
        before_parting = []
        assert a.judge_info["orders"] == b.judge_info["orders"]  # the same seeded order shown
        for cid in a.judge_info["orders"][QWEN][0]:  # the order the lines were written in
            if ra[cid].rationale != rb[cid].rationale:
                break
            before_parting.append(cid)
        assert before_parting, f"the first rating line of {a.id} already differs"
        for cid in before_parting:
            assert ra[cid].score == rb[cid].score
        # The server gives the top 100 log-probabilities of the full vocabulary; the engine reads
        # the five digits' logits directly. Renormalised over 1-5 they agree on the first line
        # unless a digit falls outside the top 100 (then it counts as 0 on the server); later
        # lines follow generated text, which the two paths decode in other batch shapes (0.065
        # apart seen on an AMD EPYC), so only their scores are compared.
        first = before_parting[0]
        assert rb[first].expected == pytest.approx(ra[first].expected, abs=0.05)
    # The pairwise check reads two log-odds per pair; the server and the engine reach them with
    # different batch splits, so on some CPUs they differ by a few hundredths (0.05 measured on an
    # AMD EPYC). Where the ratings parted, the two runs shortlisted other pairs; so every pair the
    # server judged is judged again here by the local engine, on the same texts: the verdicts must
    # agree within a tolerance, and where the margin is clear, in sign.
    from edgepref.judging.compare import compare, get_recipe
    from edgepref.backends.engine import Engine

    recipe = get_recipe(cfg.judge.recipe)
    items, margins = [], []
    for b in remote.records:
        vb = b.judge_info["verdict"]
        items.append((b.instruction, b.completion(vb["x"]).text, b.completion(vb["y"]).text))
        margins.append(vb["margins"][QWEN])
    with Engine(QWEN, n_slots=1, n_ctx=2048) as engine:
        local_margins = [v.margin for v in compare(items, [recipe], engine, QWEN)[recipe.name]]
    for served, here in zip(margins, local_margins):
        assert served == pytest.approx(here, abs=0.15)
        if abs(here) > 0.15:
            assert (served > 0) == (here > 0)
    run = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert KEY not in json.dumps(run)  # the key itself is never written


# ---------------------------------------------------------------- two servers


def test_requests_spread_over_two_servers_and_survive_one_dying(server, spare_server):
    backend = qwen_backend([server.url, spare_server.url], max_in_flight=1)
    killed = []

    def on_result(progress, result):
        if not killed and backend.stats[spare_server.url].ok >= 1:  # it has served: kill it
            spare_server.kill()
            killed.append(progress.done)

    n = 16
    results = backend.chat(prompts(n, max_tokens=8), on_result=on_result)
    assert killed, "the spare server was never killed: the test did not exercise failover"
    assert [r.request.id for r in results] == list(range(n))
    assert all(r.ok and r.text for r in results)
    stats = {s["url"]: s for s in backend.endpoint_stats()}
    assert stats[spare_server.url]["ok"] >= 1 and stats[server.url]["ok"] >= 1
    assert stats[server.url]["ok"] + stats[spare_server.url]["ok"] == n
    if killed[0] < n - 2:  # work was left when it died: its worker found it down and gave the work back
        assert stats[spare_server.url]["down"]


def test_all_endpoints_down_stops_cleanly_and_resumes_without_duplicates(tmp_path, real_server, key_env):
    cache = tmp_path / "stage.jsonl"
    first = KillableProxy(real_server.url)
    port = first.port
    reqs = prompts(6)

    def kill_after_two(progress, result):
        if progress.done == 2:
            first.kill()

    cached = CachedBackend("complete", "qwen@test", cache, lambda: qwen_backend([first.url], max_in_flight=1))
    with pytest.raises(EndpointsDownError) as info:
        cached.chat(reqs, on_result=kill_after_two)
    assert "run the same command again" in info.value.hint
    assert len(list(read_jsonl(cache))) >= 2

    second = KillableProxy(real_server.url, port=port)  # back at the same address
    try:
        cached = CachedBackend("complete", "qwen@test", cache, lambda: qwen_backend([second.url]))
        results = cached.chat(reqs)
    finally:
        second.kill()
    assert all(r.ok for r in results)
    assert cached.hits >= 2 and cached.hits + cached.misses == 6
    keys = [row["key"] for row in read_jsonl(cache)]
    assert len(keys) == len(set(keys)) == 6


# ---------------------------------------------------------------- clear errors


def test_unreachable_url_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "any")  # the backend reads its key before it tries the URL
    backend = qwen_backend([f"http://127.0.0.1:{free_port()}/v1"])
    with pytest.raises(EndpointsDownError) as info:
        backend.chat(prompts(1))
    assert "cannot reach" in info.value.message and "start the server" in info.value.hint


def test_wrong_model_id_lists_what_the_server_serves(server):
    backend = ServerBackend("x", [server.url], "no-such-model", api_key_env=KEY_ENV)
    with pytest.raises(ModelNotFoundError) as info:
        backend.chat(prompts(1))
    assert QWEN in info.value.hint and SMOL in info.value.hint


def test_missing_or_wrong_key(server, monkeypatch):
    with pytest.raises(AuthError) as info:
        ServerBackend(QWEN, [server.url], QWEN).chat(prompts(1))  # no key configured
    assert "401" in info.value.message
    monkeypatch.setenv("WRONG_KEY", "nope")
    with pytest.raises(AuthError) as info:
        ServerBackend(QWEN, [server.url], QWEN, api_key_env="WRONG_KEY").chat(prompts(1))
    assert "WRONG_KEY" in info.value.hint and "nope" not in str(info.value.message) + info.value.hint
    with pytest.raises(ConfigError) as info:
        ServerBackend(QWEN, [server.url], QWEN, api_key_env="UNSET_KEY_VAR").chat(prompts(1))
    assert "UNSET_KEY_VAR" in info.value.message


# ---------------------------------------------------------------- grammar, probabilities, validation


def test_grammar_and_choice_probabilities_on_a_server(server):
    backend = qwen_backend([server.url])
    reqs = [
        ChatRequest([{"role": "user", "content": "Pick a colour."}], Sampling(max_tokens=8),
                    grammar='root ::= "red" | "blue"', id="g"),
        ChatRequest([{"role": "user", "content": "Is 2+2 equal to 4? Answer Y or N."}], Sampling(max_tokens=0),
                    choices=("Y", "N"), id="c"),
    ]
    g, c = backend.chat(reqs)
    assert g.text in ("red", "blue")
    assert c.choice_probs is not None and set(c.choice_probs) == {"Y", "N"}
    assert sum(c.choice_probs.values()) == pytest.approx(1.0)
    assert set(c.choice_logprobs) == {"Y", "N"} and all(v <= 0 for v in c.choice_logprobs.values())
    assert c.generations[0].text == "" and c.generations[0].completion_tokens == 0


def test_rejected_answers_are_retried_a_bounded_number_of_times(server):
    seen = []

    def never(text):
        seen.append(text)
        return "not good enough"

    backend = qwen_backend([server.url], parse_retries=2, api="openai")  # "openai": no grammar field
    (res,) = backend.chat([ChatRequest([{"role": "user", "content": "Say hi."}], Sampling(max_tokens=4),
                                       validate=never)])
    assert not res.ok and "after 3 tries" in res.error and len(seen) == 3
    assert backend.endpoint_stats()[0]["parse_retries"] == 3

    calls = []

    def second_time(text):
        calls.append(text)
        return None if len(calls) > 1 else "first answer rejected"

    (res,) = backend.chat([ChatRequest([{"role": "user", "content": "Say hi."}], Sampling(max_tokens=4),
                                       validate=second_time)])
    assert res.ok and len(calls) == 2


# ---------------------------------------------------------------- configuration and the CLI


def test_endpoint_settings_are_checked_up_front() -> None:
    from edgepref.stages.config import config_from_dict
    from edgepref.runs.settings import apply_overrides
    from edgepref.models.registry import load_registry

    def registry(cfg):
        return load_registry(cfg.models_file, cfg.models)

    cfg = apply_overrides(PipelineConfig(), endpoints=["big=http://gpu:8080/v1", "big=http://gpu2:8080/v1/"])
    entry = registry(cfg).get("big")
    assert entry.remote and entry.endpoints == ("http://gpu:8080/v1", "http://gpu2:8080/v1")
    assert entry.served_model is None and entry.api == "llama.cpp"
    with pytest.raises(ConfigError) as info:
        apply_overrides(PipelineConfig(), endpoints=["big"])
    assert "MODEL=URL" in info.value.message
    with pytest.raises(ConfigError) as info:
        registry(apply_overrides(PipelineConfig(), endpoints=["big=gpu:8080"]))
    assert "http" in info.value.message
    with pytest.raises(ConfigError) as info:
        registry(config_from_dict({"models": {QWEN: {"endpoints": ["http://x/v1"], "api": "tgi"}}}))
    assert "llama.cpp, vllm, openai" in info.value.hint
    # An override keeps the registry's other fields (the local file stays known).
    cfg = config_from_dict({"models": {QWEN: {"endpoints": ["http://x/v1"], "served_model": "q"}}})
    entry = registry(cfg).get(QWEN)
    assert entry.remote and entry.served_model == "q" and entry.sources and entry.strength == 2


def test_cli_run_with_the_judge_on_a_server(server, tmp_path) -> None:
    from click.testing import CliRunner

    from edgepref.ui.cli import cli

    from .test_cli_pipeline import FAST, FAST_RUN

    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Name a bird."}\n{"instruction": "Name a fruit."}\n')
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'[models."judge-on-server"]\nendpoints = ["{server.url}"]\nserved_model = "{QWEN}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--config", str(config),
                                      "--judge", "judge-on-server", "--candidates", "1", *FAST_RUN])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["judges"] == ["judge-on-server"]
    assert run["summary"]["ratings"] > 0 and run["summary"]["request_errors"] == 0
    assert run["summary"]["endpoints"]["judge-on-server"][0]["ok"] >= 2
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(tmp_path / "o2"), "--judge", "nowhere",
                                      "--endpoint", f"nowhere=http://127.0.0.1:{free_port()}/v1", *FAST])
    assert result.exit_code != 0 and "cannot reach" in result.output and "run the same command again" in result.output


# ---------------------------------------------------------------- retries against a flaky server


class FlakyServer(ThreadedHttpServer):
    """A real HTTP server on 127.0.0.1 that answers 429, then 503, then a valid completion:
    the retry path over real sockets (llama-cpp-python's server never answers 429 or 5xx)."""

    def __init__(self, failures: list[int]):
        import http.server

        self.failures = list(failures)
        self.calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send(200, {"data": [{"id": "flaky"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls += 1
                if outer.failures:
                    code = outer.failures.pop(0)
                    self._send(code, {"error": {"message": f"status {code}"}}, {"Retry-After": "0"})
                    return
                self._send(200, {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

        super().__init__(Handler)


def test_429_and_5xx_are_retried_with_backoff() -> None:
    flaky = FlakyServer([429, 503])
    try:
        backend = ServerBackend("flaky", [flaky.url], retries=3, backoff=0.01)
        (res,) = backend.chat(prompts(1))
        assert res.ok and res.text == "ok" and flaky.calls == 3
        assert backend.endpoint_stats()[0]["retries"] == 2
        flaky.failures = [500, 500, 500]
        backend = ServerBackend("flaky", [flaky.url], retries=1, backoff=0.01)
        (res,) = backend.chat(prompts(1))
        # A server that keeps failing one request: that request fails (reported, not cached),
        # while the endpoint stays in service for the others.
        assert not res.ok and "HTTP 500" in res.error
        # 501 and 505 describe the server, not its load: one call, no retry, the request fails.
        for code in (501, 505):
            flaky.failures, flaky.calls = [code], 0
            backend = ServerBackend("flaky", [flaky.url], retries=3, backoff=0.01)
            (res,) = backend.chat(prompts(1))
            assert not res.ok and f"HTTP {code}" in res.error and flaky.calls == 1
            assert backend.endpoint_stats()[0]["retries"] == 0
    finally:
        flaky.close()


def test_cli_run_stops_when_its_server_dies_and_resumes_without_duplicates(tmp_path, real_server, key_env) -> None:
    import subprocess
    import sys
    import time

    from .test_cli_pipeline import FAST_RUN

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Name a {w}."}) + "\n"
                           for w in ("bird", "fruit", "river", "tree", "metal", "planet")))
    srv = KillableProxy(real_server.url)
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[models."remote-judge"]\nendpoints = ["{srv.url}"]\nserved_model = "{QWEN}"\n'
                      f'api_key_env = "{KEY_ENV}"\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgepref", "run", str(src), "--out", str(out), "--config", str(config),
           "--judge", "remote-judge", "--candidates", "1", *FAST_RUN]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    judge_cache = out / "cache" / "judge-remote-judge.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        if judge_cache.is_file() and judge_cache.read_text().count("\n") >= 1:
            srv.kill()  # the only endpoint dies in the middle of the judge stage
            break
        time.sleep(0.05)
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0, output
    assert "can be reached" in output and "run the same command again" in output
    done_before = judge_cache.read_text().count("\n")
    assert 1 <= done_before < 6

    srv = KillableProxy(real_server.url, port=srv.port)  # back at the same address
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        srv.kill()
    assert result.returncode == 0, result.stdout + result.stderr
    keys = [json.loads(line)["key"] for line in judge_cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6  # nothing lost, nothing twice
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["ratings"] > 0 and summary["request_errors"] == 0
    assert summary["cached_requests"] >= done_before


def test_candidate_log_probabilities_from_top_alternatives() -> None:
    from edgepref.backends.logprobs import candidate_logprobs

    top = [{"token": "A", "logprob": math.log(0.5)}, {"token": " A", "logprob": math.log(0.2)},
           {"token": "The", "logprob": math.log(0.1)}, {"token": " B", "logprob": math.log(0.05)}]
    lp = candidate_logprobs(top, ["A", "B"])
    assert lp["A"] == pytest.approx(math.log(0.7)) and lp["B"] == pytest.approx(math.log(0.05))
    # a candidate outside the list gets the smallest listed log probability, an upper bound
    assert candidate_logprobs(top, ["A", "C"])["C"] == pytest.approx(math.log(0.05))
    assert candidate_logprobs(top, ["X", "Y"]) is None


# ---------------------------------------------------------------- the kinds table and the dispatch


def test_each_api_kind_sends_its_own_fields() -> None:
    from edgepref.models import registry
    from edgepref.backends import remote

    assert registry.API_KINDS is remote.API_KINDS  # the registry checks `api` against the one table
    req = ChatRequest([{"role": "user", "content": "Pick."}], Sampling(top_k=0, min_p=0.1, repeat_penalty=1.2),
                      grammar='root ::= "a"')
    bodies = {api: ServerBackend("m", ["http://x/v1"], api=api)._body(req, 1, 0.5) for api in remote.API_KINDS}
    assert {k: bodies["llama.cpp"].get(k) for k in ("top_k", "repeat_penalty", "grammar")} == {
        "top_k": 0, "repeat_penalty": 1.2, "grammar": 'root ::= "a"'}
    assert {k: bodies["vllm"].get(k) for k in ("top_k", "repetition_penalty", "structured_outputs")} == {
        "top_k": -1, "repetition_penalty": 1.2, "structured_outputs": {"grammar": 'root ::= "a"'}}
    assert not {"top_k", "min_p", "grammar", "structured_outputs"} & set(bodies["openai"])
    choice = ChatRequest([{"role": "user", "content": "Y or N?"}], Sampling(max_tokens=0), choices=("Y", "N"))
    assert {api: ServerBackend("m", ["http://x/v1"], api=api)._body(choice, None, 0.0)["top_logprobs"]
            for api in remote.API_KINDS} == {"llama.cpp": 100, "vllm": 20, "openai": 20}
    with pytest.raises(ConfigError) as info:
        ServerBackend("m", ["http://x/v1"], api="tgi")
    assert "llama.cpp, vllm, openai" in info.value.hint


def test_dispatch_hands_back_work_of_a_down_endpoint_and_keeps_request_order() -> None:
    import threading
    import time

    from edgepref.backends.base import Generation
    from edgepref.backends.remote import EndpointStats, _Dispatch, _Outcome, _Unit

    reqs = [ChatRequest([{"role": "user", "content": "a"}], Sampling(), n=2, id=0),
            ChatRequest([{"role": "user", "content": "b"}], Sampling(), id=1),
            ChatRequest([{"role": "user", "content": "c"}], Sampling(), id=2)]
    work = _Dispatch(reqs, {u: EndpointStats(u) for u in "ABC"}, start=0.0)
    a, b, c = work.take("A"), work.take("B"), work.take("B")
    assert [(u.index, u.k) for u in (a, b, c)] == [(0, 0), (0, 1), (1, 0)]
    work.hand_back("B", b, "cannot reach B")
    work.hand_back("B", c, "a later reason")  # B's second worker: the first reason stays
    assert work.take("B") is None and work.endpoints["B"].down == "cannot reach B" and work.up() == ["A", "C"]
    d = _Unit(2, 0)
    assert [work.take("A") for _ in range(3)] == [c, b, d]  # handed-back units go before the others
    assert work.next_outcome(0.01).down == ("B", "cannot reach B") and work.next_outcome(0.01) is None

    waiting: list = []
    worker = threading.Thread(target=lambda: waiting.append(work.take("C")))
    worker.start()  # the queue is empty but units are in flight: C's worker waits, as one may come back
    time.sleep(0.05)
    work.hand_back("A", b, "cannot reach A")
    worker.join(5)
    assert waiting == [b]  # ...and it does, from A, now down
    assert work.take("A") is None and work.next_outcome(0.01).down == ("A", "cannot reach A")
    assert work.up() == ["C"]

    work.report(_Outcome(c, error="HTTP 400: bad"))
    work.report(_Outcome(b, sample=(Generation("second", 1, "stop", 2), 5, None)))
    work.report(_Outcome(a, sample=(Generation("first", 1, "stop", 1), 5, None)))
    work.report(_Outcome(d, sample=(Generation("third", 1, "stop", None), 5, None)))
    finished = [work.record(work.next_outcome(0.01)) for _ in range(4)]
    assert finished[0].request.id == 1 and finished[0].error == "HTTP 400: bad" and finished[1] is None
    assert [g.text for g in finished[2].generations] == ["first", "second"]  # by sample number
    assert [r.request.id for r in work.results] == [0, 1, 2] and work.remaining == 0


class DroppingServer(ThreadedHttpServer):
    """A real HTTP server that lists FlakyServer's model but drops every chat request's connection
    unanswered, as a server that dies between the preflight and the requests."""

    def __init__(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                raw = json.dumps({"data": [{"id": "flaky"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.close_connection = True  # no answer at all

        super().__init__(Handler)


def test_failover_to_the_endpoint_that_answers_and_all_down_without_one() -> None:
    dropping, working = DroppingServer(), FlakyServer([])
    notices: list[str] = []
    try:
        backend = ServerBackend("flaky", [dropping.url, working.url], retries=1, backoff=0.01, max_in_flight=2,
                                on_notice=notices.append)
        done = []
        results = backend.chat(prompts(6), on_result=lambda progress, result: done.append(progress.done))
        assert [r.request.id for r in results] == list(range(6)) and all(r.ok for r in results)
        assert done == list(range(1, 7))
        stats = {s["url"]: s for s in backend.endpoint_stats()}
        assert "cannot reach" in stats[dropping.url]["down"] and stats[working.url]["ok"] == 6
        assert len(notices) == 1 and f"moving its requests to {working.url}" in notices[0]

        alone = ServerBackend("flaky", [dropping.url], retries=0, on_notice=notices.append)
        with pytest.raises(EndpointsDownError) as info:
            alone.chat(prompts(3))
        assert "0 of 3 requests finished" in info.value.message and notices[-1].endswith("no endpoint left")
    finally:
        dropping.close()
        working.close()


def test_every_api_kind_a_model_entry_may_name_has_a_server_kind() -> None:
    from edgepref.backends.remote import KINDS
    from edgepref.models.registry import API_KINDS

    assert tuple(KINDS) == API_KINDS
