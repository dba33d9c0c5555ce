"""Grammar text and the strict rating parser. The grammars themselves run in llama.cpp in the
judge/engine tests; here a regex written from the same spec stands in for them."""

from __future__ import annotations

import re

import pytest

from edgepref.core.errors import EdgeprefError
from edgepref.judging.grammars import (
    RatingLine, RatingParseError, build_choice_grammar, build_rating_grammar, build_score_grammar,
    parse_rating_lines)


def spec_regex(n: int, with_rationale: bool = True, max_chars: int = 160) -> re.Pattern:
    """The rating format as a regex, written from the spec rather than from the parser:
    n lines of `<1-5> - <rationale>` (or just `<1-5>`), the last newline optional."""
    line = rf"[1-5] - [^\n ][^\n]{{0,{max_chars - 1}}}" if with_rationale else r"[1-5]"
    return re.compile(rf"(?:{line}\n){{{n - 1}}}{line}\n?", re.DOTALL)


def rating_text(items: list[tuple[int, str]]) -> str:
    return "".join(f"{score} - {why}\n" for score, why in items)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_round_trip_with_rationale(n: int) -> None:
    items = [((i % 5) + 1, f"reason {i}: ok - mostly, \"quoted\"") for i in range(n)]
    text = rating_text(items)
    parsed = parse_rating_lines(text, n)
    assert [(p.score, p.rationale) for p in parsed] == items
    for p in parsed:
        assert text[p.offset] == str(p.score)
        assert text[p.offset + 1 : p.offset + 4] == " - "


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_round_trip_scores_only(n: int) -> None:
    scores = [5 - (i % 5) for i in range(n)]
    text = "".join(f"{s}\n" for s in scores)
    parsed = parse_rating_lines(text, n, with_rationale=False)
    assert parsed == [RatingLine(score=s, rationale="", offset=2 * i) for i, s in enumerate(scores)]


@pytest.mark.parametrize("text", ["4 - fine\n2 - weak\n", "4 - fine\n2 - weak"])
def test_trailing_newline_optional(text: str) -> None:
    parsed = parse_rating_lines(text, 2)
    assert [(p.score, p.rationale, p.offset) for p in parsed] == [(4, "fine", 0), (2, "weak", 9)]


BAD = {
    "too_few_lines": ("4 - fine\n", 2),
    "too_many_lines": ("4 - fine\n3 - ok\n1 - bad\n", 2),
    "blank_line_between": ("4 - fine\n\n3 - ok\n", 2),
    "two_trailing_newlines": ("4 - fine\n3 - ok\n\n", 2),
    "empty": ("", 1),
    "score_zero": ("0 - nothing\n", 1),
    "score_six": ("6 - too much\n", 1),
    "two_digit_score": ("10 - great\n", 1),
    "word_score": ("five - great\n", 1),
    "leading_space": (" 4 - fine\n", 1),
    "no_separator": ("4 fine\n", 1),
    "colon_separator": ("4: fine\n", 1),
    "separator_no_spaces": ("4-fine\n", 1),
    "empty_rationale": ("4 - \n", 1),
    "rationale_starts_with_space": ("4 -  fine\n", 1),
    "score_only_line": ("4\n", 1),
    "crlf_breaks_separator": ("4\r\n", 1),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_raises(case: str) -> None:
    text, n = BAD[case]
    with pytest.raises(RatingParseError):
        parse_rating_lines(text, n)
    assert not spec_regex(n).fullmatch(text), "spec regex and parser disagree"


def test_error_quotes_the_offending_line() -> None:
    with pytest.raises(RatingParseError) as info:
        parse_rating_lines("4 - fine\n7 - wrong scale\n", 2)
    assert "7 - wrong scale" in str(info.value)
    assert isinstance(info.value, EdgeprefError)


def test_score_only_rejects_rationale() -> None:
    with pytest.raises(RatingParseError):
        parse_rating_lines("4 - fine\n", 1, with_rationale=False)
    with pytest.raises(RatingParseError):
        parse_rating_lines("6\n", 1, with_rationale=False)


def test_max_rationale_chars_enforced_when_given() -> None:
    text = "3 - " + "x" * 11 + "\n"
    assert parse_rating_lines(text, 1, max_rationale_chars=11)[0].rationale == "x" * 11
    with pytest.raises(RatingParseError):
        parse_rating_lines(text, 1, max_rationale_chars=10)


# Candidate answers, good and bad, that the parser and the spec regex must judge the same way.
CANDIDATES = [
    ("1 - a\n", 1),
    ("5 - x - y - z", 1),
    ("3 - \tindented with a tab\n", 1),
    ("2 - ünïcode ✓\n4 - more\n", 2),
    ("4 - fine\n3 - ok\n", 3),
    ("2 -fine\n", 1),
    ("3 - ok\n3 - ok\n3 - ok\n3 - ok\n3 - ok", 5),
    ("3 - ok\n3 - ok\n3 - ok\n3 - ok\n3 - ok\n", 4),
    ("3 - " + "y" * 160 + "\n", 1),
] + [(text, n) for text, n in BAD.values()]


@pytest.mark.parametrize("text,n", CANDIDATES)
def test_parser_accepts_exactly_what_the_spec_regex_accepts(text: str, n: int) -> None:
    try:
        parse_rating_lines(text, n, max_rationale_chars=160)
        parsed = True
    except RatingParseError:
        parsed = False
    assert parsed == bool(spec_regex(n).fullmatch(text))


def _rules(grammar: str) -> dict[str, str]:
    rules = {}
    for line in grammar.strip().splitlines():
        name, sep, body = line.partition(" ::= ")
        assert sep, f"not a rule: {line!r}"
        assert re.fullmatch(r"[a-zA-Z0-9-]+", name), f"GBNF rule names are [a-zA-Z0-9-]: {name}"
        assert name not in rules, f"rule {name} defined twice"
        rules[name] = body
    return rules


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_rating_grammar_has_n_line_rules(n: int) -> None:
    rules = _rules(build_rating_grammar(n, max_rationale_chars=80))
    line_rules = sorted(name for name in rules if name.startswith("line"))
    assert line_rules == sorted(f"line{i}" for i in range(1, n + 1))
    assert rules["root"].split() == [f"line{i}" for i in range(1, n + 1)]
    for name in line_rules:
        assert rules[name] == 'score " - " rationale "\\n"'
    assert rules["score"] == "[1-5]"
    # first char: not newline, not space; then at most 79 more non-newline chars
    assert rules["rationale"] == "[^\\n ] [^\\n]{0,79}"


def test_rating_grammar_one_char_rationale_has_no_empty_repetition() -> None:
    assert _rules(build_rating_grammar(2, max_rationale_chars=1))["rationale"] == "[^\\n ]"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_score_grammar_has_n_line_rules(n: int) -> None:
    rules = _rules(build_score_grammar(n))
    assert rules["root"].split() == [f"line{i}" for i in range(1, n + 1)]
    assert {name for name in rules if name.startswith("line")} == {
        f"line{i}" for i in range(1, n + 1)
    }
    assert all(rules[f"line{i}"] == 'score "\\n"' for i in range(1, n + 1))
    assert rules["score"] == "[1-5]"


def test_grammars_reject_zero_lines() -> None:
    with pytest.raises(ValueError):
        build_rating_grammar(0)
    with pytest.raises(ValueError):
        build_score_grammar(0)


def test_choice_grammar_literals_and_escaping() -> None:
    assert build_choice_grammar(["A", "B"]) == 'root ::= "A" | "B"\n'
    grammar = build_choice_grammar(['say "hi"', "back\\slash", "two\nlines"])
    assert grammar == 'root ::= "say \\"hi\\"" | "back\\\\slash" | "two\\nlines"\n'
    with pytest.raises(ValueError):
        build_choice_grammar([])
