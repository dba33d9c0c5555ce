"""Records that flow between stages. Plain dataclasses; JSON keys are their field names.

One `Record` per instruction (a conversation's last user turn, with the turns before it and the
row's system prompt). `complete` fills `completions` (source "pool"), `evolve` adds
completions with source "evol" (with `parent_id` and `criterion`), `judge` fills `ratings`,
`pair` reads them and writes `Pair` rows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Callable


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (resume keys, record ids)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def normalise_text(text: str) -> str:
    """What "the same text" means everywhere: case and runs of whitespace ignored."""
    return re.sub(r"\s+", " ", text.lower()).strip()


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two texts after normalising case and whitespace: what "a
    near-copy" means everywhere (above the pipeline's similarity_threshold)."""
    a, b = normalise_text(a), normalise_text(b)
    if not a or not b:
        return 1.0 if a == b else 0.0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < 0.5:
        return matcher.real_quick_ratio()
    return matcher.ratio()


def completion_text(generated: str) -> str:
    """The text a pool completion keeps of what its model generated."""
    return generated.strip()


@dataclass
class Completion:
    id: str  # unique within its record: "<member>:<k>" for pool, "<root id>+evol<k>" for evolutions
    text: str
    model: str
    source: str = "pool"  # "pool" | "evol"
    system_prompt: str | None = None
    sampling: dict = field(default_factory=dict)
    seed: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    parent_id: str | None = None  # evol: the completion it rewrites
    criterion: str | None = None  # evol: helpfulness|relevance|deepening|creativity|details
    regenerated: bool = False  # diversity guard replaced a near-duplicate
    note: str | None = None
    # the pool member that wrote it (an evolution: the member that wrote its root). Rows written
    # before this field existed get it from their id, the one place an id is read for it.
    member: str = ""

    def __post_init__(self) -> None:
        if not self.member:
            self.member = self.id.partition(":")[0]

    @classmethod
    def generated(cls, id: str, text: str, model: str, result, generation, **provenance) -> "Completion":
        """A completion from one generation of a backend's result (sampling, seed and token
        counts recorded from them); `provenance`: the other fields (source, member, parent...)."""
        return cls(id=id, text=text, model=model, sampling=result.request.sampling.recorded(), seed=generation.seed,
                   prompt_tokens=result.prompt_tokens, completion_tokens=generation.completion_tokens,
                   finish_reason=generation.finish_reason, **provenance)


@dataclass
class Rating:
    completion_id: str
    judge: str
    aspect: str
    score: float  # the judge's integer score (mean over orders when judged twice)
    expected: float | None = None  # probability-weighted score over 1..5
    rationale: str = ""
    positions: list[int] = field(default_factory=list)  # where it was shown (1-based), per pass
    pass_scores: list[float] = field(default_factory=list)  # the score of each pass, same order
    pass_expected: list[float | None] = field(default_factory=list)


@dataclass
class Record:
    """One row to answer. `instruction` is the user turn to answer; a row from a conversation
    also has the turns before it in `history` (user and assistant alternating, from a user turn
    to an assistant turn, no system message) and its own system prompt in `system`, which
    replaces the pool member's for this row. Rows written before these fields read as []/None."""

    id: str
    instruction: str
    history: list[dict] = field(default_factory=list)  # [{"role": "user" | "assistant", "content": str}]
    system: str | None = None
    completions: list[Completion] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # {"stage", "reason", ...} per dropped item
    judge_info: dict = field(default_factory=dict)  # panel agreement, self-preference notes
    extra: dict = field(default_factory=dict)  # input columns carried through untouched

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Record":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in row.items() if k in known}
        kwargs["completions"] = [_build(Completion, c) for c in row.get("completions", [])]
        kwargs["ratings"] = [_build(Rating, r) for r in row.get("ratings", [])]
        kwargs["history"] = [dict(turn) for turn in row.get("history") or []]  # absent in older rows
        return cls(**kwargs)

    @property
    def is_conversation(self) -> bool:
        """Whether the row is more than one instruction: earlier turns, or a system prompt of its own."""
        return bool(self.history) or self.system is not None

    def chat(self, default_system: str | None = None) -> list[dict]:
        """The messages a model answers: the row's system prompt (else `default_system`, the pool
        member's) when there is one, the earlier turns, and the instruction as the last user turn."""
        system = self.system or default_system
        head = [{"role": "system", "content": system}] if system else []
        return [*head, *({"role": t["role"], "content": t["content"]} for t in self.history),
                {"role": "user", "content": self.instruction}]

    def task_text(self) -> str:
        """The instruction as a judge sees it: the instruction alone for a single-turn row; for a
        conversation, its system prompt and earlier turns first, then the last user message that
        the responses answer. Judge prompts show it where they show an instruction."""
        if not self.is_conversation:
            return self.instruction
        lines = ["The conversation so far:"]
        if self.system:
            lines.append(f"[system]\n{self.system}")
        lines += [f"[{t['role']}]\n{t['content']}" for t in self.history]
        lines.append(f"The last user message, which each response answers:\n{self.instruction}")
        return "\n\n".join(lines)

    def completion(self, completion_id: str) -> Completion:
        for c in self.completions:
            if c.id == completion_id:
                return c
        raise KeyError(completion_id)


def _build(cls, row: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in known})


@dataclass
class Pair:
    """One DPO row. `prompt`/`chosen`/`rejected` are strings (standard) or message lists
    (conversational); the rest is provenance."""

    id: str
    prompt: object
    chosen: object
    rejected: object
    # the UltraFeedback scores and their difference; None when the run rated nothing (judge mode
    # "none": the verdict chain alone decided)
    score_chosen: float | None
    score_rejected: float | None
    margin: float | None
    model_chosen: str
    model_rejected: str
    rationale_chosen: str = ""
    rationale_rejected: str = ""
    completion_chosen: str = ""
    completion_rejected: str = ""
    # decide = "pairwise": the pairwise margin of chosen over rejected (mean log-odds, > 0) and
    # the judge(s) whose verdict decided it
    confidence: float | None = None
    decided_by: str = ""
    # the calibrated agreement with strong labels of the pairs that judge decides (None:
    # uncalibrated, or decided by ratings)
    agreement: float | None = None

    def to_row(self) -> dict:
        return asdict(self)


# How a stage reports a request that failed for one record: (record, stage, message).
ErrorSink = Callable[[Record, str, str], None]
