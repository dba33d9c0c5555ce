"""The trainers' own preference layouts, made from edgepref's pairs: LLaMA-Factory and axolotl.

pairs.jsonl holds TRL's layout: `prompt`/`chosen`/`rejected` strings (standard), or message lists
(conversational: `prompt` is the chat, an optional system message first, then user and assistant
turns ending with a user turn; `chosen`/`rejected` one assistant message each). Both read as one
`Conversation` (a string prompt is a one-turn chat), and each trainer's layout is written from that:

- LLaMA-Factory, preference dataset in sharegpt format (hiyouga/LLaMA-Factory, data/README.md,
  "Sharegpt Format" / "Preference Dataset"): `conversations` of `from`/`value` turns tagged
  `human`/`gpt` at odd/even positions ending with `human`, `chosen` and `rejected` one `gpt`
  message each, the system prompt in a `system` column; the rows file is found through its entry
  in `dataset_info.json` (`"formatting": "sharegpt"`, `"ranking": true`, `columns`, `tags`).
- axolotl, DPO with `type: chat_template.default` (axolotl-ai-cloud/axolotl, docs/rlhf.qmd,
  "chat_template.default"; local files: docs/dataset_loading.qmd): `messages` of `role`/`content`
  with the system message first, `chosen` and `rejected` one assistant message each; the dataset
  lines of the axolotl config name the fields and the roles.

The provenance fields (scores, models, rationales...) ride along as extra columns: both trainers
read only the columns their config names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError

PAIR_TEXT_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Conversation:
    """One pair as a chat: `turns` alternate user/assistant, start and end with a user turn."""

    system: str | None
    turns: list[dict]
    chosen: str
    rejected: str


class NotAPairRow(InputError):
    """A pairs row that is neither TRL's standard nor its conversational preference layout."""


def pair_conversation(row: dict, number: int) -> Conversation:
    """The chat of pairs row `number` (1-based, for the message): standard or conversational."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        system, turns = None, [{"role": "user", "content": prompt}]
    else:
        system, turns = _prompt_messages(prompt, number)
    return Conversation(system, turns, _reply(row.get("chosen"), "chosen", number),
                        _reply(row.get("rejected"), "rejected", number))


def _prompt_messages(prompt: object, number: int) -> tuple[str | None, list[dict]]:
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
        raise _bad(number, "prompt is neither a string nor a list of messages")
    system = None
    if prompt[0].get("role") == "system":
        system = _content(prompt[0], "the system message", number)
        prompt = prompt[1:]
    turns = []
    for i, message in enumerate(prompt):
        expected = ("user", "assistant")[i % 2]
        if message.get("role") != expected:
            raise _bad(number, f"prompt message {i + 1} has role {message.get('role')!r} where {expected!r} "
                       "belongs (turns alternate user/assistant after an optional system message)")
        turns.append({"role": expected, "content": _content(message, f"prompt message {i + 1}", number)})
    if not turns or turns[-1]["role"] != "user":
        raise _bad(number, "the prompt does not end with a user turn")
    return system, turns


def _reply(value: object, name: str, number: int) -> str:
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant"):
        return _content(value[0], name, number)
    raise _bad(number, f"{name} is neither a string nor one assistant message")


def _content(message: dict, what: str, number: int) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise _bad(number, f"{what} has no text content")
    return content


def _bad(number: int, reason: str) -> NotAPairRow:
    return NotAPairRow(f"pair {number}: {reason}",
                       "the pairs file was changed after the run, or written by another tool; fix or remove "
                       "that row, then export again")


def trl_conversational(conv: Conversation, extra: dict) -> dict:
    """The pair in TRL's conversational layout (a standard pair becomes a one-turn chat)."""
    system = [{"role": "system", "content": conv.system}] if conv.system is not None else []
    return {**extra, "prompt": system + [dict(t) for t in conv.turns],
            "chosen": [{"role": "assistant", "content": conv.chosen}],
            "rejected": [{"role": "assistant", "content": conv.rejected}]}


def one_trl_layout(pairs: list[dict]) -> list[dict]:
    """The pairs, all in one TRL layout: a run's pairs may mix standard rows (single-turn) and
    conversational ones, which no Arrow column holds (nor a TRL dataset, which has one format), so
    when both are there every row is written conversational."""
    if len({isinstance(p.get("prompt"), str) for p in pairs}) < 2:
        return pairs
    return [trl_conversational(pair_conversation(row, i), provenance(row)) for i, row in enumerate(pairs, 1)]


def provenance(row: dict) -> dict:
    """Everything of a pairs row but its text, for the trainer rows to carry along."""
    return {k: v for k, v in row.items() if k not in PAIR_TEXT_FIELDS}


# ---------------------------------------------------------------- LLaMA-Factory

LLAMA_FACTORY_DATASET = "edgepref_pairs"  # the entry's name in dataset_info.json: `dataset:` in the training config
LLAMA_FACTORY_INFO = "dataset_info.json"  # the file LLaMA-Factory reads from its `dataset_dir`
# the documented default tags, written out so that the entry says how to read the rows
LLAMA_FACTORY_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
_SHAREGPT_ROLES = {"user": LLAMA_FACTORY_TAGS["user_tag"], "assistant": LLAMA_FACTORY_TAGS["assistant_tag"]}


def llama_factory_row(conv: Conversation, extra: dict) -> dict:
    # "" for no system prompt: LLaMA-Factory's own default, and the template's default system applies
    return {**extra,
            "conversations": [{"from": _SHAREGPT_ROLES[t["role"]], "value": t["content"]} for t in conv.turns],
            "chosen": {"from": _SHAREGPT_ROLES["assistant"], "value": conv.chosen},
            "rejected": {"from": _SHAREGPT_ROLES["assistant"], "value": conv.rejected},
            "system": conv.system or ""}


def llama_factory_entry(file_name: str) -> dict:
    return {"file_name": file_name, "formatting": "sharegpt", "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
            "tags": dict(LLAMA_FACTORY_TAGS)}


def llama_factory_info(data: Path, existing: str | None) -> str:
    """dataset_info.json with the entry for `data`; the other entries of an existing one are kept
    (it may be a LLaMA-Factory data folder's, with many datasets)."""
    info: dict = {}
    if existing is not None:
        try:
            parsed = json.loads(existing)
        except ValueError:
            parsed = None
        info = parsed if isinstance(parsed, dict) else {}
    info[LLAMA_FACTORY_DATASET] = llama_factory_entry(data.name)
    return json.dumps(info, indent=2, ensure_ascii=False) + "\n"


def llama_factory_usage(data: Path) -> str:
    return (f"stage: dpo\ndataset_dir: {json.dumps(str(data.parent.resolve()))}\n"
            f"dataset: {LLAMA_FACTORY_DATASET}\n")


# ---------------------------------------------------------------- axolotl

AXOLOTL_CONFIG = "axolotl.yaml"


def axolotl_row(conv: Conversation, extra: dict) -> dict:
    system = [{"role": "system", "content": conv.system}] if conv.system else []
    return {**extra,
            "messages": system + [dict(t) for t in conv.turns],
            "chosen": {"role": "assistant", "content": conv.chosen},
            "rejected": {"role": "assistant", "content": conv.rejected}}


def axolotl_usage(data: Path) -> str:
    # Written by hand (no YAML library needed): a JSON string is a YAML double-quoted scalar.
    return (f"rl: dpo\n"
            f"datasets:\n"
            f"  - path: {json.dumps(str(data.resolve()))}\n"
            f"    ds_type: json\n"
            f"    split: train\n"
            f"    type: chat_template.default\n"
            f"    field_messages: messages\n"
            f"    field_chosen: chosen\n"
            f"    field_rejected: rejected\n"
            f"    message_property_mappings:\n"
            f"      role: role\n"
            f"      content: content\n"
            f"    roles:\n"
            f"      system: [\"system\"]\n"
            f"      user: [\"user\"]\n"
            f"      assistant: [\"assistant\"]\n")


def axolotl_config(data: Path, existing: str | None) -> str:
    return ("# axolotl: DPO on the pairs edgepref exported; paste into your config (docs/rlhf.qmd,\n"
            "# chat_template.default). The path is absolute: move the file and change it.\n"
            + axolotl_usage(data))


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class TrainerLayout:
    trainer: str  # its name, for the card
    data_name: str  # the rows file in --to
    config_name: str  # the file beside it that the trainer (or its config) reads
    columns: str  # what the rows hold, for the card
    to_row: Callable[[Conversation, dict], dict]
    # (rows file, the config file's text when one is there) -> the config file's new text
    config_text: Callable[[Path, str | None], str]
    usage: Callable[[Path], str]  # YAML lines for the trainer's config


TRAINER_LAYOUTS: dict[str, TrainerLayout] = {
    "llama-factory": TrainerLayout(
        "LLaMA-Factory", "pairs.llama-factory.jsonl", LLAMA_FACTORY_INFO,
        "`conversations` (`from`/`value` turns, `human`/`gpt`), `chosen` and `rejected` (one `gpt` message "
        "each) and `system` (empty when none): the sharegpt preference format, described by the "
        f"`{LLAMA_FACTORY_DATASET}` entry of {LLAMA_FACTORY_INFO}",
        llama_factory_row, llama_factory_info, llama_factory_usage),
    "axolotl": TrainerLayout(
        "axolotl", "pairs.axolotl.jsonl", AXOLOTL_CONFIG,
        "`messages` (`role`/`content`, the system message first when there is one), `chosen` and "
        "`rejected` (one assistant message each), for `type: chat_template.default`; "
        f"{AXOLOTL_CONFIG} holds the config lines",
        axolotl_row, axolotl_config, axolotl_usage),
}


def trainer_rows(pairs: list[dict], layout: TrainerLayout) -> list[dict]:
    """Every pair in `layout`; a row that is no pair raises before anything is written."""
    return [layout.to_row(pair_conversation(row, i), provenance(row)) for i, row in enumerate(pairs, 1)]
