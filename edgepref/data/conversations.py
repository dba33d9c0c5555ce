"""A conversation given as input: what one row's `messages` (or `conversations`) value may be,
and what it becomes on a `Record` (see the contract on `Record.history` and `Record.system`).

Two spellings are read, the ones the trainers' datasets use:
- OpenAI / TRL: `[{"role": "system" | "user" | "assistant", "content": str}, ...]`; a content given
  as text parts (`[{"type": "text", "text": str}, ...]`, as exported chats often are) is their
  texts joined with a blank line, and a part of another type (an image) refuses the row
- ShareGPT (LLaMA-Factory, axolotl): `[{"from": "system" | "human" | "gpt", "value": str}, ...]`
  (`user` and `assistant` are accepted in `from` too).
A string value is read as JSON text first: that is how a CSV cell carries the column.

A conversation is one that a model can answer: an optional system message first, then user and
assistant turns alternating from a user turn, ending with the user turn to answer. Anything else
is refused with a reason that names the turn (1-based, counting the system message), so the
reader can report it by row and go on. Every text is stripped, as an instruction is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..core.records import Record, content_key
from .printable import has_printable

# The columns read as a conversation when --messages-column does not name one, in this order:
# TRL's and OpenAI's name, then ShareGPT's.
CONVERSATION_COLUMNS = ("messages", "conversations")
# The per-row system prompt column (LLaMA-Factory's ShareGPT `system`).
SYSTEM_COLUMN = "system"
# Each accepted role name, in `role` or ShareGPT `from`, and the role it means.
ROLE_NAMES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
# A quoted text in a reason is cut to this many characters: a reason is one line.
QUOTE_CHARS = 60


@dataclass
class Conversation:
    """A valid conversation: the last user turn, the turns before it, the system prompt."""

    instruction: str
    history: list[dict] = field(default_factory=list)  # {"role": "user" | "assistant", "content"}
    system: str | None = None


def parse_conversation(value: object, column: str = "messages") -> tuple[Conversation | None, str | None]:
    """(the Conversation, None) or (None, why `value`, the `column` cell of a row, is not one)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            return None, f"{column!r} is text that is not a JSON list of messages ({why})"
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        return None, f"{column!r} is a {type(value).__name__}, not a list of messages"
    if not value:
        return None, f"{column!r} is an empty conversation"
    turns = []
    for n, turn in enumerate(value, start=1):
        parsed, why = _parse_turn(turn, n)
        if why:
            return None, f"{column!r} {why}"
        turns.append(parsed)
    why = _order_problem(turns)
    if why:
        return None, f"{column!r} {why}"
    system = turns[0]["content"] if turns[0]["role"] == "system" else None
    dialogue = turns[1:] if system is not None else turns
    return Conversation(instruction=dialogue[-1]["content"], history=dialogue[:-1], system=system), None


TEXT_PART_TYPES = ("text", "input_text", "output_text")  # OpenAI's chat and responses spellings


def show_type(value: object) -> str:
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _join_text_parts(parts: list, where: str) -> tuple[str | None, str | None]:
    """OpenAI-style content given as parts, `[{"type": "text", "text": ...}, ...]`: their texts
    joined with a blank line, or why it cannot be read (a part of another type, an image)."""
    texts = []
    for i, part in enumerate(parts, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PART_TYPES or not isinstance(part.get("text"), str):
            what = f"of type {kind!r}" if isinstance(kind, str) else f"{show_type(part)} without a type"
            return None, (f"{where} content part {i} is {what}, not text: the models here read text only "
                          "(drop the part, or the row)")
        texts.append(part["text"].strip())
    if not texts:
        return None, f"{where} has an empty list of content parts"
    return "\n\n".join(t for t in texts if t), None


def _parse_turn(turn: object, n: int) -> tuple[dict | None, str | None]:
    """One message as {"role", "content"} with the role normalised, or why it is not one. A key
    whose value is None counts as absent: an Arrow struct column that mixes both spellings has
    all four keys in every row."""
    if not isinstance(turn, dict):
        return None, f"turn {n} is a {type(turn).__name__}, not an object"
    if turn.get("role") is not None:
        role_key, content_key_ = "role", "content"
    elif turn.get("from") is not None:
        role_key, content_key_ = "from", "value"
    else:
        return None, f"turn {n} has no 'role' (or ShareGPT 'from')"
    name = turn[role_key]
    role = ROLE_NAMES.get(name.strip().lower()) if isinstance(name, str) else None
    if role is None:
        return None, (f"turn {n} has unknown role {_quote(name)} (expected system, user or assistant; "
                      "ShareGPT: system, human or gpt)")
    content = turn.get(content_key_)
    if content is None:
        return None, f"turn {n} ({role}) has no {content_key_!r}"
    if isinstance(content, list):
        content, problem = _join_text_parts(content, f"turn {n} ({role})")
        if problem:
            return None, problem
    if not isinstance(content, str):
        return None, f"turn {n} ({role}) {content_key_!r} is a {type(content).__name__}, not text"
    text = content.strip()
    if not has_printable(text):
        return None, f"turn {n} ({role}) is blank" + (" (only invisible characters)" if text else "")
    return {"role": role, "content": text}, None


def _order_problem(turns: list[dict]) -> str | None:
    """Why the roles of these turns do not make a conversation to answer, or None."""
    for n, turn in enumerate(turns[1:], start=2):
        if turn["role"] == "system":
            return f"turn {n} is a system message; only the first turn may be one"
    start = 1 if turns[0]["role"] == "system" else 0
    if start == len(turns):
        return "has only a system message; it needs a user turn to answer"
    if turns[start]["role"] != "user":
        return f"turn {start + 1} is an assistant turn before any user turn; a conversation starts with the user"
    for n in range(start + 1, len(turns)):
        if turns[n]["role"] == turns[n - 1]["role"]:
            who = turns[n]["role"]
            return f"turns {n} and {n + 1} are both {who} turns; user and assistant turns must alternate"
    if turns[-1]["role"] == "assistant":
        return f"ends with an assistant turn (turn {len(turns)}); the last turn must be the user turn to answer"
    return None


def parse_system(value: object) -> tuple[str | None, str | None]:
    """A row's `system` cell as (the system prompt or None, None) or (None, why it cannot be one).
    No value, a blank text and NaN (an empty CSV cell) mean the row has no system prompt of its own."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if not isinstance(value, str):
        return None, f"{SYSTEM_COLUMN!r} is a {type(value).__name__}, not text"
    text = value.strip()
    return (text if has_printable(text) else None), None


def merge_system(column_system: str | None, conversation: Conversation) -> tuple[str | None, str | None]:
    """The row's system prompt from its `system` column and its conversation's leading system
    message: either alone, or both when equal; (None, why) when they differ, since neither can
    be chosen without guessing what the row meant."""
    own = conversation.system
    if column_system is None or own is None or column_system == own:
        return column_system or own, None
    return None, (f"the {SYSTEM_COLUMN!r} column ({_quote(column_system)}) and the conversation's system message "
                  f"({_quote(own)}) differ; give the system prompt once")


def record_key(record: Record) -> str:
    """The text that says what a record asks, for duplicates and --shard: the instruction alone
    for a single-turn row without a system prompt (so those keep the ids and shards they had
    before conversations), else the JSON of system, history and instruction."""
    if not record.is_conversation:
        return record.instruction
    return json.dumps({"system": record.system, "history": record.history, "instruction": record.instruction},
                      ensure_ascii=False, sort_keys=True)


def record_content_id(record: Record) -> str:
    """A record's id from what it asks (when the input gives none): the whole conversation."""
    if not record.is_conversation:
        return content_key("instruction", record.instruction)
    return content_key("conversation", record.system, record.history, record.instruction)


def history_problem(history: object, system: object) -> str | None:
    """Why a records.jsonl row's `history` and `system` are not what a Record holds, or None."""
    if system is not None and not isinstance(system, str):
        return "system is not text"
    if not isinstance(history, list):
        return "history is not a list"
    for n, turn in enumerate(history, start=1):
        if (not isinstance(turn, dict) or turn.get("role") != ("user" if n % 2 else "assistant")
                or not isinstance(turn.get("content"), str)):
            return "history is not alternating user and assistant turns with text content"
    if len(history) % 2:
        return "history does not end with an assistant turn"
    return None


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 4] + "...'"


# ---------------------------------------------------------------- fitting a context

# Prompt tokens are estimated before any model loads, from UTF-8 bytes: English text runs 4-5
# bytes a token in these models' vocabularies and CJK text about 3, so bytes / 3 overestimates
# the tokens and a kept turn is not what overflows a context. Each message also costs a few
# tokens of chat-template markup.
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8


def estimated_tokens(text: str) -> int:
    """An upper estimate of the tokens `text` takes in a prompt (see BYTES_PER_TOKEN)."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE


def fit_history(record: Record, budget: int) -> int:
    """Drop the oldest exchanges (a user turn and the assistant's reply) of `record.history` until
    its system prompt, the turns left and the instruction fit `budget` estimated tokens; the drop
    is recorded in `record.dropped` (stage "input", reason "context"). Returns the number of
    messages dropped. A row whose system prompt and instruction alone exceed the budget keeps
    them: its requests then fail as too long, each a row error."""
    def size() -> int:
        texts = [record.system or "", record.instruction, *(t["content"] for t in record.history)]
        return sum(estimated_tokens(t) for t in texts if t)

    dropped = 0
    while record.history and size() > budget:
        del record.history[:2]  # history alternates user, assistant: remove one exchange
        dropped += 2
    if dropped:
        record.dropped.append({"stage": "input", "reason": "context", "turns": dropped,
                               "kept": len(record.history), "budget_tokens": budget})
    return dropped
