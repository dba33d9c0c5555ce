"""Stage 2, EvolQuality: rewrite responses into better ones along one criterion each.

Reads  Record.instruction, Record.completions with source "pool" (optionally only some members):
       with `pick` "all" (the default) every one; with "own" one per instruction, the evolving
       model's own completion (or, if it wrote none, the first pool member's).
Adds   Completion rows with source "evol": id "<parent>+evol<k>", `parent_id` (the completion
       rewritten, so chains keep their lineage), `criterion` (drawn with a seeded RNG from the
       record id, parent and step, never a global RNG), the evolving model and its sampling.
Drops  into Record.dropped with the reason: empty rewrites, rewrites that mostly talk about
       the rewrite ("talk": lead-ins and closing notes are stripped first, an announcement such as
       "Here's an improved version:" with whatever opens the text before it), rewrites that ask
       instead of answering ("request": "Please provide the original answer."), rewrites that
       are a bare refusal ("refusal": "I'm sorry, I can't assist with that request."), rewrites identical to their input,
       and near-copies of it (similarity above `similarity_threshold`, the pool's rule that the
       completions of one instruction are not near-copies): a pair of a response and its
       near-copy teaches nothing, and the judge cannot tell them apart.

The request is the conversation that produced the response plus one more user turn, the
criterion's rewrite prompt: [user: instruction, assistant: response, user: rewrite]; a row from a
conversation keeps its system prompt and earlier turns in front. When the
evolving model wrote the response, the pipeline asks for the rewrite as a follow-up of the
completion request (`continuation`, ChatRequest.then): the engine runs it in the slot that still
holds the conversation, so the instruction and the response are not decoded again, and the
result lands in this stage's request cache before the stage runs.

Evolved is not always better: evolved completions are judged like the others.
"""

from __future__ import annotations

import random
import re

from ..backends.base import Backend, ChatRequest, Sampling
from .config import EvolveConfig, PoolMember
from ..prompts import evol_template_name, render_prompt
from ..core.records import (
    Completion, ErrorSink, Record, completion_text, content_key, normalise_text, similarity)
from .base import Stage, StageContext

# Small models like to announce their answer: a heading or a lead-in sentence that ends in a
# colon. These are stripped from the start of a rewrite, so that the judge and the dataset see
# the answer itself.
_LEAKED_HEADING = re.compile(
    r"""^\s*(?:
        \#{1,6}\s*[^\n]*\b(?:response|answer|rewrite|rewritten|version)\b[^\n]*\n   # "# Improved Response"
      | \*\*\s*(?:improved|rewritten|new|better|revised|enhanced|updated|refined|final)\b[^\n]*
            \b(?:response|answer|version|instruction)\b[^\n]*\n                       # "**Improved Version of Your Answer:**"
      | \**\s*(?:improved|rewritten|new|better|revised|enhanced|updated|final)\s+
            (?:response|answer|version)\s*\**\s*:?\s*\**\s*(?:\n|(?=\S))            # "Improved Response:"
      | (?:here\s+is|here[’']s)\s+(?:the|an|my)\s+(?:improved|rewritten|revised|better|new)\s+
            (?:response|answer|version)[^\n]*:\s*\n?                                  # "Here is the improved response:"
      | (?:(?:sure|certainly|of\s+course|okay|ok)\s*[!,.]\s*)?
        (?:here\s+is|here[’']s|here\s+are|below\s+is)\s+(?:the|an?|my|your)\b[^\n:]{0,100}?
            \b(?:response|answer|version|rewrite|revision)s?\b[^\n:]{0,160}:[ \t]*\n?    # "Here's a new response that ...:"
      | (?:the\s+new\s+)?(?:response|answer)\s*(?:is)?\s*:\s*\n?                   # "Response:", "The new answer is:"
      | (?:-{3,}|\*{3,}|_{3,})[ \t]*\n                                             # a horizontal rule left above
    )""",
    re.IGNORECASE | re.VERBOSE,
)


# A sentence that talks about the rewrite instead of answering: it names the act of improving
# (improved, rewritten, revised, enhanced, updated, refined, added) and what was improved (the
# answer, response, version), or offers help with it ("I'd be happy to help you improve ...").
_TALK = re.compile(
    r"""\b(?:improv|rewr[io]t|revis|enhanc|updat|refin|modif|expand)\w*\b[^.!?\n]{0,40}?
          \b(?:your|my|the|this|previous|original)\s+(?:\w+\s+)?(?:answer|response|version|rewrite)s?\b
      | \b(?:this|the|here[’']s|here\s+is)\s+(?:an?\s+)?(?:improved|revised|rewritten|updated|enhanced|new|refined|
          better|expanded|more\s+\w+)\s+(?:version|answer|response)\b
      | \b(?:happy|glad|delighted)\s+to\s+help\b""",
    re.IGNORECASE | re.VERBOSE,
)
# A sentence that asks instead of answering: a rewrite that is a request for the answer it was
# given ("Sure, please provide the original answer.", "Could you share the text?").
_REQUEST = re.compile(
    r"""\b(?:please\s+(?:provide|share|give|send|paste|clarify|specify|let\s+me\s+know)
      | (?:could|can|would)\s+you\s+(?:please\s+)?(?:provide|share|give|send|paste|clarify|specify|tell\s+me)
      | i\s+(?:would\s+)?need\s+(?:the|more|your|some)\b
      | (?:what|which)\s+is\s+the\s+original)""",
    re.IGNORECASE | re.VERBOSE,
)
# A rewrite that refuses the task it was given an answer to ("I'm sorry, I can't assist with
# that request."): short, and nothing but the refusal.
_REFUSAL = re.compile(
    r"""^\W*(?:i[’']?m\s+sorry|i\s+am\s+sorry|sorry|i\s+apologi[sz]e|unfortunately)\b[^.!?\n]{0,60}?
        \b(?:can(?:no|[’'])t|cannot|am\s+unable|am\s+not\s+able|won[’']t)\b[^\n]{0,120}$""",
    re.IGNORECASE | re.VERBOSE,
)
# An announcement of the rewrite that ends in a colon ("Here's an improved version:"), wherever
# it falls in the opening lines: what comes before it is a lead-in too.
_ANNOUNCE = re.compile(
    r"""(?:here\s+is|here[’']s|here\s+are|below\s+is)\s+(?:the|an?|my|your)\b[^\n:]{0,100}?
        \b(?:response|answer|version|rewrite|revision)s?\b[^\n:]{0,160}:[ \t]*\n?""",
    re.IGNORECASE | re.VERBOSE,
)
MAX_LEAD_IN = 300  # characters before an announcement that may still be a lead-in
# the model speaking of itself or to the user, which an answer's own first sentence rarely does
_SPEAKS = re.compile(r"\b(?:happy|glad|delighted)\s+to\b|\bI(?:[’']d|[’']ll|\s+would|\s+will|\s+can)\b",
                     re.IGNORECASE)
# A lead-in sentence: a pleasantry, or talk about the rewrite that ends the line or a colon.
_LEAD_SENTENCE = re.compile(r"^[^\n]{0,300}?(?:[.!?:](?=\s)|[.!?:]?\s*\n|:\s*$)")
_PLEASANTRY = re.compile(r"^\s*(?:(?:sure|certainly|of\s+course|absolutely|okay|ok|great|yes)\s*[!,.]"
                         r"|thank\s+you\b[^.!?\n]{0,80}[.!])\s*", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?:])\s+|\n+", text) if s.strip()]


def talk_share(text: str, pattern: re.Pattern = _TALK) -> float:
    """The share of the text's characters in sentences that talk about the rewrite (or, with
    `pattern`, match another kind of sentence)."""
    sentences = _sentences(text)
    total = sum(len(s) for s in sentences)
    return sum(len(s) for s in sentences if pattern.search(s)) / total if total else 0.0


def request_share(text: str) -> float:
    """The share of the text's characters in sentences that ask for something instead of answering."""
    return talk_share(text, _REQUEST)


def strip_leaked_headings(text: str) -> str:
    """Remove headings and lead-ins a model wrote above its rewrite ("# Improved Response",
    "Improved Response:", "Here's a new response that includes more details:", "Sure, I'd be
    happy to help you improve your answer."), and a last paragraph that only talks about it
    ("This version adds ...")."""
    previous = None
    text = text.strip()
    announced = _ANNOUNCE.search(text[: MAX_LEAD_IN + 200])
    if announced and announced.start() <= MAX_LEAD_IN and text[announced.end():].strip():
        before = text[: announced.start()]
        if not before.strip() or _PLEASANTRY.match(before) or _TALK.search(before) or _SPEAKS.search(before):
            text = text[announced.end():].strip()  # "Sure, I'd be happy to ... Here's an improved version:"
    while previous != text:
        previous = text
        text = _LEAKED_HEADING.sub("", text, count=1).strip()
        polite = _PLEASANTRY.match(text)  # "Sure!", "Thank you for ...", when talk follows it
        if polite and _TALK.search(_first_sentence(text[polite.end():]) or _first_sentence(text)):
            text = text[polite.end():].strip()
        first = _first_sentence(text)
        if first and _TALK.search(first) and first.rstrip().endswith((":", ".", "!")) and len(first) < len(text):
            text = text[len(first):].strip()
    paragraphs = text.split("\n\n")
    if len(paragraphs) > 1 and talk_share(paragraphs[-1]) > 0.5:
        text = "\n\n".join(paragraphs[:-1]).strip()
    # closing sentences that talk about the rewrite ("This revised version uses ...")
    while (last := (_sentences(text) or [""])[-1]) and _TALK.search(last) and len(last) < len(text):
        text = text[: text.rfind(last)].strip()
    return text


def _first_sentence(text: str) -> str:
    m = _LEAD_SENTENCE.match(text)
    return m.group(0) if m else ""


def pick_criterion(cfg: EvolveConfig, seed: int, record_id: str, parent_id: str, step: int) -> str:
    rng = random.Random(content_key("evolve", seed, record_id, parent_id, step))
    return rng.choice(list(cfg.criteria))


def pick_parents(completions: list[Completion], model: str, cfg: EvolveConfig) -> list[Completion]:
    """The one rule for which completions `model` rewrites: the pool ones of `cfg.members` (all
    members when None); with `pick` "all" every one, with "own" the first that `model` wrote, or
    the first of all when it wrote none."""
    pool = [c for c in completions
            if c.source == "pool" and (cfg.members is None or c.member in cfg.members)]
    if cfg.pick == "all":
        return pool
    own = [c for c in pool if c.model == model]
    return (own or pool)[:1]


def parents(record: Record, model: str, cfg: EvolveConfig) -> list[Completion]:
    """The completions of `record` that `model` rewrites."""
    return pick_parents(record.completions, model, cfg)


def planned_parents(pool: list[PoolMember], model: str, cfg: EvolveConfig) -> set[str]:
    """Ids of the completions `model` will rewrite when every pool member answers: those whose
    rewrite can be asked as a follow-up of their completion request (the same rule as `parents`)."""
    if cfg.num_evolutions < 1:
        return set()
    planned = [Completion(f"{m.name}:{k}", "", m.model, member=m.name) for m in pool for k in range(m.n)]
    return {c.id for c in pick_parents(planned, model, cfg)}


def rewrite_request(record: Record, parent: Completion, criterion: str, cfg: EvolveConfig, seed: int) -> ChatRequest:
    turn = render_prompt(evol_template_name(criterion), instruction=record.instruction, response=parent.text)
    messages = [  # a conversation's earlier turns (and the row's system prompt) stay in view
        *record.chat(),
        {"role": "assistant", "content": parent.text},
        {"role": "user", "content": turn},
    ]
    sampling = Sampling(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_tokens=cfg.max_tokens,
        seed=int(content_key("evolve-seed", seed, record.id, parent.id)[:8], 16),
    )
    return ChatRequest(messages, sampling, id=record.id)


def continuation(record: Record, member: str, model: str, k: int, cfg: EvolveConfig, seed: int):
    """For sample k of pool member `member`'s completion request (on `model`): a ChatRequest.then
    that asks for this stage's first rewrite of the answer, the very request `evolve` would send.
    The parent's text is the one the complete stage keeps."""
    parent_id = f"{member}:{k}"

    def then(text: str) -> ChatRequest:
        parent = Completion(parent_id, completion_text(text), model, member=member)
        return rewrite_request(record, parent, pick_criterion(cfg, seed, record.id, parent_id, 1), cfg, seed)

    return then


def in_place(member: PoolMember, pool: list[PoolMember], evolve_model: str, cfg: EvolveConfig, seed: int):
    """`then(record, k)` for the complete stage of `member`: the rewrite of each answer this stage
    rewrites, asked in place (the model that wrote it rewrites it, `cfg.in_place`); None when the
    member has no such answer."""
    ids = planned_parents(pool, evolve_model, cfg) if cfg.in_place and member.model == evolve_model else set()
    if not any(i.partition(":")[0] == member.name for i in ids):
        return None

    def then(record: Record, k: int):
        if f"{member.name}:{k}" not in ids:
            return None
        return continuation(record, member.name, member.model, k, cfg, seed)

    return then


# A rewrite more than half of which talks about rewriting is dropped: trained on, it teaches a
# model to talk about improving answers.
MAX_TALK_SHARE = 0.5


def drop_reason(text: str, parent: str, similarity_threshold: float = 1.0) -> tuple[str | None, float]:
    """Why a rewrite of `parent` is not kept ("empty", "talk", "request", "refusal", "identical",
    "near_copy") or None,
    and its similarity to the parent."""
    if not text:
        return "empty", 0.0
    if talk_share(text) > MAX_TALK_SHARE:
        return "talk", 0.0
    if request_share(text) > MAX_TALK_SHARE:
        return "request", 0.0
    if _REFUSAL.match(text.strip()):
        return "refusal", 0.0
    if normalise_text(text) == normalise_text(parent):
        return "identical", 1.0
    score = similarity(text, parent)
    return ("near_copy" if score > similarity_threshold else None), score


def evolve(
    records: list[Record],
    model: str,
    backend: Backend,
    cfg: EvolveConfig,
    *,
    seed: int = 0,
    similarity_threshold: float = 1.0,
    on_result=None,
    on_error: ErrorSink | None = None,
) -> list[Record]:
    """Add up to `cfg.num_evolutions` chained rewrites per selected completion (in place)."""
    frontier: list[tuple[Record, Completion, str]] = []  # (record, parent, root id)
    for record in records:
        if any(c.source == "evol" for c in record.completions):
            continue  # already evolved (a rerun of this stage on its own output)
        for c in parents(record, model, cfg):
            frontier.append((record, c, c.id))
    for step in range(1, cfg.num_evolutions + 1):
        if not frontier:
            break
        criteria = [pick_criterion(cfg, seed, r.id, p.id, step) for r, p, _ in frontier]
        reqs = [rewrite_request(r, p, crit, cfg, seed) for (r, p, _), crit in zip(frontier, criteria)]
        results = backend.chat(reqs, on_result=on_result)
        next_frontier = []
        for (record, parent, root), crit, res in zip(frontier, criteria, results):
            if not res.ok:
                if on_error:
                    on_error(record, "evolve", f"rewrite of {parent.id}: {res.error}")
                continue
            gen = res.generations[0]
            text = strip_leaked_headings(gen.text)
            reason, score = drop_reason(text, parent.text, similarity_threshold)
            if reason:
                record.dropped.append({"stage": "evolve", "reason": reason, "parent_id": parent.id,
                                       "criterion": crit, "similarity": round(score, 3)})
                continue
            child = Completion.generated(f"{root}+evol{step}", text, model, res, gen, source="evol",
                                         parent_id=parent.id, criterion=crit, member=parent.member)
            record.completions.append(child)
            next_frontier.append((record, child, root))
        frontier = next_frontier
    return records


class EvolveStage(Stage):
    """Stage 2: one unit on the evolving model (`[evolve] model`, default the first judge)."""

    kind = "evolve"
    help = """Stage 2 alone: EvolQuality rewrites.

    Rewrites of the completions in INPUT (records JSONL).

    \b
    Example:
      edgepref evolve completed.jsonl --out evolved.jsonl --evolutions 2
    """

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        if ctx.cfg.evolve.num_evolutions < 1:
            return []
        return [cls(cls.kind, ctx.evolve_model, ctx.cfg.engine.n_ctx)]

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        before = {r.id: len(r.dropped) for r in records}
        evolve(records, self.model, backend, ctx.cfg.evolve, seed=ctx.cfg.seed,
               similarity_threshold=ctx.cfg.similarity_threshold, on_result=on_result, on_error=ctx.error)
        ctx.stats(self.name).dropped.update(d["reason"] for r in records for d in r.dropped[before[r.id]:])
