"""What a stage is: one step over every record, with counters of its own.

A stage kind is a `Stage` subclass in its own module (complete.py, evolve.py, judge.py,
verify.py, pair.py); `pipeline.STAGES` lists the kinds in the order a run takes them. For a
config a kind plans its units, one per model it needs (complete: one per pool member; judge:
one per judge; verify: one per judge of the verdict chain) or one with no model (pair). The
runner loops over the kinds and their units: it gives each unit the cached backend of its
model and times it; the unit adds to its `StageStats` (`ctx.stats(name)`: the runner holds
them, units of one name share them). The CLI's stage commands, the cache file names
(`<unit name>.jsonl`), the summary and the report read the units' names and counters instead of
spelling stages.

To add a stage: write a module with a `Stage` subclass (kind, help, plan, run) and add the
class to `pipeline.STAGES`; with a `help`, `edgepref <kind>` runs it alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from ..backends.base import Backend, ChatResult
from ..core.records import Record

if TYPE_CHECKING:
    from .config import PipelineConfig
    from ..backends.cache import CachedBackend


@dataclass
class StageStats:
    """What one stage unit did: its wall time, tokens generated (`continued_tokens` of them as
    follow-up turns inside an earlier stage's time), prompt tokens decoded and reused from the KV
    cache, requests replayed from the request cache (`cached`) or answered by an earlier stage's
    follow-ups (`continued`), and its drops by reason."""

    seconds: float = 0.0
    completion_tokens: int = 0
    continued_tokens: int = 0
    prompt_decoded: int = 0
    prompt_cached: int = 0
    cached_requests: int = 0
    continued_requests: int = 0
    dropped: Counter = field(default_factory=Counter)

    def count(self, result: ChatResult, continued: bool = False) -> None:
        """Add a fresh result: its generated tokens, and its prompt tokens decoded or reused."""
        tokens = sum(g.completion_tokens for g in result.generations)
        self.completion_tokens += tokens
        if continued:
            self.continued_tokens += tokens
        samples = max(1, len(result.generations))
        self.prompt_decoded += result.prompt_tokens * samples - result.cached_prompt_tokens
        self.prompt_cached += result.cached_prompt_tokens

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 2), "completion_tokens": self.completion_tokens,
                "continued_tokens": self.continued_tokens, "prompt_decoded": self.prompt_decoded,
                "prompt_cached": self.prompt_cached, "cached_requests": self.cached_requests,
                "continued_requests": self.continued_requests, "dropped": dict(self.dropped)}


class StageContext(Protocol):
    """What a stage sees of its run (pipeline.Runner provides it)."""

    cfg: PipelineConfig
    judges: list[str]

    @property
    def evolve_model(self) -> str: ...
    @property
    def judge_n_ctx(self) -> int: ...
    @property
    def chain(self): ...
    def error(self, record: Record, stage: str, message: str) -> None: ...
    def notice(self, message: str, stage: str = "", model: str = "") -> None: ...
    def cache(self, name: str, model: str, n_ctx: int) -> CachedBackend: ...
    def stats(self, name: str) -> StageStats: ...
    def read_path(self, model: str) -> str: ...


class Stage:
    """One unit of a stage kind: `name` keys its request cache and its counters, `model` is the
    model it needs (None: none), `n_ctx` the context per slot it asks for, `reads` whether its
    requests only read log-odds (they then run on the engine's fixed numerical path)."""

    kind: ClassVar[str]  # the stage's name
    command: ClassVar[str] = ""  # the CLI command that runs it alone (default: `kind`)
    help: ClassVar[str] = ""  # with a help, the CLI declares the command (model options included)
    reads: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.command:
            cls.command = cls.kind

    def __init__(self, name: str, model: str | None, n_ctx: int = 0):
        self.name, self.model, self.n_ctx = name, model, n_ctx

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        """The units this kind runs for `ctx.cfg`, in order ([] when it is off)."""
        raise NotImplementedError

    @classmethod
    def after(cls, records: list[Record], ctx: StageContext) -> None:
        """What the kind does once all its units ran (nothing by default)."""

    def total(self, records: list[Record], ctx: StageContext) -> int:
        """How many items this unit works through (its progress bar); 0 skips it."""
        return len(records)

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        """Work through `records` in place with `backend` (None when `model` is None);
        `on_result(progress, result)` after each fresh model answer."""
        raise NotImplementedError
