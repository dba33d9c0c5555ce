"""The request cache that makes every run resumable.

Resume works at the level of model requests: `CachedBackend` keys each `ChatRequest` by a
content hash of (stage, model identity, messages, sampling, grammar, n, choices) and appends
each result to `DIR/cache/<stage>.jsonl` the moment it finishes. A rerun of the same command
replays the stage logic; requests already answered come from the file, the rest go to the
model. Changed settings change the hash, so stale answers are never reused. A torn last line
(power loss, SIGKILL mid-write) is cut off and its request redone.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .base import Backend, ChatRequest, ChatResult, Generation, Progress, ProgressCallback, ProgressCounter
from ..core.files import JsonlAppender, read_jsonl, repair_torn_tail
from ..core.records import content_key


def request_key(stage: str, model_id: str, req: ChatRequest) -> str:
    return content_key(
        stage,
        model_id,
        req.messages,
        asdict(req.sampling),
        req.n,
        req.grammar,
        req.prefill,
        list(req.choices or []),
        list(req.trace_choices or []),
        *([list(req.marks)] if req.marks else []),  # they change a read's numbers; keys without stay as they were
    )


def _result_row(key: str, result: ChatResult) -> dict:
    return {
        "key": key,
        "prompt_tokens": result.prompt_tokens,
        "choice_probs": result.choice_probs,
        "choice_logprobs": result.choice_logprobs,
        "seconds": round(result.seconds, 3),
        "generations": [
            {
                "text": g.text,
                "completion_tokens": g.completion_tokens,
                "finish_reason": g.finish_reason,
                "seed": g.seed,
                "choice_trace": g.choice_trace,
            }
            for g in result.generations
        ],
    }


def _usable(row: dict) -> bool:
    """Whether a cache row read back has what `_result_from_row` reads, of the right types."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    gens = row.get("generations")
    return (isinstance(row.get("key"), str) and count(row.get("prompt_tokens")) and isinstance(gens, list)
            and bool(gens) and all(isinstance(g, dict) and isinstance(g.get("text"), str)
                                   and count(g.get("completion_tokens")) and isinstance(g.get("finish_reason"), str)
                                   and isinstance(g.get("choice_trace", []), list) for g in gens))


def _result_from_row(req: ChatRequest, row: dict) -> ChatResult:
    gens = [
        Generation(
            g["text"], g["completion_tokens"], g["finish_reason"], g.get("seed"),
            [(int(off), dist) for off, dist in g.get("choice_trace", [])],
        )
        for g in row["generations"]
    ]
    return ChatResult(req, gens, row["prompt_tokens"], None, row.get("choice_probs"), row.get("seconds", 0.0),
                      choice_logprobs=row.get("choice_logprobs"))


class CachedBackend:
    """A Backend that answers from `cache_path` when it can and records every new answer.

    `open_backend` is called only if some request misses the cache, so a fully resumed stage
    never loads its model. Failed requests are not cached: a rerun tries them again.
    """

    def __init__(
        self,
        stage: str,
        model_id: str,
        cache_path: Path,
        open_backend: Callable[[], Backend],
    ):
        self.name = model_id
        self.stage = stage
        self.model_id = model_id
        self.cache_path = Path(cache_path)
        self._open = open_backend
        repair_torn_tail(self.cache_path)
        # a row damaged on disk (cut, edited, of another shape) is not an answer: its request is redone
        self._rows = {row["key"]: row for row in read_jsonl(self.cache_path) if _usable(row)}
        self.hits = 0
        self.misses = 0
        self.prefetched = 0  # hits on answers that `prefetch` recorded (not resumed work)

    def prefetch(self, results: Iterable[ChatResult]) -> None:
        """Record answers this stage did not ask for itself (follow-up turns that ran in an
        earlier stage's call), so that the stage finds them when it sends the same requests."""
        rows = []
        for result in results:
            if result.ok:
                key = request_key(self.stage, self.model_id, result.request)
                rows.append({**_result_row(key, result), "prefetched": True})
        if not rows:
            return
        with JsonlAppender(self.cache_path) as out:
            for row in rows:
                out.append(row)
                self._rows[row["key"]] = row

    def chat(self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None = None) -> list[ChatResult]:
        keys = [request_key(self.stage, self.model_id, r) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        todo: list[int] = []
        for i, (req, key) in enumerate(zip(requests, keys)):
            row = self._rows.get(key)
            if row is None:
                todo.append(i)
                continue
            results[i] = _result_from_row(req, row)
            if row.get("prefetched"):
                self.prefetched += 1
            else:
                self.hits += 1
        self.misses += len(todo)
        if not todo:
            return results  # type: ignore[return-value]
        # on_result is called for generated results only; their Progress counts the replayed ones.
        counter = ProgressCounter(len(requests), on_result, done_before=len(requests) - len(todo))
        backend = self._open()
        with JsonlAppender(self.cache_path) as out:

            def record(_progress: Progress, result: ChatResult) -> None:
                if result.ok:
                    key = request_key(self.stage, self.model_id, result.request)
                    row = _result_row(key, result)
                    out.append(row)
                    self._rows[key] = row
                counter.finished(result)

            fresh = backend.chat([requests[i] for i in todo], on_result=record)
        for i, res in zip(todo, fresh):
            results[i] = res
        return results  # type: ignore[return-value]
