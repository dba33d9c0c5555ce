"""A Backend for OpenAI-compatible inference servers: llama.cpp's llama-server,
llama-cpp-python's server, vLLM, or any /v1/chat/completions endpoint.

The stages do not know which backend runs them: `ServerBackend.chat` takes the same
`ChatRequest`s as the local engine and returns the same `ChatResult`s, in request order.

How requests travel:
  - Each sample (a request with n > 1 is n samples, sample k with seed + k, as in the local
    engine) is one HTTP call. Every endpoint has `max_in_flight` worker threads pulling from one
    shared queue, so a faster server simply takes more work.
  - Connection errors, timeouts, HTTP 429 and 5xx are retried on the same endpoint with
    exponential backoff (429 honours Retry-After). A sample that still fails because the endpoint
    cannot be reached (or times out) goes back to the queue and that endpoint is taken out of
    this call; the others carry on. One that still gets 429/5xx fails alone (reported, not
    cached, so a rerun tries it again). When no endpoint is left, `chat` raises `EndpointsDownError` after every
    finished result has been handed to `on_result` (which is what the request cache records),
    so a rerun resumes with nothing lost and nothing done twice.
  - 401/403 (bad or missing key) and an unknown model id are errors for the whole run, found by
    a preflight GET /models before the first request. Other 4xx answers fail that request only.
  - Grammars go in the server's own field: `grammar` (llama.cpp) or `structured_outputs`
    (vLLM). Where a server cannot constrain output (`api = "openai"`), or an answer still does
    not parse, the request's `validate` hook rejects it and the sample is retried up to
    `parse_retries` times with a new seed; what still fails is a counted error, never a None.
  - Choice probabilities come from `logprobs`/`top_logprobs` (see TOP_LOGPROBS): the
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
from dataclasses import dataclass
from typing import Sequence

from .backend import ChatRequest, ChatResult, Generation, ProgressCallback, ProgressCounter, renormalised
from .errors import ConfigError, EdgeprefError, ModelNotFoundError
from .http_json import AuthError, EndpointsDownError, RequestFailed, Retryable, request_json
from .logprobs import AnswerError, read_choice

# Alternatives asked for per token. OpenAI and vLLM (by default) allow at most 20; llama.cpp
# servers take more, and at a score position of a small judge the five digits are not always
# among the top 20 (a digit outside the list counts as probability 0).
__all__ = ["AuthError", "EndpointStats", "EndpointsDownError", "ServerBackend", "TOP_LOGPROBS"]

TOP_LOGPROBS = {"llama.cpp": 100, "vllm": 20, "openai": 20}


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
        self.api = api
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

    # ------------------------------------------------------------------ one sample

    def _body(self, req: ChatRequest, seed: int | None, temperature: float) -> dict:
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
        if self.api in ("llama.cpp", "vllm"):
            # Every knob is sent, neutral values too: servers have their own defaults (the
            # llama-cpp-python server's are top_k 40, min_p 0.05 and repeat_penalty 1.1), and
            # the answer must depend on the request alone.
            body["top_k"] = s.top_k if self.api == "llama.cpp" else (s.top_k or -1)
            body["min_p"] = s.min_p
            body["repeat_penalty" if self.api == "llama.cpp" else "repetition_penalty"] = s.repeat_penalty
        if req.grammar:
            if self.api == "llama.cpp":
                body["grammar"] = req.grammar
            elif self.api == "vllm":
                body["structured_outputs"] = {"grammar": req.grammar}
        if req.choices or req.trace_choices:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS[self.api]
        if req.prefill:
            raise RequestFailed("assistant prefill is not supported on servers")
        return body

    def _sample(self, base: str, req: ChatRequest, k: int) -> tuple[Generation, int, dict | None]:
        """One sample on one endpoint, with retries. Raises Retryable(connection) if it is down."""
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
        start = time.perf_counter()
        results: list[ChatResult | None] = [None] * len(requests)
        if not requests:
            return []
        for st in self.stats.values():
            st.down = None  # every call gives every endpoint a new chance
        live = [u for u in self.endpoints if self._preflight(u)]
        if not live:
            raise self._all_down(0, len(requests))

        units: list[_Unit] = [_Unit(i, k) for i, r in enumerate(requests) for k in range(max(1, r.n))]
        todo = list(units)
        parts: dict[int, dict[int, tuple]] = {i: {} for i in range(len(requests))}
        errors: dict[int, str] = {}
        outbox: queue.Queue = queue.Queue()
        cv = threading.Condition()
        state = {"in_flight": 0, "stop": False}

        def worker(base: str) -> None:
            while True:
                with cv:
                    while not todo and state["in_flight"] > 0 and not state["stop"] and not self.stats[base].down:
                        cv.wait(0.2)
                    if state["stop"] or self.stats[base].down or not todo:
                        return
                    unit = todo.pop(0)
                    state["in_flight"] += 1
                try:
                    outcome = _Outcome(unit, sample=self._sample(base, requests[unit.index], unit.k))
                    self.stats[base].ok += 1
                except Retryable as exc:
                    if exc.connection:  # the endpoint cannot be reached: hand the sample back
                        with cv:
                            if not self.stats[base].down:
                                self.stats[base].down = str(exc)
                                outbox.put(_Outcome(None, down=(base, str(exc))))
                            todo.insert(0, unit)
                            state["in_flight"] -= 1
                            cv.notify_all()
                        return
                    outcome = _Outcome(unit, error=str(exc))  # 429/5xx after every retry
                except RequestFailed as exc:
                    outcome = _Outcome(unit, error=str(exc))
                except EdgeprefError as exc:  # auth / model id: fatal for the run
                    outcome = _Outcome(unit, fatal=exc)
                except Exception as exc:  # a bug or an unexpected answer: fail this request only
                    outcome = _Outcome(unit, error=f"{type(exc).__name__}: {exc}")
                outbox.put(outcome)
                with cv:
                    state["in_flight"] -= 1
                    cv.notify_all()

        threads = [
            threading.Thread(target=worker, args=(u,), daemon=True, name=f"edgepref-{u}")
            for u in live for _ in range(self.max_in_flight)
        ]
        for t in threads:
            t.start()
        counter = ProgressCounter(len(requests), on_result)
        remaining = len(units)
        fatal: EdgeprefError | None = None
        try:
            while remaining > 0:
                try:
                    outcome = outbox.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads):
                        break  # every endpoint is down
                    continue
                if outcome.down:
                    base, reason = outcome.down
                    left = [u for u in live if not self.stats[u].down]
                    self.on_notice(f"{self.name}: endpoint {base} is down ({reason}); "
                                   f"{'moving its requests to ' + ', '.join(left) if left else 'no endpoint left'}")
                    continue
                if outcome.fatal:
                    fatal = outcome.fatal
                    break
                remaining -= 1
                unit = outcome.unit
                if outcome.error is not None:
                    errors.setdefault(unit.index, outcome.error)
                parts[unit.index][unit.k] = outcome.sample
                req = requests[unit.index]
                if len(parts[unit.index]) == max(1, req.n):
                    res = self._assemble(req, parts[unit.index], errors.get(unit.index), start)
                    results[unit.index] = res
                    counter.finished(res)
        finally:
            with cv:
                state["stop"] = True
                cv.notify_all()
        if fatal is not None:
            raise fatal
        if remaining > 0:
            raise self._all_down(counter.done, len(requests))
        return results  # type: ignore[return-value]

    def _assemble(self, req: ChatRequest, parts: dict[int, object], error: str | None, start: float) -> ChatResult:
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

    def _all_down(self, done: int, total: int) -> EndpointsDownError:
        reasons = "; ".join(f"{u}: {self.stats[u].down}" for u in self.endpoints)
        return EndpointsDownError(
            f"no endpoint of {self.name!r} can be reached ({reasons}); {done} of {total} requests finished",
            "finished requests are saved: start the server(s) and run the same command again to resume",
        )

    def endpoint_stats(self) -> list[dict]:
        return [s.as_dict() for s in self.stats.values()]


# ---------------------------------------------------------------------- answers
