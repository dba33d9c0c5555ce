"""Stage 1, model pooling: one pool member writes completions for every instruction.

Reads  Record.instruction, and for a conversation Record.history and Record.system (the row's
       system prompt replaces the member's), and the completions already there (diversity guard).
Adds   Completion rows with source "pool", id "<member>:<k>", the model, system prompt,
       sampling, seed, token counts and finish reason.

Follow-ups: `then(record, k)` may give a ChatRequest.then for sample k of a request (the next
stage's request about this answer, e.g. its EvolQuality rewrite); a backend that keeps the
conversation runs it in place and `on_follow_ups` gets the results of each call's follow-ups.

Diversity guard: a new completion whose normalised text is more similar than
`similarity_threshold` to another completion of the same instruction is regenerated once with
hotter sampling and a new seed; the completion records `regenerated` and a note either way.
"""

from __future__ import annotations

import jinja2

from ..backends.base import Backend, ChatRequest, ChatResult, Sampling
from .config import PoolMember
from ..core.errors import ConfigError
from .evolve import EvolveStage, in_place
from ..core.records import Completion, ErrorSink, Record, completion_text, content_key, similarity
from .base import Stage, StageContext


def member_seed(seed: int, member: PoolMember, record_id: str, attempt: int = 0) -> int:
    return int(content_key("complete", seed, member.name, record_id, attempt)[:8], 16)


def _messages(member: PoolMember, record: Record) -> list[dict[str, str]]:
    """The member's chat for a record: the row's system prompt or else the member's, the earlier
    turns of a conversation, and the instruction through the member's template."""
    try:
        user = jinja2.Template(member.template, undefined=jinja2.StrictUndefined).render(
            instruction=record.instruction
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"pool member {member.name}: template does not render: {exc}") from exc
    messages = record.chat(member.system_prompt)
    messages[-1]["content"] = user
    return messages


def _request(member: PoolMember, record: Record, seed: int, temperature: float, n: int, then=None, k: int = 0) -> ChatRequest:
    sampling = Sampling(temperature=temperature, top_p=member.top_p, top_k=member.top_k,
                        max_tokens=member.max_tokens, seed=seed)
    follow = then(record, k) if then is not None and n == 1 else None
    return ChatRequest(_messages(member, record), sampling, n=n, id=record.id, then=follow)


def _follow_ups(results: list[ChatResult], on_follow_ups) -> None:
    follow_ups = [res.follow_up for res in results if res.follow_up is not None]
    if on_follow_ups is not None and follow_ups:
        on_follow_ups(follow_ups)


def _completion(member: PoolMember, record: Record, res: ChatResult, k: int, gen_index: int) -> Completion:
    gen = res.generations[gen_index]
    return Completion.generated(f"{member.name}:{k}", completion_text(gen.text), member.model, res, gen, source="pool",
                                system_prompt=record.system or member.system_prompt, member=member.name)


def complete(
    records: list[Record],
    member: PoolMember,
    backend: Backend,
    *,
    seed: int = 0,
    similarity_threshold: float = 0.9,
    on_result=None,
    on_error: ErrorSink | None = None,
    then=None,
    on_follow_ups=None,
) -> list[Record]:
    """Add `member.n` completions to every record (in place; returns the records)."""
    todo = [r for r in records if not any(c.member == member.name for c in r.completions)]
    reqs = [_request(member, r, member_seed(seed, member, r.id), member.temperature, member.n, then) for r in todo]
    results = backend.chat(reqs, on_result=on_result)
    _follow_ups(results, on_follow_ups)
    retry: list[tuple[Record, int, Completion]] = []
    for record, res in zip(todo, results):
        if not res.ok:
            if on_error:
                on_error(record, "complete", f"{member.name}: {res.error}")
            continue
        for k in range(len(res.generations)):
            comp = _completion(member, record, res, k, k)
            twin, score = _closest(record.completions, comp.text)
            record.completions.append(comp)
            if score > similarity_threshold:
                comp.note = f"near-duplicate of {twin} (similarity {score:.2f})"
                retry.append((record, k, comp))
    if retry:
        _regenerate(retry, member, backend, seed, similarity_threshold, on_result, then, on_follow_ups)
    return records


def _closest(completions: list[Completion], text: str) -> tuple[str | None, float]:
    best, best_id = 0.0, None
    for c in completions:
        s = similarity(c.text, text)
        if s > best:
            best, best_id = s, c.id
    return best_id, best


def _regenerate(retry, member: PoolMember, backend: Backend, seed: int, threshold: float, on_result=None,
                then=None, on_follow_ups=None) -> None:
    """One more try per near-duplicate, hotter and with a new seed; the outcome is recorded."""
    hotter = min(1.5, max(member.temperature, 0.3) + 0.4)
    reqs = [
        _request(member, record, member_seed(seed, member, record.id, attempt=k + 1), hotter, 1, then, k)
        for record, k, _ in retry
    ]
    results = backend.chat(reqs, on_result=on_result)
    _follow_ups(results, on_follow_ups)
    for (record, k, comp), res in zip(retry, results):
        if not res.ok:
            comp.note += "; regeneration failed, kept"
            continue
        fresh = _completion(member, record, res, k, 0)
        others = [c for c in record.completions if c.id != comp.id]
        twin, score = _closest(others, fresh.text)
        fresh.regenerated = True
        fresh.note = f"{comp.note}; regenerated at temperature {hotter:.2f}" + (
            f", still similar to {twin} ({score:.2f})" if score > threshold else f", now {score:.2f}"
        )
        record.completions[record.completions.index(comp)] = fresh



class CompleteStage(Stage):
    """Stage 1: one unit per pool member (the member whose model rewrites next goes last: one
    model load fewer); each adds that member's completions."""

    kind = "complete"
    help = """Stage 1 alone: the pool writes completions.

    Every pool member writes its completions of each instruction. INPUT is an instructions file
    (or records JSONL); writes records JSONL.

    \b
    Example:
      edgepref complete instructions.jsonl --out completed.jsonl --pool qwen2.5-coder-0.5b --pool smollm2-135m
    """

    def __init__(self, member: PoolMember, n_ctx: int):
        super().__init__(f"complete-{member.name}", member.model, n_ctx)
        self.member = member

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        members = sorted(ctx.cfg.pool, key=lambda m: m.model == ctx.evolve_model)
        return [cls(m, ctx.cfg.engine.n_ctx) for m in members]

    @classmethod
    def after(cls, records: list[Record], ctx: StageContext) -> None:
        """Put members back in pool order inside each record, whatever order they ran in."""
        order = {m.name: i for i, m in enumerate(ctx.cfg.pool)}
        for r in records:
            r.completions.sort(key=lambda c: (c.source != "pool", order.get(c.member, 99), c.id))

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        cfg = ctx.cfg
        then = in_place(self.member, cfg.pool, ctx.evolve_model, cfg.evolve, cfg.seed)
        on_follow_ups = self._into_evolve(ctx) if then is not None else None
        complete(records, self.member, backend, seed=cfg.seed, similarity_threshold=cfg.similarity_threshold,
                 on_result=on_result, on_error=ctx.error, then=then, on_follow_ups=on_follow_ups)

    @staticmethod
    def _into_evolve(ctx: StageContext):
        """Where rewrites asked as follow-ups go: the evolve stage's request cache and counters."""
        cache = ctx.cache(EvolveStage.kind, ctx.evolve_model, ctx.cfg.engine.n_ctx)
        stats = ctx.stats(EvolveStage.kind)

        def on_follow_ups(results) -> None:
            cache.prefetch(results)
            for result in results:
                stats.count(result, continued=True)

        return on_follow_ups
