"""Log probabilities of candidate answers, read from what a model returns.

The local engine has full logits: `choice_logprobs` and `distribution` read candidates from
them. A server's OpenAI-compatible answer lists only the top alternatives of each generated
token (`top_logprobs`); `read_choice`, `candidate_logprobs`, `candidate_distribution` and
`trace_from_logprobs` turn those into what the engine reports: a choice's log probability with
its spellings summed ("A" and " A"), candidate distributions, and the per-token choice trace
of a generated text.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .base import ChatRequest, Generation


def distribution(logits: np.ndarray, candidates: dict[int, str]) -> dict[str, float]:
    """From full logits: the candidates' probabilities renormalised over them (token id -> candidate)."""
    ids = list(candidates)
    vals = np.asarray(logits[ids], dtype=np.float64)
    vals = np.exp(vals - vals.max())
    probs = vals / vals.sum()
    return {candidates[t]: float(p) for t, p in zip(ids, probs)}


def weighted_score(probs: dict[str, float], scale: Sequence[str]) -> float:
    """The mean score over a rating scale whose answers `scale` mean 1, 2, ... in order, weighted
    by their probabilities (renormalised over the scale; a missing answer weighs 0)."""
    total = sum(probs.get(s, 0.0) for s in scale)
    return sum((k + 1) * probs.get(s, 0.0) for k, s in enumerate(scale)) / total


def _logsumexp(vals: np.ndarray) -> float:
    top = float(vals.max())
    return top + float(np.log(np.exp(vals - top).sum()))


def choice_logprobs(logits: np.ndarray, candidates: dict[int, str]) -> dict[str, float]:
    """From full logits: each candidate's log probability over the whole vocabulary, its tokens
    (spellings) summed (token id -> candidate)."""
    full = _logsumexp(np.asarray(logits, dtype=np.float64))
    ids_of: dict[str, list[int]] = {}
    for t, cand in candidates.items():
        ids_of.setdefault(cand, []).append(t)
    return {
        cand: _logsumexp(np.asarray(logits[ids], dtype=np.float64)) - full for cand, ids in ids_of.items()
    }


class AnswerError(Exception):
    """An answer that does not have the shape of a chat completion, or lacks the logprobs asked for."""


def read_choice(data: dict, req: ChatRequest, seed: int | None) -> tuple[Generation, int, dict | None]:
    """One sample out of an OpenAI chat completion: the generation (with its choice trace when
    the request asks for one), the prompt tokens, and the choice log-probabilities when the
    request has `choices`."""
    try:
        choice = data["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise AnswerError(f"unexpected answer shape ({exc}): {str(data)[:200]}") from None
    finish = choice.get("finish_reason") or "stop"
    finish = "length" if finish == "length" else "stop"
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if req.choices:
        if not content:
            raise AnswerError("the server returned no logprobs; choice probabilities need logprobs support")
        choice_logprobs = candidate_logprobs(content[0].get("top_logprobs") or [], req.choices)
        return Generation("", 0, "stop", seed), int(usage.get("prompt_tokens", 0)), choice_logprobs
    trace = trace_from_logprobs(text, content, req.trace_choices) if req.trace_choices else []
    completion_tokens = int(usage.get("completion_tokens", len(content)))
    return Generation(text, completion_tokens, finish, seed, trace), int(usage.get("prompt_tokens", 0)), None


def _candidate_mass(top: list[dict], candidates: Sequence[str], spellings: bool) -> dict[str, float]:
    mass = {c: 0.0 for c in candidates}
    for alt in top:
        tok, logprob = alt.get("token"), alt.get("logprob")
        if tok is None or logprob is None:
            continue
        if tok not in mass and spellings and tok.startswith(" "):
            tok = tok[1:]
        if tok in mass:
            mass[tok] += math.exp(float(logprob))
    return mass


def candidate_distribution(top: list[dict], candidates: Sequence[str]) -> dict[str, float] | None:
    """Probabilities of the candidates among the top alternatives, renormalised over them.
    A candidate outside the top list gets 0; None when none of them is there."""
    mass = _candidate_mass(top, candidates, spellings=False)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {c: v / total for c, v in mass.items()}


def candidate_logprobs(top: list[dict], candidates: Sequence[str]) -> dict[str, float] | None:
    """Log probability of each candidate, its spellings with and without a leading space summed,
    as the local engine reports it. A candidate outside the top list gets the smallest log
    probability listed (an upper bound); None when none of them is there."""
    mass = _candidate_mass(top, candidates, spellings=True)
    listed = [float(a["logprob"]) for a in top if a.get("logprob") is not None]
    if not listed or not any(v > 0 for v in mass.values()):
        return None
    return {c: math.log(v) if v > 0 else min(listed) for c, v in mass.items()}


def trace_from_logprobs(text: str, content: list[dict], candidates: Sequence[str]) -> list[tuple[int, dict]]:
    """(char offset, distribution) for each generated token that is one of the candidates,
    the same shape as the local engine's Generation.choice_trace."""
    cands = set(candidates)
    trace: list[tuple[int, dict]] = []
    cursor = slack = 0
    for entry in content:
        tok = entry.get("token") or ""
        slack += tok.count("\ufffd")  # a split character shown as U+FFFD per piece overcounts
        if tok in cands:
            # Token strings can drop or replace bytes of split multi-byte characters, so find the
            # token in the text rather than trusting summed lengths.
            at = text.find(tok, max(0, cursor - slack))
            if at >= 0:
                dist = candidate_distribution(entry.get("top_logprobs") or [], candidates)
                if dist is not None:
                    trace.append((at, dist))
                cursor = at + len(tok)
                continue
        cursor += len(tok)
    return trace
