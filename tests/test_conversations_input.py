"""Conversations as input (issue 36, the input side): every reader takes a `messages` or
`conversations` column in OpenAI or ShareGPT spelling and a per-row `system` column; a
conversation that cannot be answered is a numbered row problem and the good rows come through;
ids, duplicates and shards key on the whole conversation. No model loads here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from edgepref.core.records import Record, content_key
from edgepref.data.conversations import record_key
from edgepref.data.inputs import (
    read_instructions,
    read_records,
    read_stage_input,
    shard_index,
    take_shard,
)
from edgepref.ui.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def sharegpt(messages: list[dict]) -> list[dict]:
    return [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in messages]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# Four rows: a leading system message, a system column, a single user turn (a plain instruction
# once read) and a longer chat. Every reader below must read them into the same records.
CONVERSATIONS = [
    {"messages": chat(("system", "Answer like a pirate."), ("user", "Where is the treasure?"),
                      ("assistant", "Under the palm tree, matey."), ("user", "Which palm tree?")),
     "system": None},
    {"messages": chat(("user", "Name a prime number."), ("assistant", "Seven."), ("user", "And an even one?")),
     "system": "Answer in one word."},
    {"messages": chat(("user", "What is the capital of Peru?")), "system": None},
    {"messages": chat(("user", "Suggest a board game."), ("assistant", "Try Carcassonne."),
                      ("user", "How many players?"), ("assistant", "Two to five."), ("user", "How long is a game?")),
     "system": None},
]
EXPECTED = [  # (instruction, history, system)
    ("Which palm tree?", chat(("user", "Where is the treasure?"), ("assistant", "Under the palm tree, matey.")),
     "Answer like a pirate."),
    ("And an even one?", chat(("user", "Name a prime number."), ("assistant", "Seven.")), "Answer in one word."),
    ("What is the capital of Peru?", [], None),
    ("How long is a game?", chat(("user", "Suggest a board game."), ("assistant", "Try Carcassonne."),
                                 ("user", "How many players?"), ("assistant", "Two to five.")), None),
]


def write_shape(tmp_path: Path, kind: str) -> Path:
    """CONVERSATIONS written the way `kind` says."""
    if kind == "jsonl-openai":
        return write_jsonl(tmp_path / "in.jsonl", CONVERSATIONS)
    if kind == "jsonl-sharegpt":
        rows = [{"conversations": sharegpt(r["messages"]), "system": r["system"]} for r in CONVERSATIONS]
        return write_jsonl(tmp_path / "in.jsonl", rows)
    if kind == "json":
        path = tmp_path / "in.json"
        path.write_text(json.dumps(CONVERSATIONS))
        return path
    if kind == "csv":  # the conversation as JSON text in its cell, as a spreadsheet holds it
        path = tmp_path / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["messages", "system"])
            writer.writeheader()
            for r in CONVERSATIONS:
                writer.writerow({"messages": json.dumps(r["messages"]), "system": r["system"] or ""})
        return path
    ds = datasets.Dataset.from_list(CONVERSATIONS)
    if kind == "parquet":
        path = tmp_path / "in.parquet"
        ds.to_parquet(str(path))
        return path
    if kind == "save_to_disk":
        path = tmp_path / "saved"
        ds.save_to_disk(str(path))
        return path
    # a dataset repository laid out as on the Hub (data/train-*.parquet), read by name through
    # datasets.load_dataset: the path a Hub dataset takes
    path = tmp_path / "hub-repo"
    (path / "data").mkdir(parents=True)
    ds.to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path


@pytest.mark.parametrize("kind", ["jsonl-openai", "jsonl-sharegpt", "json", "csv", "parquet", "save_to_disk",
                                  "hub-layout"])
def test_every_reader_gives_the_same_records(tmp_path, kind: str) -> None:
    batch = read_instructions(write_shape(tmp_path, kind))
    assert not batch.problems and batch.duplicates == 0
    assert [(r.instruction, r.history, r.system) for r in batch.records] == EXPECTED
    assert [r.is_conversation for r in batch.records] == [True, True, False, True]
    reference = read_instructions(write_jsonl(tmp_path / "reference.jsonl", CONVERSATIONS))
    assert [r.id for r in batch.records] == [r.id for r in reference.records]
    # the single user turn is the instruction row it stands for, id and all
    assert batch.records[2].id == content_key("instruction", "What is the capital of Peru?")
    assert all(r.extra == {} for r in batch.records)  # the columns read are not carried as extras


def test_chat_is_system_history_and_the_turn_to_answer() -> None:
    history = chat(("user", "Hi."), ("assistant", "Hello!"))
    record = Record(id="r", instruction="Tell me a joke.", history=history)
    assert record.chat() == [*history, {"role": "user", "content": "Tell me a joke."}]
    assert record.chat("Be kind.")[0] == {"role": "system", "content": "Be kind."}
    own = Record(id="s", instruction="Tell me a joke.", system="Be dry.")
    assert own.is_conversation and own.chat("Be kind.") == chat(("system", "Be dry."), ("user", "Tell me a joke."))
    plain = Record(id="p", instruction="Tell me a joke.")
    assert not plain.is_conversation and plain.chat() == chat(("user", "Tell me a joke."))
    record.chat()[0]["content"] = "changed"  # the messages are copies: editing them leaves the record alone
    assert record.history[0]["content"] == "Hi."


# ---------------------------------------------------------------- bad conversations

GOOD = chat(("user", "Name a fruit."), ("assistant", "An apple."), ("user", "And a vegetable?"))
BAD_ROWS = [  # (row, what the reason must say)
    ({"messages": {"role": "user", "content": "Hi"}}, "'messages' is a dict, not a list of messages"),
    ({"messages": []}, "empty conversation"),
    ({"messages": ["Hello there"]}, "turn 1 is a str, not an object"),
    ({"messages": chat(("user", "Look this up."), ("tool", "42"), ("user", "Thanks?"))}, "unknown role 'tool'"),
    ({"conversations": [{"from": "bot", "value": "Hi"}]}, "unknown role 'bot'"),
    ({"messages": chat(("user", "Hi."), ("assistant", "   "), ("user", "Well?"))}, "turn 2 (assistant) is blank"),
    ({"messages": chat(("user", "\u200b\u2060"))}, "turn 1 (user) is blank (only invisible characters)"),
    ({"messages": [{"role": "user", "content": 12}]}, "turn 1 (user) 'content' is a int, not text"),
    ({"messages": [{"role": "user"}]}, "turn 1 (user) has no 'content'"),
    ({"messages": [{"content": "Hi."}]}, "turn 1 has no 'role'"),
    ({"messages": chat(("user", "Hi."), ("system", "Be brief."), ("user", "Hi?"))},
     "turn 2 is a system message; only the first turn may be one"),
    ({"messages": chat(("user", "Hi."), ("user", "Anyone?"))}, "turns 1 and 2 are both user turns"),
    ({"messages": chat(("user", "Hi."), ("assistant", "Hello."), ("assistant", "Still there?"), ("user", "Yes."))},
     "turns 2 and 3 are both assistant turns"),
    ({"messages": chat(("user", "Hi."), ("assistant", "Hello."))},
     "the last turn must be the user turn to answer"),
    ({"conversations": sharegpt(chat(("system", "Be brief."), ("assistant", "Hello."), ("user", "Hi.")))},
     "turn 2 is an assistant turn before any user turn"),
    ({"messages": chat(("system", "Be brief."))}, "only a system message"),
    ({"messages": "[{\"role\": \"user\", \"content\": \"Hi\""}, "'messages' is text that is not a JSON list"),
    ({"messages": chat(("system", "Be brief."), ("user", "Hi.")), "system": "Be long."},
     "the 'system' column ('Be long.') and the conversation's system message ('Be brief.') differ"),
    ({"messages": GOOD, "system": 5}, "'system' is a int, not text"),
]


def test_each_bad_conversation_is_a_row_problem_and_the_good_rows_come_through(tmp_path) -> None:
    rows: list[dict] = [{"id": "first", "messages": GOOD}]
    for i, (row, _) in enumerate(BAD_ROWS):
        rows.append({"id": f"bad{i}", **row})
    rows.append({"id": "last", "conversations": sharegpt(chat(("user", "Name a river."),
                                                              ("assistant", "The Nile."), ("user", "A longer one?")))})
    batch = read_instructions(write_jsonl(tmp_path / "in.jsonl", rows))
    assert [r.id for r in batch.records] == ["first", "last"]
    assert batch.rows_read == len(rows) and batch.duplicates == 0
    assert [(p.row, p.id) for p in batch.problems] == [(i + 2, f"bad{i}") for i in range(len(BAD_ROWS))]
    for problem, (_, says) in zip(batch.problems, BAD_ROWS):
        assert says in problem.reason, problem


def test_bad_json_text_in_a_csv_cell_is_reported_by_row(tmp_path) -> None:
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(GOOD)])
        writer.writerow(["Name a fruit."])  # plain text where a conversation belongs
        writer.writerow([json.dumps(chat(("user", "Hi."), ("assistant", "Hello.")))])
        writer.writerow([json.dumps(chat(("user", "Name a city.")))])
    batch = read_instructions(path)
    assert [r.instruction for r in batch.records] == ["And a vegetable?", "Name a city."]
    assert [p.row for p in batch.problems] == [2, 3]
    assert "not a JSON list of messages" in batch.problems[0].reason
    assert "last turn must be the user turn" in batch.problems[1].reason


def test_a_conversation_cell_wins_over_the_instruction_and_an_empty_one_does_not(tmp_path) -> None:
    rows = [{"instruction": "Ignored for the conversation.", "messages": GOOD},
            {"instruction": "Name a colour.", "messages": None},
            {"instruction": "Name a shape.", "system": "Answer in French."},
            {"other": "neither"}]
    batch = read_instructions(write_jsonl(tmp_path / "in.jsonl", rows))
    assert batch.column == "instruction" and batch.messages_columns == ("messages",)
    assert [(r.instruction, r.system) for r in batch.records] == [
        ("And a vegetable?", None), ("Name a colour.", None), ("Name a shape.", "Answer in French.")]
    assert [(p.row, p.reason) for p in batch.problems] == [(4, "no 'messages' or 'instruction' field")]
    # an explicit --column reads that column alone; --messages-column brings the conversation back
    only = read_instructions(tmp_path / "in.jsonl", column="instruction")
    assert only.records[0].instruction == "Ignored for the conversation." and only.messages_columns == ()
    both = read_instructions(tmp_path / "in.jsonl", column="instruction", messages_column="messages")
    assert both.records[0].instruction == "And a vegetable?"


def test_messages_column_names_the_conversation_column(tmp_path) -> None:
    from edgepref.core.errors import InputError

    path = write_jsonl(tmp_path / "in.jsonl", [{"dialogue": GOOD, "note": "kept"}])
    with pytest.raises(InputError) as info:
        read_instructions(path)
    assert "'messages' or 'conversations'" in info.value.message and "--messages-column" in info.value.hint
    batch = read_instructions(path, messages_column="dialogue")
    assert batch.records[0].history == GOOD[:2] and batch.records[0].extra == {"note": "kept"}
    with pytest.raises(InputError) as info:
        read_instructions(path, messages_column="nope")
    assert "no column 'nope'" in info.value.message and info.value.hint == "pick one with --messages-column NAME"


def test_the_cli_passes_messages_column_to_the_reader(tmp_path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"dialogue": GOOD}])
    for command in (["run", str(src), "--out", str(tmp_path / "o")], ["complete", str(src), "--out",
                                                                        str(tmp_path / "o.jsonl")]):
        result = CliRunner().invoke(cli, [*command, "--messages-column", "missing", "-q"])
        assert result.exit_code == 1 and "no column 'missing'" in result.output, result.output
        assert "Traceback" not in result.output


# ---------------------------------------------------------------- ids, duplicates, shards


def test_ids_key_on_the_whole_conversation(tmp_path) -> None:
    def read_one(row: dict) -> Record:
        (record,) = read_instructions(write_jsonl(tmp_path / "one.jsonl", [row])).records
        return record

    base = read_one({"messages": GOOD})
    assert base.id == read_one({"conversations": sharegpt(GOOD)}).id  # the spelling is not the content
    assert base.id == read_one({"messages": GOOD}).id  # stable from read to read
    other_history = [GOOD[0], {"role": "assistant", "content": "A pear."}, GOOD[2]]
    assert read_one({"messages": other_history}).id != base.id
    assert read_one({"messages": GOOD, "system": "Be brief."}).id != base.id
    plain = read_one({"instruction": "And a vegetable?"})
    assert plain.id == content_key("instruction", "And a vegetable?") != base.id
    with_system = read_one({"instruction": "And a vegetable?", "system": "Be brief."})
    assert with_system.id not in (plain.id, base.id) and with_system.is_conversation
    assert read_one({"messages": [GOOD[2]]}).id == plain.id


def test_duplicates_are_whole_conversations(tmp_path) -> None:
    rows = [
        {"messages": GOOD},
        {"conversations": sharegpt(GOOD)},  # the same conversation in ShareGPT spelling
        {"messages": [GOOD[0], {"role": "assistant", "content": "A pear."}, GOOD[2]]},  # same last turn
        {"messages": GOOD, "system": "Be brief."},  # same turns, own system prompt
        {"messages": chat(("system", "Be brief."), *[(m["role"], m["content"]) for m in GOOD])},  # the same again
        {"instruction": "And a vegetable?"},
        {"messages": [GOOD[2]]},  # the instruction above as a one-turn conversation
    ]
    batch = read_instructions(write_jsonl(tmp_path / "in.jsonl", rows))
    assert batch.duplicates == 3 and not batch.problems
    assert len(batch.records) == 4 and len({r.id for r in batch.records}) == 4


def test_repeated_input_ids_fall_back_to_conversation_ids(tmp_path) -> None:
    rows = [{"id": "same", "messages": GOOD}, {"id": "same", "messages": [GOOD[2]]}]
    batch = read_instructions(write_jsonl(tmp_path / "in.jsonl", rows))
    conversation, plain = batch.records
    assert plain.id == content_key("instruction", "And a vegetable?")
    assert conversation.id not in ("same", plain.id)


def test_a_conversation_is_sharded_by_the_whole_conversation(tmp_path) -> None:
    # thirty conversations that all end with the same question: sharded on the last turn alone,
    # they would all land in one shard
    rows = [{"messages": chat(("user", f"Pick a number above {i}."), ("assistant", str(i + 1)),
                              ("user", "Why that one?"))} for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    whole = read_instructions(src)
    shards = [read_instructions(src, shard=(i, 3)) for i in range(3)]
    ids = [r.id for s in shards for r in s.records]
    assert sorted(ids) == sorted(r.id for r in whole.records) and len(ids) == len(set(ids)) == 30
    assert sum(1 for s in shards if s.records) > 1
    for i, s in enumerate(shards):
        assert all(shard_index(record_key(r), 3) == i for r in s.records)
        assert [r.id for r in take_shard(whole, i, 3).records] == [r.id for r in s.records]
    # a records file from a stage shards the same way
    records_file = tmp_path / "records.jsonl"
    records_file.write_text("".join(json.dumps(r.to_row()) + "\n" for r in whole.records))
    for i, s in enumerate(shards):
        records, problems = read_stage_input(records_file, shard=(i, 3))
        assert not problems and [r.id for r in records] == [r.id for r in s.records]


# ---------------------------------------------------------------- records files


def test_records_rows_without_history_or_system_still_load(tmp_path) -> None:
    old = {"id": "a", "instruction": "Name a planet.", "completions": [{"id": "m:0", "text": "Mars.", "model": "m"}],
           "ratings": [], "dropped": [], "judge_info": {}, "extra": {}}
    new = Record(id="b", instruction="And a vegetable?", history=GOOD[:2], system="Be brief.")
    broken = {"id": "c", "instruction": "Hi?", "history": [{"role": "assistant", "content": "Hello."}]}
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [old, new.to_row(), broken]) + "\n")
    records, problems = read_records(path)
    assert [r.id for r in records] == ["a", "b"]
    assert records[0].history == [] and records[0].system is None and not records[0].is_conversation
    assert records[0].chat() == chat(("user", "Name a planet."))
    assert records[1] == new and records[1].chat()[0] == {"role": "system", "content": "Be brief."}
    assert [p.row for p in problems] == [3] and "history" in problems[0].reason


def test_the_example_conversations_read_into_eight_conversation_records() -> None:
    batch = read_instructions(ROOT / "examples" / "conversations.jsonl")
    assert not batch.problems and batch.duplicates == 0
    assert [r.id for r in batch.records] == [f"conv-{i:02d}" for i in range(1, 9)]
    assert all(r.is_conversation and r.history for r in batch.records)
    assert sum(r.system is not None for r in batch.records) >= 4
    for r in batch.records:
        messages = r.chat()
        assert messages[-1] == {"role": "user", "content": r.instruction}
        assert all(len(m["content"].split()) < 60 for m in messages)  # short turns for small contexts
