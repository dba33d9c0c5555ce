"""Pairwise verdicts: which of two responses a judge prefers, read as log-odds in both orders.

A recipe fixes the prompt (template, system prompt, closing question), the label sets and an
optional answer prefill. For responses X and Y and one label set (L1, L2) the judge is asked
twice, X shown first and then Y shown first. Each answer is read as raw log-odds at its first
token, lo = log P(L1) - log P(L2), each label's spellings summed ("A" and " A"). Then

    margin(X over Y) = (lo(X shown first) - lo(Y shown first)) / 2

A prior for a label or for the first position adds the same amount to both terms and cancels,
and swapping X and Y negates the margin exactly: the verdict is order-invariant by
construction. Margins of several label sets are averaged (each label's own prior cancels too),
and so are a panel's. Positive: X is better; |margin| is the confidence.

Pointwise recipes (`scale` set) ask instead for a rating of each response on its own, read as the
probability-weighted score over the scale's digits at the first answer token; then
margin(X over Y) = (score(X) - score(Y)) / 2, in score units. Neither response is ever shown
beside the other, so no position or label prior exists to cancel.

Log-odds rather than probabilities: a small judge is often near-certain of the label it puts
first (P(A) = 0.99 in both orders); averaging those probabilities leaves nothing, while the
log-odds still differ by how much the content moved them.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

from ..backends.base import Backend, ChatRequest, ChatResult, Sampling
from ..core.errors import ConfigError
from ..backends.logprobs import weighted_score
from ..prompts import render_prompt

STRICT_JUDGE = "You are a strict judge of answer quality."
EXPERT_JUDGE = (
    "You are an expert evaluator of AI assistant responses. The better response is the one that "
    "fulfils the user's instruction: correct, helpful, relevant, complete and clearly written. "
    "The order in which the responses are shown does not matter."
)
LETTERS = ("A", "B")
FLIPPED = {"worse", "repeat-worse"}  # questions whose answer names the lesser response
NUMBERS = ("1", "2")


@dataclass(frozen=True)
class Recipe:
    """How one pairwise question is put to a judge and read."""

    name: str
    template: str = "pairwise_headings"
    # pairwise_headings: better | criteria | repeat | worse | repeat-worse. A "worse" question
    # is read with its sign flipped, so a recipe that asks "better" and "worse" cancels a
    # preference for a label that does not depend on the question, as the two orders cancel
    # one for a position.
    questions: tuple[str, ...] = ("better",)
    system: str | None = STRICT_JUDGE
    label_sets: tuple[tuple[str, str], ...] = (LETTERS,)
    prefill: str = ""
    # Show each response only up to this many words (0: whole). Fewer prompt tokens per pair.
    max_words: int = 0
    # Pointwise: the rating scale's answers, lowest first (template "pointwise"); empty: pairwise.
    scale: tuple[str, ...] = ()
    about: str = ""

    @property
    def pointwise(self) -> bool:
        return bool(self.scale)


PAIRWISE_RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("headings-ab", about="markdown headings, strict-judge system prompt, A/B"),
        Recipe("headings-12", label_sets=(NUMBERS,), about="as headings-ab with labels 1/2"),
        Recipe("headings-ab12", label_sets=(LETTERS, NUMBERS), about="headings-ab and headings-12 averaged"),
        Recipe("criteria-ab", questions=("criteria",), about="headings, the criteria named in the question"),
        Recipe("criteria-12", questions=("criteria",), label_sets=(NUMBERS,), about="criteria-ab with labels 1/2"),
        Recipe("criteria-ab12", questions=("criteria",), label_sets=(LETTERS, NUMBERS),
               about="criteria-ab and criteria-12 averaged"),
        Recipe("repeat-ab", questions=("repeat",), about="headings, the instruction repeated after the responses"),
        Recipe("repeat-12", questions=("repeat",), label_sets=(NUMBERS,), about="repeat-ab with labels 1/2"),
        Recipe("repeat-ab12", questions=("repeat",), label_sets=(LETTERS, NUMBERS),
               about="repeat-ab and repeat-12 averaged"),
        Recipe("contrast-ab", questions=("better", "worse"),
               about="headings-ab, also asked which is worse (read with its sign flipped)"),
        Recipe("repeat-contrast-ab", questions=("repeat", "repeat-worse"),
               about="repeat-ab, also asked which answers the instruction worse"),
        Recipe("contrast4-ab", questions=("better", "worse", "repeat", "repeat-worse"),
               about="contrast-ab and repeat-contrast-ab together: four questions on one prompt body"),
        Recipe("prefill-ab", prefill="The better response is Response",
               about="headings-ab with the answer started for the judge"),
        Recipe("plain-ab", template="pairwise", system=None,
               about="plain wording with criteria, no system prompt (the model's default)"),
        Recipe("expert-ab", system=EXPERT_JUDGE, about="headings, a system prompt naming the criteria"),
        Recipe("expert-contrast-ab", system=EXPERT_JUDGE, questions=("better", "worse"),
               about="expert-ab, also asked which is worse"),
        Recipe("headings-ab-w120", max_words=120, about="headings-ab, each response cut after 120 words"),
        Recipe("headings-ab-w60", max_words=60, about="headings-ab, each response cut after 60 words"),
        Recipe("rate5", template="pointwise", scale=tuple("12345"),
               about="each response rated alone 1-5, the probability-weighted score compared"),
        Recipe("rate9", template="pointwise", scale=tuple("123456789"),
               about="as rate5 on a 1-9 scale"),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in PAIRWISE_RECIPES:
        raise ConfigError(f"unknown judge recipe {name!r}; choose from {', '.join(PAIRWISE_RECIPES)}",
                          "edgepref eval-judge --help lists what each recipe does")
    return PAIRWISE_RECIPES[name]


@dataclass
class Verdict:
    """One judge's verdict on X against Y. `logodds`: per label set and question, (X shown first,
    Y shown first), each read as a preference for the response it names first, so that a
    "worse" question's log-odds are negated. A pointwise verdict holds (score of X, score of Y)."""

    judge: str
    margin: float = 0.0
    logodds: list[tuple[float, float]] = field(default_factory=list)
    error: str | None = None
    prompt_tokens: int = 0  # the prompt tokens of its requests, as if asked alone
    pointwise: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def request(recipe: Recipe, instruction: str, first: str, second: str, labels: tuple[str, str],
            question: str | None = None) -> ChatRequest:
    """The question (default: the recipe's first) with `first` shown first, answered by one of `labels`;
    for a pointwise recipe, `first` alone to be rated on its scale."""
    if recipe.max_words:
        first, second = clip_words(first, recipe.max_words), clip_words(second, recipe.max_words)
    if recipe.pointwise:  # `first` alone is rated; `second` and `labels` play no part
        def render(a: str, b: str) -> str:
            return render_prompt(recipe.template, instruction=instruction, response=a,
                                 low=recipe.scale[0], high=recipe.scale[-1])
        labels = recipe.scale
    else:
        def render(a: str, b: str) -> str:
            return render_prompt(recipe.template, instruction=instruction, first=a, second=b, label_first=labels[0],
                                 label_second=labels[1], question=question or recipe.questions[0])
    user = render(first, second)
    messages = ([{"role": "system", "content": recipe.system}] if recipe.system else []) + [
        {"role": "user", "content": user}
    ]
    return ChatRequest(messages, Sampling(max_tokens=0), prefill=recipe.prefill, choices=labels,
                       marks=_response_starts(render, user, first, second))


def _response_starts(render, user: str, first: str, second: str) -> tuple[int, ...]:
    """Where each response shown starts in `user` (render(first, second)): the prompts about one
    instruction share the text up to the first, those that show the same response first share it
    up to the second (ChatRequest.marks). Found by rendering with one-character stand-ins; none
    when the template does not show the responses as written."""
    skeleton = render(_FIRST, _SECOND)
    if skeleton.replace(_FIRST, first).replace(_SECOND, second) != user:
        return ()
    at_first, at_second = skeleton.find(_FIRST), skeleton.find(_SECOND)
    marks = [at_first] if at_first >= 0 else []
    if at_second >= 0:
        marks.append(at_second + (len(first) - 1 if 0 <= at_first < at_second else 0))
    return tuple(sorted(marks))


_FIRST, _SECOND = "\ue010", "\ue011"  # stand-ins no prompt template changes


def clip_words(text: str, n: int) -> str:
    """`text` up to its n-th word, its line breaks kept; " ..." marks a cut."""
    words = 0
    for i, ch in enumerate(text):
        if not ch.isspace() and (i == 0 or text[i - 1].isspace()):
            words += 1
            if words > n:
                return text[:i].rstrip() + " ..."
    return text


def _questions(recipe: Recipe) -> list[tuple[tuple[str, str], str]]:
    if recipe.pointwise:
        return [(LETTERS, "rate")]  # one rating of each response; the labels are not shown
    return [(labels, q) for labels in recipe.label_sets for q in recipe.questions]


def rated(result: ChatResult, scale: Sequence[str]) -> float | None:
    """The probability-weighted score over `scale` (its answers are 1, 2, ... in order), the
    probabilities renormalised over the scale; None without them."""
    lp = result.choice_logprobs
    if not result.ok or not lp or any(s not in lp for s in scale):
        return None
    top = max(lp[s] for s in scale)
    return weighted_score({s: math.exp(lp[s] - top) for s in scale}, scale)


def logodds(result: ChatResult, labels: tuple[str, str]) -> float | None:
    lp = result.choice_logprobs
    if not result.ok or not lp or labels[0] not in lp or labels[1] not in lp:
        return None
    return lp[labels[0]] - lp[labels[1]]


def compare(
    items: Sequence[tuple[str, str, str]],
    recipes: Sequence[Recipe],
    backend: Backend,
    judge: str,
    *,
    on_result=None,
    stats: dict | None = None,
) -> dict[str, list[Verdict]]:
    """Verdicts on (instruction, x, y) items for each recipe, in one batch of requests.

    Identical questions (recipes that share a prompt and label set) are asked once, and the
    requests of one item and showing order are adjacent so that the engine reuses their common
    prefix. Returns recipe name -> one Verdict per item (margin > 0: x better). `stats`, if
    given, gets the number of distinct requests and their prompt tokens.
    """
    reqs: list[ChatRequest] = []
    index: dict[str, int] = {}
    # recipe -> per item: (labels, sign, request with x first, request with y first) per question
    plan: dict[str, list[list[tuple[tuple[str, str], int, int, int]]]] = {r.name: [] for r in recipes}
    for instruction, x, y in items:
        where: dict[tuple[str, tuple[str, str], str, int], int] = {}
        for k, (first, second) in enumerate(((x, y), (y, x))):
            for recipe in recipes:
                for labels, question in _questions(recipe):
                    req = request(recipe, instruction, first, second, labels, question)
                    key = json.dumps([req.messages, req.prefill, list(req.choices)])
                    if key not in index:
                        index[key] = len(reqs)
                        reqs.append(req)
                    where[(recipe.name, labels, question, k)] = index[key]
        for recipe in recipes:
            plan[recipe.name].append([
                (labels, -1 if question in FLIPPED else 1,
                 where[(recipe.name, labels, question, 0)], where[(recipe.name, labels, question, 1)])
                for labels, question in _questions(recipe)
            ])
    results = backend.chat(reqs, on_result=on_result)
    if stats is not None:
        stats.update(requests=len(results), prompt_tokens=sum(r.prompt_tokens for r in results))
    out: dict[str, list[Verdict]] = {}
    for recipe in recipes:
        verdicts = []
        for asked in plan[recipe.name]:
            v = Verdict(judge, pointwise=recipe.pointwise)
            for labels, sign, i, j in asked:
                v.prompt_tokens += results[i].prompt_tokens + results[j].prompt_tokens
                if recipe.pointwise:
                    lx, ly = rated(results[i], recipe.scale), rated(results[j], recipe.scale)
                else:
                    lx, ly = logodds(results[i], labels), logodds(results[j], labels)
                if lx is None or ly is None:
                    bad = results[i] if lx is None else results[j]
                    v.error = bad.error or "the judge returned no label probabilities"
                    break
                v.logodds.append((sign * lx, sign * ly))
            if v.ok:
                v.margin = sum(lx - ly for lx, ly in v.logodds) / (2 * len(v.logodds))
            verdicts.append(v)
        out[recipe.name] = verdicts
    return out


def panel_margin(verdicts: Sequence[Verdict]) -> float | None:
    """Mean margin of the judges that gave one; None if none did."""
    good = [v.margin for v in verdicts if v.ok]
    return sum(good) / len(good) if good else None


SELF_PREFERENCE_FILE = "self_preference.json"  # in the package; written by scripts/self_preference.py


@functools.lru_cache(maxsize=None)
def shipped_self_preference() -> dict[tuple[str, str], tuple[float, int]]:
    """How often a judge preferred its own greedy answer to the better response of a dev pair
    (AlpacaEval's strong-model answers), as the shipped self_preference.json records it (its
    "command" made it): (judge, recipe) -> (share, n)."""
    text = resources.files("edgepref.judging").joinpath(SELF_PREFERENCE_FILE).read_text(encoding="utf-8")
    return {(f["judge"], f["recipe"]): (f["share"], f["n"])
            for f in json.loads(text)["figures"] if f["share"] is not None}


def self_preference_notice(judge: str, recipe: str) -> str:
    text = (f"{judge} judges completions it wrote itself; models tend to prefer their own answers "
            "(self-preference).")
    measured = shipped_self_preference().get((judge, recipe))
    if measured:
        share, n = measured
        text += (f" Measured with recipe {recipe}: it preferred its own answer to a strong model's in "
                 f"{share:.0%} of {n} dev instructions.")
    else:
        text += f" Measure it with `edgepref eval-judge PAIRS --judge {judge}` (self_preference)."
    return text + " Use a judge outside the pool, or a panel with exclude_self."
