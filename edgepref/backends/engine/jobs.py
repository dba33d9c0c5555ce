"""What one `Engine.chat` call schedules: a job per sample of each request, the slots (KV cache
sequences) that run them, and the call's own state (queue, results, progress).

Plain Python data only: a `Slot` records what its sequence holds in the KV cache (token ids,
kept logits as a numpy array) but holds no llama.cpp handle. The engine owns llama.cpp:
`Engine` (core.py) the model, the context whose cache the slots describe, and the batch;
its `Batcher` (batching.py) each running job's sampler, opened when the job takes a slot and
closed when the job leaves it.
"""

from __future__ import annotations

import codecs
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..base import ChatRequest, ChatResult, Generation, ProgressCallback, ProgressCounter, renormalised


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0  # prompt tokens of all samples, as if each decoded its own prompt
    prompt_tokens_cached: int = 0  # of those, reused from the KV cache instead of decoded
    completion_tokens: int = 0
    decode_calls: int = 0
    batch_halvings: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Job:
    """One sample of one request."""

    request: ChatRequest
    req_index: int  # the request's place in its call: results and batch rows follow it
    sample: int
    prompt: list[int]
    seed: int
    trace_tokens: dict[int, str]
    choice_tokens: dict[int, str]
    out_bytes: bytearray = field(default_factory=bytearray)
    out_ids: list[int] = field(default_factory=list)
    trace: list = field(default_factory=list)
    choice_logprobs: dict[str, float] | None = None
    cached: int = 0
    finish: str | None = None
    text: str = ""
    error: str | None = None
    # a follow-up turn (ChatRequest.then) runs in its parent's slot; its result goes here
    follows: ChatResult | None = None
    started: float | None = None
    # a read's prompt positions where its decode is split (ChatRequest.marks; engine.prefixes)
    bounds: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        """(request index, sample): the order of batch rows."""
        return (self.req_index, self.sample)


@dataclass
class Slot:
    """One sequence of the KV cache, as the engine's bookkeeping: what it holds and which job
    runs in it. The methods change this record only; the engine changes the cache to match."""

    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence holds in the KV cache
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be decoded in the next step
    canon: int = 0  # leading tokens whose KV was decoded as prompt blocks (reusable)
    # logits after the first `logits_len` tokens, kept from the decode of a whole prompt
    logits: np.ndarray | None = None
    logits_len: int = -1

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def hold(self, prompt: list[int], common: int, src: Slot | None) -> None:
        """The slot's job starts on `prompt`, whose first `common` tokens the slot now holds
        (taken from `src`'s cache); the rest is pending. When `src` gives the whole prompt, its
        kept logits come along."""
        logits = src.logits if src is not None and common == len(prompt) else None
        self.tokens = prompt[:common]
        self.canon = common
        self.pending = prompt[common:]
        self.logits, self.logits_len = (logits, common) if logits is not None else (None, -1)

    def cut(self, n: int) -> None:
        """Keep only the first n tokens (and the logits kept after them)."""
        del self.tokens[n:]
        self.canon = min(self.canon, n)

    def forget(self) -> None:
        """The sequence holds nothing."""
        self.tokens, self.canon, self.logits, self.logits_len = [], 0, None, -1

    def release(self) -> Job:
        """Finish the slot's job (its text cut at a stop string) and free the slot; its cached
        tokens stay for reuse."""
        job = self.job
        job.text = utf8_text(job.out_bytes)
        stop_at = find_stop(job.text, job.request.sampling.stop)
        if stop_at is not None:
            job.text = job.text[:stop_at]
        self.job = None
        self.pending = []
        self.next_token = None
        return job


class Call:
    """The state of one `Engine.chat` call: its requests, their jobs, the queue of jobs waiting
    for a slot, the results, and the progress reported as each request finishes."""

    def __init__(self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None):
        self.requests = requests
        self.results: list[ChatResult | None] = [None] * len(requests)
        self.jobs: list[list[Job]] = [[] for _ in requests]
        self.jobs_left = [0] * len(requests)
        self.queue: deque[Job] = deque()
        self.progress = ProgressCounter(len(requests), on_result)

    def fail(self, i: int, prompt: list[int], message: str) -> None:
        """Request i cannot run at all: it finishes at once with `message`."""
        self.jobs[i] = [Job(self.requests[i], i, 0, prompt, 0, {}, {}, finish="error", error=message)]
        self.finish_request(i)

    def enqueue(self, i: int, prompt: list[int], base_seed: int, trace, choices, bounds: tuple[int, ...] = ()) -> None:
        n = max(1, self.requests[i].n)
        self.jobs_left[i] = n
        for k in range(n):
            job = Job(self.requests[i], i, k, prompt, base_seed + k, trace, choices, bounds=bounds)
            self.jobs[i].append(job)
            self.queue.append(job)

    def take_reads(self) -> list[Job]:
        """Take the reads (jobs that generate nothing) out of the queue, in their order."""
        reads = [job for job in self.queue if job.request.sampling.max_tokens <= 0]
        if reads:
            self.queue = deque(job for job in self.queue if job.request.sampling.max_tokens > 0)
        return reads

    def job_started(self, job: Job) -> None:
        job.started = time.perf_counter()

    def job_finished(self, job: Job) -> None:
        """Count a finished sample; its request's last one finishes the request. A follow-up
        turn's result is attached to the result it follows and counts as nothing here."""
        if job.follows is not None:
            job.follows.follow_up = _result(job.request, [job], self.progress.start)
            return
        self.jobs_left[job.req_index] -= 1
        if self.jobs_left[job.req_index] == 0:
            self.finish_request(job.req_index)

    def finish_request(self, i: int) -> None:
        result = _result(self.requests[i], self.jobs[i], self.progress.start)
        self.results[i] = result
        self.progress.finished(result)


def _result(request: ChatRequest, jobs: list[Job], call_start: float) -> ChatResult:
    """The result of a request's jobs; its seconds run from its first job's start (the call's
    start for a request that never reached a slot)."""
    jobs = sorted(jobs, key=lambda j: j.sample)
    started = min((j.started for j in jobs if j.started is not None), default=call_start)
    error = next((j.error for j in jobs if j.error), None)
    gens = [Generation(j.text, len(j.out_ids), j.finish or "error", j.seed, j.trace, j.out_ids) for j in jobs]
    return ChatResult(
        request=request,
        generations=gens,
        prompt_tokens=len(jobs[0].prompt) if jobs else 0,
        error=error,
        choice_probs=renormalised(jobs[0].choice_logprobs) if jobs else None,
        choice_logprobs=jobs[0].choice_logprobs if jobs else None,
        seconds=time.perf_counter() - started,
        cached_prompt_tokens=sum(j.cached for j in jobs),
    )


def utf8_text(data: bytes | bytearray) -> str:
    """Generated bytes as text. Tokens are pieces of bytes, and a character of several bytes may
    span tokens: a generation cut at max_tokens (or the context's end) inside one leaves its first
    bytes, which are left out here, not stored as U+FFFD. Bytes that no cut explains (a model
    that writes invalid UTF-8 mid-text) still become U+FFFD."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(data), final=False)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of `stops` starts in `text`, or None."""
    hits = [text.find(s) for s in stops if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None
