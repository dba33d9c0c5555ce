"""GBNF grammars (llama.cpp syntax) that force a judge's answer into a shape we can parse, and the
strict parser for that shape.

Small judges stray from any format a prompt asks for; a grammar makes straying impossible, so
the parser can be strict: it returns one `RatingLine` per response or raises `RatingParseError`,
never None. The parser accepts exactly what `build_rating_grammar` / `build_score_grammar`
produce (tests check both against one regex built from the same spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..core.errors import EdgeprefError

SCORE_DIGITS = "12345"  # the UltraFeedback scores, one token each
SEPARATOR = " - "


class RatingParseError(EdgeprefError):
    """A judge's answer does not have the `score - rationale` lines it was asked for."""


@dataclass(frozen=True)
class RatingLine:
    score: int
    rationale: str
    offset: int  # character offset of the score digit in the parsed text


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"a rating grammar needs at least one line, got n={n}")


def _root_and_lines(n: int, line_body: str) -> list[str]:
    # One named rule per line, spelled out in root: a repetition like `line{n}` would also work,
    # but explicit rules keep the count visible in the grammar text and in llama.cpp's dumps.
    # Rule names may only use letters, digits and '-', hence "line1", not "line_1".
    rules = ["root ::= " + " ".join(f"line{i}" for i in range(1, n + 1))]
    rules += [f"line{i} ::= {line_body}" for i in range(1, n + 1)]
    return rules


def build_rating_grammar(n: int, max_rationale_chars: int = 160) -> str:
    """Exactly `n` lines of `<score> - <rationale>\\n`; score one of 1-5, rationale 1 to
    `max_rationale_chars` characters, no newline, not starting with a space."""
    _check_n(n)
    if max_rationale_chars < 1:
        raise ValueError(f"max_rationale_chars must be at least 1, got {max_rationale_chars}")
    rules = _root_and_lines(n, f'score "{SEPARATOR}" rationale "\\n"')
    rules.append(f"score ::= [{SCORE_DIGITS[0]}-{SCORE_DIGITS[-1]}]")
    # The bound keeps a rambling small model from spending the whole token budget on one line.
    rest = max_rationale_chars - 1
    tail = f" [^\\n]{{0,{rest}}}" if rest else ""
    rules.append(f"rationale ::= [^\\n ]{tail}")
    return "\n".join(rules) + "\n"


def build_score_grammar(n: int) -> str:
    """Exactly `n` lines, each a single digit 1-5 and a newline (the cheap score-only mode)."""
    _check_n(n)
    rules = _root_and_lines(n, 'score "\\n"')
    rules.append(f"score ::= [{SCORE_DIGITS[0]}-{SCORE_DIGITS[-1]}]")
    return "\n".join(rules) + "\n"


def _gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            # llama.cpp reads literals as UTF-8, so other characters go in as they are.
            out.append(ch)
    return '"' + "".join(out) + '"'


def build_choice_grammar(choices: Sequence[str]) -> str:
    """The answer is exactly one of `choices` (e.g. "A" | "B")."""
    if not choices:
        raise ValueError("a choice grammar needs at least one choice")
    if any(c == "" for c in choices):
        raise ValueError("a choice grammar cannot contain the empty string")
    return "root ::= " + " | ".join(_gbnf_literal(c) for c in choices) + "\n"


def _parse_line(line: str, offset: int, with_rationale: bool, max_chars: int | None) -> RatingLine:
    number = f"line {line!r}"
    if not line or line[0] not in SCORE_DIGITS:
        raise RatingParseError(f"{number} does not start with a score from 1 to 5")
    score = int(line[0])
    if not with_rationale:
        if len(line) != 1:
            raise RatingParseError(f"{number} should be a single score digit 1-5")
        return RatingLine(score=score, rationale="", offset=offset)
    if not line.startswith(SEPARATOR, 1):
        raise RatingParseError(f"{number} is missing the {SEPARATOR!r} after the score")
    rationale = line[1 + len(SEPARATOR) :]
    if not rationale or rationale[0] == " ":
        raise RatingParseError(f"{number} needs a rationale after {SEPARATOR!r}")
    if max_chars is not None and len(rationale) > max_chars:
        raise RatingParseError(f"{number} has a rationale longer than {max_chars} characters")
    return RatingLine(score=score, rationale=rationale, offset=offset)


def parse_rating_lines(
    text: str, n: int, with_rationale: bool = True, max_rationale_chars: int | None = None
) -> list[RatingLine]:
    """Parse exactly `n` rating lines; a final newline is optional. Raises RatingParseError."""
    _check_n(n)
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    if len(lines) != n:
        raise RatingParseError(
            f"expected {n} rating line(s), got {len(lines)}: {text!r}",
            "the judge must answer under the rating grammar; see build_rating_grammar",
        )
    parsed = []
    offset = 0
    for line in lines:
        parsed.append(_parse_line(line, offset, with_rationale, max_rationale_chars))
        offset += len(line) + 1
    return parsed
