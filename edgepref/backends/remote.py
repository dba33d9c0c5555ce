"""A Backend for OpenAI-compatible inference servers: llama.cpp's llama-server,
llama-cpp-python's server, vLLM, or any /v1/chat/completions endpoint.

The stages do not know which backend runs them: `ServerBackend.chat` takes the same
`ChatRequest`s as the local engine and returns the same `ChatResult`s, in request order.

How requests travel:
  - Each sample (a request with n > 1 is n samples, sample k with seed + k, as in the local
    engine) is one HTTP call. Every endpoint has `max_in_flight` worker threads pulling from one
    shared queue, so a faster server simply takes more work.
  - Connection errors, timeouts, HTTP 429 and 5xx are retried on the same endpoint with
    exponential backoff (429 honours Retry-After; 501 and 505 are not retried). A sample that still fails because the endpoint
    cannot be reached (or times out) goes back to the queue and that endpoint is taken out of
    this call; the others carry on. One that still gets 429/5xx fails alone (reported, not
    cached, so a rerun tries it again). When no endpoint is left, `chat` raises `EndpointsDownError` after every
    finished result has been handed to `on_result` (which is what the request cache records),
    so a rerun resumes with nothing lost and nothing done twice.
  - 401/403 (bad or missing key) and an unknown model id are errors for the whole run, found by
    a preflight GET /models before the first request. Other 4xx answers fail that request only.
  - What differs between kinds of server (`api` in the model entry) is one `ApiKind` entry in
    `KINDS`: the extra sampling fields, the grammar's field (`grammar` for llama.cpp,
    `structured_outputs` for vLLM) and the logprob limit. Where a server cannot constrain
    output (`api = "openai"`), or an answer still does not parse, the request's `validate` hook
    rejects it and the sample is retried up to `parse_retries` times with a new seed; what
    still fails is a counted error, never a None.
  - Choice probabilities come from `logprobs`/`top_logprobs` (`ApiKind.top_logprobs`): the
    probability of each candidate's text, renormalised over the candidates, as the local
    engine does over their first tokens.

The API key is read from the environment variable the model entry names; it is sent only in
the Authorization header and never written to a file or a message.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from .base import ChatRequest, ChatResult, Generation, ProgressCallback, ProgressCounter, renormalised
from ..models.registry import API_KINDS
from ..core.errors import ConfigError, EdgeprefError, ModelNotFoundError
from .http_json import AuthError, EndpointsDownError, RequestFailed, Retryable, request_json
from .logprobs import AnswerError, read_choice

__all__ = ["API_KINDS", "ApiKind", "AuthError", "EndpointStats", "EndpointsDownError", "KINDS", "ServerBackend"]


@dataclass(frozen=True)
class ApiKind:
    """One kind of OpenAI-compatible server: what its request bodies carry beyond the common
    OpenAI fields. Adding a kind of server is adding an entry to `KINDS`."""

    name: str  # the model entry's `api`
    top_logprobs: int  # alternatives asked for per token when logprobs are needed
    fields: Callable[[ChatRequest], dict]  # its own body fields: sampling knobs, the grammar


# Every knob is sent, neutral values too: servers have their own defaults (the llama-cpp-python
# server's are top_k 40, min_p 0.05 and repeat_penalty 1.1), and the answer must depend on the
# request alone.
def _llama_cpp_fields(req: ChatRequest) -> dict:
    s = req.sampling
    fields = {"top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repeat_penalty}
    if req.grammar:
        fields["grammar"] = req.grammar
    return fields


def _vllm_fields(req: ChatRequest) -> dict:
    s = req.sampling
    fields = {"top_k": s.top_k or -1, "min_p": s.min_p, "repetition_penalty": s.repeat_penalty}  # -1: off
    if req.grammar:
        fields["structured_outputs"] = {"grammar": req.grammar}
    return fields


def _openai_fields(req: ChatRequest) -> dict:
    return {}  # no extra knobs and no grammar: the request's `validate` hook checks the format


# OpenAI and vLLM (by default) allow at most 20 alternatives per token; llama.cpp servers take
# more, and at a score position of a small judge the five digits are not always among the top 20
# (a digit outside the list counts as probability 0).
KINDS: dict[str, ApiKind] = {kind.name: kind for kind in (
    ApiKind("llama.cpp", top_logprobs=100, fields=_llama_cpp_fields),
    ApiKind("vllm", top_logprobs=20, fields=_vllm_fields),
    ApiKind("openai", top_logprobs=20, fields=_openai_fields),
)}


def _read_choice(data: dict, req: ChatRequest, seed: int | None) -> tuple[Generation, int, dict | None]:
    try:
        return read_choice(data, req, seed)
    except AnswerError as exc:
        raise RequestFailed(str(exc)) from None


@dataclass
class EndpointStats:
    url: str
    sent: int = 0
    ok: int = 0
    retries: int = 0
    parse_retries: int = 0
    down: str | None = None  # why it was taken out of the current call

    def as_dict(self) -> dict:
        return {"url": self.url, "sent": self.sent, "ok": self.ok, "retries": self.retries,
                "parse_retries": self.parse_retries, "down": self.down}


@dataclass
class _Unit:
    index: int  # request index
    k: int  # sample number


@dataclass
class _Outcome:
    """What a worker thread hands the collecting thread: one sample's answer or failure, or an
    endpoint that went down (unit None)."""

    unit: _Unit | None
    sample: tuple | None = None  # (Generation, prompt tokens, choice log-probabilities)
    error: str | None = None  # this request fails
    fatal: EdgeprefError | None = None  # the run stops (bad key, unknown model)
    down: tuple[str, str] | None = None  # (endpoint, reason)


def _assemble(req: ChatRequest, parts: dict[int, tuple], error: str | None, start: float) -> ChatResult:
    """A request's result from its samples (sample number -> sample), or its first error."""
    if error is not None:
        return ChatResult(req, [], 0, error=error, seconds=time.perf_counter() - start)
    gens, prompt_tokens, logprobs = [], 0, None
    for k in sorted(parts):
        gen, pt, lp = parts[k]
        gens.append(gen)
        prompt_tokens = pt
        logprobs = logprobs if logprobs is not None else lp
    return ChatResult(req, gens, prompt_tokens, choice_probs=renormalised(logprobs),
                      seconds=time.perf_counter() - start, choice_logprobs=logprobs)


class _Dispatch:
    """The shared state of one `chat` call: the queue of samples to run, how many are in flight,
    the endpoints taken out, and the results.

    Worker threads `take` a unit and `report` its outcome, or `hand_back` the unit when their
    endpoint cannot be reached. The calling thread reads the outcomes (`next_outcome`) and
    `record`s them, so the caller's progress callback runs on its own thread. `endpoints` are the
    stats of the endpoints that passed the preflight; an endpoint is down when its `down` is set.
    """

    def __init__(self, requests: Sequence[ChatRequest], endpoints: dict[str, EndpointStats], start: float):
        self.requests = requests
        self.endpoints = endpoints
        self.start = start
        self.results: list[ChatResult | None] = [None] * len(requests)
        self._todo = deque(_Unit(i, k) for i, req in enumerate(requests) for k in range(max(1, req.n)))
        self.remaining = len(self._todo)  # units whose outcome is not recorded yet
        self._parts: dict[int, dict[int, tuple]] = {i: {} for i in range(len(requests))}
        self._errors: dict[int, str] = {}
        self._in_flight = 0
        self._stopped = False
        self._cv = threading.Condition()
        self._outbox: queue.Queue[_Outcome] = queue.Queue()

    # ------------------------------------------------------------------ worker threads

    def take(self, base: str) -> _Unit | None:
        """The next unit for a worker on `base`; None when that worker should end: the call is
        stopped, `base` is down, or nothing is left. While the queue is empty but units are in
        flight it waits, as one may be handed back."""
        with self._cv:
            while not self._todo and self._in_flight and not self._stopped and not self.endpoints[base].down:
                self._cv.wait(0.2)
            if self._stopped or self.endpoints[base].down or not self._todo:
                return None
            self._in_flight += 1
            return self._todo.popleft()

    def report(self, outcome: _Outcome) -> None:
        """A taken unit's answer or failure, for the calling thread."""
        self._outbox.put(outcome)
        with self._cv:
            self._in_flight -= 1
            self._cv.notify_all()

    def hand_back(self, base: str, unit: _Unit, reason: str) -> None:
        """`base` cannot be reached: `unit` goes back to the front of the queue for the other
        endpoints, and `base` is marked down (its first reason kept, and sent to the calling
        thread as an outcome with `down`)."""
        with self._cv:
            if not self.endpoints[base].down:
                self.endpoints[base].down = reason
                self._outbox.put(_Outcome(None, down=(base, reason)))
            self._todo.appendleft(unit)
            self._in_flight -= 1
            self._cv.notify_all()

    # ------------------------------------------------------------------ the calling thread

    def next_outcome(self, timeout: float) -> _Outcome | None:
        """The next outcome a worker sent, or None after `timeout` seconds without one."""
        try:
            return self._outbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def up(self) -> list[str]:
        """The endpoints not down."""
        with self._cv:
            return [u for u, st in self.endpoints.items() if not st.down]

    def record(self, outcome: _Outcome) -> ChatResult | None:
        """Store one unit's answer or error. When that was its request's last sample: the
        request's result, also kept in `results` at the request's index."""
        unit = outcome.unit
        self.remaining -= 1
        if outcome.error is not None:
            self._errors.setdefault(unit.index, outcome.error)
        parts = self._parts[unit.index]
        parts[unit.k] = outcome.sample
        req = self.requests[unit.index]
        if len(parts) < max(1, req.n):
            return None
        self.results[unit.index] = _assemble(req, parts, self._errors.get(unit.index), self.start)
        return self.results[unit.index]

    def stop(self) -> None:
        """End the call: every worker ends when it next asks for a unit."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()


class ServerBackend:
    """Runs chat requests on one or more OpenAI-compatible endpoints serving the same model."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[str],
        served_model: str | None = None,
        *,
        api_key_env: str | None = None,
        api: str = "llama.cpp",
        max_in_flight: int = 4,
        timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 0.5,
        parse_retries: int = 2,
        on_notice=None,
    ):
        if not endpoints:
            raise ConfigError(f"model {name!r} has no endpoints", 'add endpoints = ["http://host:8080/v1"]')
        self.name = name
        self.endpoints = [u.rstrip("/") for u in endpoints]
        self.served_model = served_model
        self.api_key_env = api_key_env
        if api not in KINDS:
            raise ConfigError(f"model {name!r} has api = {api!r}", f"use one of {', '.join(API_KINDS)}")
        self.api = KINDS[api]  # an ApiKind
        self.max_in_flight = max(1, int(max_in_flight))
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.parse_retries = parse_retries
        self.on_notice = on_notice or (lambda message: None)
        self.stats = {u: EndpointStats(u) for u in self.endpoints}
        self._checked: set[str] = set()

    @classmethod
    def from_entry(cls, entry, **kwargs) -> "ServerBackend":
        return cls(entry.name, entry.endpoints, entry.served_model, api_key_env=entry.api_key_env,
                   api=entry.api, max_in_flight=entry.max_in_flight, timeout=entry.timeout, **kwargs)

    # ------------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"model {self.name!r} needs an API key in the environment variable {self.api_key_env}, "
                    "which is not set",
                    f"export {self.api_key_env}=... and run again",
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _http(self, method: str, url: str, body: dict | None = None, timeout: float | None = None) -> dict:
        return request_json(method, url, body, self._headers(), timeout or self.timeout, self.api_key_env)

    def _preflight(self, base: str) -> bool:
        """Check key and model id once per endpoint. False: the endpoint is unreachable now."""
        if base in self._checked:
            return True
        try:
            data = self._with_retries("GET", f"{base}/models", timeout=min(self.timeout, 30.0))
        except Retryable as exc:
            self.stats[base].down = str(exc)
            return False
        except RequestFailed:
            self._checked.add(base)  # some servers have no /models; the requests will tell
            return True
        ids = [m.get("id", "") for m in data.get("data", []) if isinstance(m, dict)]
        if self.served_model is None and self.name in ids:
            self.served_model = self.name
        elif self.served_model is None and len(ids) == 1:
            self.served_model = ids[0]
        elif self.served_model is None and ids:
            raise ConfigError(
                f"{base} serves several models ({', '.join(ids)}) and {self.name!r} names none",
                "set served_model in the model entry",
            )
        elif ids and self.served_model not in ids:
            raise ModelNotFoundError(
                f"{base} does not serve {self.served_model!r}",
                f"it serves: {', '.join(ids)}; set served_model to one of them",
            )
        self._checked.add(base)
        return True

    # ------------------------------------------------------------------ one sample, one HTTP call

    def _body(self, req: ChatRequest, seed: int | None, temperature: float) -> dict:
        """The JSON body of one chat completion: the common OpenAI fields, then the kind's own."""
        if req.prefill:
            raise RequestFailed("assistant prefill is not supported on servers")
        s = req.sampling
        body: dict = {
            "messages": req.messages,
            "temperature": temperature,
            # max_tokens 0 (choice probabilities only) still needs one token for its logprobs
            "max_tokens": max(1, s.max_tokens),
            "stream": False,
        }
        if self.served_model:
            body["model"] = self.served_model
        body["top_p"] = s.top_p
        if seed is not None:
            body["seed"] = seed
        if s.stop:
            body["stop"] = list(s.stop)
        body.update(self.api.fields(req))
        if req.choices or req.trace_choices:
            body["logprobs"] = True
            body["top_logprobs"] = self.api.top_logprobs
        return body

    def _request_one(self, base: str, req: ChatRequest, k: int) -> tuple[Generation, int, dict | None]:
        """Sample `k` of `req` from `base`: one chat completion over HTTP, its call retried as
        `_with_retries` does and drawn again while `validate` rejects the answer. Raises
        Retryable(connection) if `base` cannot be reached."""
        stats = self.stats[base]
        s = req.sampling
        seed0 = None if s.seed is None and s.greedy else (s.seed or 0) + k
        for attempt in range(self.parse_retries + 1):
            # A retry after an answer that did not parse needs a different draw.
            seed = seed0 if attempt == 0 else (seed0 or 0) + 1000 * attempt
            temperature = s.temperature if attempt == 0 else max(s.temperature, 0.7)
            body = self._body(req, seed, temperature)
            data = self._with_retries("POST", f"{base}/chat/completions", body, stats)
            gen, prompt_tokens, choice_logprobs = _read_choice(data, req, seed)
            problem = req.validate(gen.text) if (req.validate and not req.choices) else None
            if problem is None:
                return gen, prompt_tokens, choice_logprobs
            stats.parse_retries += 1
        raise RequestFailed(f"answer did not match the expected format after {self.parse_retries + 1} tries: {problem}")

    def _with_retries(self, method: str, url: str, body: dict | None = None,
                      stats: EndpointStats | None = None, timeout: float | None = None) -> dict:
        """`_http` with exponential backoff (and jitter) on Retryable errors; the last one is raised."""
        for attempt in range(self.retries + 1):
            if stats:
                stats.sent += 1
            try:
                return self._http(method, url, body, timeout)
            except Retryable as exc:
                if attempt == self.retries:
                    raise
                if stats:
                    stats.retries += 1
                wait = exc.wait if exc.wait is not None else self.backoff * (2 ** attempt)
                time.sleep(min(wait, 30.0) * (0.75 + 0.5 * random.random()))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ Backend protocol

    def chat(self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None = None) -> list[ChatResult]:
        """Run `requests` on the endpoints that pass the preflight; results in request order."""
        if not requests:
            return []
        start = time.perf_counter()
        live = self._live_endpoints()
        if not live:
            raise self._all_down(0, len(requests))
        work = _Dispatch(requests, {u: self.stats[u] for u in live}, start)
        threads = self._start_workers(work)
        counter = ProgressCounter(len(requests), on_result)
        try:
            self._collect(work, threads, counter)
        finally:
            work.stop()
        if work.remaining > 0:
            raise self._all_down(counter.done, len(requests))
        return work.results  # type: ignore[return-value]

    def _live_endpoints(self) -> list[str]:
        """The endpoints that pass the preflight; every call gives every endpoint a new chance."""
        for st in self.stats.values():
            st.down = None
        return [u for u in self.endpoints if self._preflight(u)]

    def _start_workers(self, work: _Dispatch) -> list[threading.Thread]:
        """`max_in_flight` worker threads for each endpoint of `work`, started."""
        threads = [
            threading.Thread(target=self._worker, args=(work, u), daemon=True, name=f"edgepref-{u}")
            for u in work.endpoints for _ in range(self.max_in_flight)
        ]
        for t in threads:
            t.start()
        return threads

    def _worker(self, work: _Dispatch, base: str) -> None:
        """One worker thread on `base`: runs units until `work` has none for it. When `base`
        cannot be reached it hands its unit back and ends."""
        while (unit := work.take(base)) is not None:
            try:
                outcome = self._outcome(base, work.requests[unit.index], unit)
            except Retryable as exc:  # only a connection failure gets here
                work.hand_back(base, unit, str(exc))
                return
            work.report(outcome)

    def _outcome(self, base: str, req: ChatRequest, unit: _Unit) -> _Outcome:
        """One unit's answer or failure on `base`. Raises Retryable(connection) if `base` is down."""
        try:
            sample = self._request_one(base, req, unit.k)
        except Retryable as exc:
            if exc.connection:
                raise
            return _Outcome(unit, error=str(exc))  # 429/5xx after every retry
        except RequestFailed as exc:
            return _Outcome(unit, error=str(exc))
        except EdgeprefError as exc:  # auth / model id: fatal for the run
            return _Outcome(unit, fatal=exc)
        except Exception as exc:  # a bug or an unexpected answer: fail this request only
            return _Outcome(unit, error=f"{type(exc).__name__}: {exc}")
        self.stats[base].ok += 1
        return _Outcome(unit, sample=sample)

    def _collect(self, work: _Dispatch, threads: list[threading.Thread], counter: ProgressCounter) -> None:
        """On the calling thread: record outcomes and report finished requests to `counter` until
        every unit has an outcome or every worker has ended (no endpoint left). A fatal error
        (bad key, unknown model) is raised."""
        while work.remaining > 0:
            outcome = work.next_outcome(timeout=0.2)
            if outcome is None:
                if not any(t.is_alive() for t in threads):
                    return  # every endpoint is down
            elif outcome.down:
                base, reason = outcome.down
                left = work.up()
                self.on_notice(f"{self.name}: endpoint {base} is down ({reason}); "
                               f"{'moving its requests to ' + ', '.join(left) if left else 'no endpoint left'}")
            elif outcome.fatal:
                raise outcome.fatal
            elif (result := work.record(outcome)) is not None:
                counter.finished(result)

    def _all_down(self, done: int, total: int) -> EndpointsDownError:
        reasons = "; ".join(f"{u}: {self.stats[u].down}" for u in self.endpoints)
        return EndpointsDownError(
            f"no endpoint of {self.name!r} can be reached ({reasons}); {done} of {total} requests finished",
            "finished requests are saved: start the server(s) and run the same command again to resume",
        )

    def endpoint_stats(self) -> list[dict]:
        return [s.as_dict() for s in self.stats.values()]
