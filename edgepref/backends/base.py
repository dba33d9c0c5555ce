"""The seam between stages and wherever a model runs.

Stages build `ChatRequest`s and hand a list to a `Backend`; they get `ChatResult`s back.
The local llama.cpp engine (`engine.Engine`) implements this protocol; so can a client for
an OpenAI-compatible server. Nothing here knows about instructions, ratings or pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling. temperature == 0 means greedy (top_*/min_p/seed are ignored).

    With a seed, the local engine gives the same text for the same request whether its prompt
    is decoded fresh or found in the KV cache, and whatever ran before, as long as the request
    runs beside the same requests (see edgepref.backends.engine.core, "Determinism"). Across machines,
    llama.cpp builds, thread counts or different concurrent requests, sampled text may differ:
    llama.cpp's kernels round differently per batch shape. Servers promise what they promise.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def recorded(self) -> dict:
        """The settings a completion records as its `sampling`."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_tokens": self.max_tokens}


@dataclass
class ChatRequest:
    """One chat prompt. `n` samples share the prompt's KV cache; sample i uses seed + i.

    grammar:  GBNF text; the answer is constrained to it.
    prefill:  text appended after the chat template's assistant header (the answer starts with it;
              it is not part of the returned text).
    choices:  candidate strings; the result carries how likely each is as the next token right after
              the prompt (and prefill): `choice_logprobs` over the whole vocabulary and `choice_probs`
              renormalised over the candidates. A candidate counts the first token of its spellings
              with and without a leading space ("A" and " A"). With max_tokens == 0 nothing is
              generated.
    trace_choices: candidate strings; every generated token that is one of their first tokens records
              the distribution over the candidates at that step (see Generation.choice_trace).
    validate: text -> None if the answer is usable, else what is wrong with it. Backends that
              cannot enforce `grammar` (some servers) retry a rejected answer a bounded number of
              times. Not part of the request's identity (the cache key).
    then:     text -> the next turn of this conversation, or None. A backend that keeps the
              conversation's KV cache (the local engine) runs it in the same slot as soon as this
              request finishes, so the prompt and the answer it already holds are not decoded
              again, and puts its result in `ChatResult.follow_up`. Others leave that None and the
              caller sends the request itself. Only for n == 1. Not part of the identity.
    marks:    reads only (max_tokens == 0): character offsets into the last message's content
              where text that other reads share ends (a pairwise verdict: where each response
              starts). The local engine splits the prompt's decode there and saves each prefix,
              so reads that share it decode it once (edgepref.backends.engine.prefixes); the
              numbers then depend on the marks too. Others ignore them.
    """

    messages: list[dict[str, str]]
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    grammar: str | None = None
    prefill: str = ""
    choices: Sequence[str] | None = None
    trace_choices: Sequence[str] | None = None
    id: object = None
    marks: tuple[int, ...] = ()
    validate: Callable[[str], str | None] | None = field(default=None, compare=False, repr=False)
    then: Callable[[str], "ChatRequest | None"] | None = field(default=None, compare=False, repr=False)


@dataclass
class Generation:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    seed: int | None = None
    # (char offset in text where the token starts, {candidate: probability}) per traced token
    choice_trace: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # local engine only; empty for servers


@dataclass
class ChatResult:
    request: ChatRequest
    generations: list[Generation]
    prompt_tokens: int
    error: str | None = None
    choice_probs: dict[str, float] | None = None  # renormalised over the candidates
    seconds: float = 0.0
    cached_prompt_tokens: int = 0  # prompt tokens reused from the KV cache instead of decoded
    # log probability of each candidate over the whole vocabulary (its spellings summed); the
    # difference of two is the raw log-odds between them, unaffected by the other candidates
    choice_logprobs: dict[str, float] | None = None
    follow_up: "ChatResult | None" = None  # the result of `request.then`'s request, if it ran here

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        return self.generations[0].text if self.generations else ""


def renormalised(logprobs: dict[str, float] | None) -> dict[str, float] | None:
    """Candidate log probabilities -> probabilities that sum to 1 over the candidates."""
    if not logprobs:
        return None
    top = max(logprobs.values())
    mass = {c: math.exp(v - top) for c, v in logprobs.items()}
    total = sum(mass.values())
    return {c: v / total for c, v in mass.items()}


@dataclass
class Progress:
    """Reported after each finished request."""

    done: int
    total: int
    completion_tokens: int
    prompt_tokens: int
    elapsed: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress, ChatResult], None]


class ProgressCounter:
    """The bookkeeping of one `chat` call: counts each finished request and reports it to the
    caller's callback. `done_before`: requests of the call already answered elsewhere (a cache)."""

    def __init__(self, total: int, on_result: ProgressCallback | None, done_before: int = 0):
        self.total, self.on_result = total, on_result
        self.done = done_before
        self.completion_tokens = self.prompt_tokens = 0
        self.start = time.perf_counter()

    def finished(self, result: ChatResult) -> None:
        self.done += 1
        self.completion_tokens += sum(g.completion_tokens for g in result.generations)
        self.prompt_tokens += result.prompt_tokens
        if self.on_result:
            progress = Progress(self.done, self.total, self.completion_tokens, self.prompt_tokens,
                                time.perf_counter() - self.start)
            self.on_result(progress, result)


class Backend(Protocol):
    """Where a model runs. `chat` returns results in request order; failures are per request.
    Whoever makes a backend owns what it holds (the engine's llama.cpp memory: `Engine.close`)."""

    name: str

    def chat(
        self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None = None
    ) -> list[ChatResult]: ...
