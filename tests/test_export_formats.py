"""`edgepref export --format llama-factory | axolotl`: each export is read back the way that
trainer's documentation says it reads a preference dataset, for a standard pair (strings), a
conversation with a system message and one without, in one pairs file as a run writes them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml  # PyYAML: a dependency of `datasets`, so always there when edgepref is
from click.testing import CliRunner

from edgepref.data.export import filter_pairs, pair_stats
from edgepref.ui.cli import cli

from .test_cli_pipeline import rated_run_dir

# TRL's conversational layout (the pairs of a conversation record): the prompt is the chat up to
# the last user turn, the system message first when the row has one.
CONVERSATIONS = [
    {"id": "conv-sys",
     "prompt": [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "I am painting a wall."},
                {"role": "assistant", "content": "Nice. Which room?"},
                {"role": "user", "content": "The kitchen. Which colour?"}],
     "chosen": [{"role": "assistant", "content": "Yellow."}],
     "rejected": [{"role": "assistant", "content": "Paint is made of pigment and a binder."}]},
    {"id": "conv-plain",
     "prompt": [{"role": "user", "content": "Give me a number."},
                {"role": "assistant", "content": "Seven."},
                {"role": "user", "content": "Now double it."}],
     "chosen": [{"role": "assistant", "content": "Fourteen."}],
     "rejected": [{"role": "assistant", "content": "Seven."}]},
    {"id": "sys-one-turn",
     "prompt": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Greet me."}],
     "chosen": [{"role": "assistant", "content": "Ahoy!"}],
     "rejected": [{"role": "assistant", "content": "Hello."}]},
]


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run directory whose pairs.jsonl holds the real pair stage's standard pairs and, after them,
    conversation pairs with the same provenance fields."""
    out = rated_run_dir(tmp_path)
    pairs_file = out / "pairs.jsonl"
    standard = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert standard and all(isinstance(p["prompt"], str) for p in standard)
    rows = standard + [{**standard[0], **conv} for conv in CONVERSATIONS]
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def export(run: Path, fmt: str, to: Path, *more: str):
    return CliRunner().invoke(cli, ["export", str(run), "--format", fmt, "--to", str(to), *more])


def expected_samples(run: Path) -> dict[str, dict]:
    """What a trainer should see for each pair of the run: system ("" for none), the prompt turns,
    the chosen and rejected text."""
    samples = {}
    for row in map(json.loads, (run / "pairs.jsonl").read_text().splitlines()):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            samples[row["id"]] = {"system": "", "prompt": [{"role": "user", "content": prompt}],
                                  "chosen": row["chosen"], "rejected": row["rejected"]}
            continue
        has_system = prompt[0]["role"] == "system"
        samples[row["id"]] = {"system": prompt[0]["content"] if has_system else "",
                              "prompt": prompt[1:] if has_system else prompt,
                              "chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"]}
    return samples


# ---------------------------------------------------------------- LLaMA-Factory


def read_llama_factory(dataset_dir: Path, name: str) -> dict[str, dict]:
    """Dataset `name` of `dataset_dir`, read as hiyouga/LLaMA-Factory data/README.md describes a
    preference dataset in sharegpt format: its entry in dataset_info.json ("formatting":
    "sharegpt", "ranking": true; `columns` and `tags`, with the documented defaults for what the
    entry leaves out), the file `file_name` in dataset_dir loaded with `datasets`, human turns at
    odd positions and gpt turns at even ones, the prompt ending with a human turn, `chosen` and
    `rejected` one gpt message each; the system prompt from the `system` column, or from a first
    message tagged system, which overrides it."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info[name]
    assert entry["formatting"] == "sharegpt" and entry["ranking"] is True
    columns = {"messages": "conversations", "system": None, **entry["columns"]}
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "system_tag": "system", **entry.get("tags", {})}
    role, content = tags["role_tag"], tags["content_tag"]
    as_openai = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    ds = datasets.load_dataset("json", data_files=str(dataset_dir / entry["file_name"]), split="train")
    samples = {}
    for example in ds:
        messages = example[columns["messages"]]
        if messages and messages[0][role] == tags["system_tag"]:
            system, messages = messages[0][content], messages[1:]
        else:
            system = example[columns["system"]] if columns["system"] else ""
        assert [m[role] for m in messages] == [(tags["user_tag"], tags["assistant_tag"])[i % 2]
                                               for i in range(len(messages))], messages
        assert len(messages) % 2 == 1, "a ranking sample's prompt ends with a human turn"
        replies = {}
        for key in ("chosen", "rejected"):
            reply = example[columns[key]]
            assert isinstance(reply, dict) and reply[role] == tags["assistant_tag"], reply
            replies[key] = reply[content]
        samples[example["id"]] = {"system": system,
                                  "prompt": [{"role": as_openai[m[role]], "content": m[content]} for m in messages],
                                  **replies}
    return samples


def test_llama_factory_export_reads_as_its_readme_says(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "lf"
    res = export(run_dir, "llama-factory", dest)
    assert res.exit_code == 0, res.output
    samples = read_llama_factory(dest, "edgepref_pairs")
    assert samples == expected_samples(run_dir)
    # the conversation with a system message, the one without, the standard pair
    assert samples["conv-sys"]["system"] == "Answer in one word."
    assert [t["role"] for t in samples["conv-sys"]["prompt"]] == ["user", "assistant", "user"]
    assert samples["conv-sys"]["chosen"] == "Yellow." and samples["conv-plain"]["system"] == ""
    assert samples["r0"]["prompt"] == [{"role": "user", "content": "Question 0?"}]
    # the provenance rides along
    rows = [json.loads(line) for line in (dest / "pairs.llama-factory.jsonl").read_text().splitlines()]
    assert all(r["model_chosen"] and "margin" in r for r in rows)
    # the training config's lines are printed and in the card
    printed = yaml.safe_load(res.output.split("config:\n", 2)[-1])
    assert printed == {"stage": "dpo", "dataset_dir": str(dest.resolve()), "dataset": "edgepref_pairs"}
    card = (dest / "README.md").read_text()
    assert "## Training with LLaMA-Factory" in card and "pairs.llama-factory.jsonl" in card
    assert "dataset: edgepref_pairs" in card and "sharegpt" in card


# ---------------------------------------------------------------- axolotl


def read_axolotl(config_text: str) -> dict[str, dict]:
    """The dataset of an axolotl config, read as axolotl-ai-cloud/axolotl docs/rlhf.qmd describes DPO
    with `type: chat_template.default` (`field_messages`, `field_chosen`, `field_rejected`,
    `message_property_mappings`, `roles` mapping each role to the values that stand for it), the
    local file loaded as docs/dataset_loading.qmd says (`path` and `ds_type`, `split`)."""
    cfg = yaml.safe_load(config_text)
    assert cfg["rl"] == "dpo"
    (ds_cfg,) = cfg["datasets"]
    assert ds_cfg["type"] == "chat_template.default"
    ds = datasets.load_dataset(ds_cfg["ds_type"], data_files=ds_cfg["path"], split=ds_cfg["split"])
    props = ds_cfg.get("message_property_mappings", {"role": "role", "content": "content"})
    roles = {value: role for role, values in ds_cfg["roles"].items() for value in values}
    samples = {}
    for example in ds:
        messages = [{"role": roles[m[props["role"]]], "content": m[props["content"]]}
                    for m in example[ds_cfg["field_messages"]]]
        system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else ""
        assert [m["role"] for m in messages] == [("user", "assistant")[i % 2] for i in range(len(messages))]
        assert messages[-1]["role"] == "user"
        replies = {}
        for key in ("chosen", "rejected"):
            reply = example[ds_cfg[f"field_{key}"]]
            assert isinstance(reply, dict) and roles[reply[props["role"]]] == "assistant", reply
            replies[key] = reply[props["content"]]
        samples[example["id"]] = {"system": system, "prompt": messages, **replies}
    return samples


def test_axolotl_export_reads_as_its_docs_say(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ax"
    res = export(run_dir, "axolotl", dest)
    assert res.exit_code == 0, res.output
    config = (dest / "axolotl.yaml").read_text()
    samples = read_axolotl(config)
    assert samples == expected_samples(run_dir)
    assert samples["sys-one-turn"]["system"] == "You are a pirate." and samples["sys-one-turn"]["chosen"] == "Ahoy!"
    assert samples["r1"]["prompt"] == [{"role": "user", "content": "Question 1?"}]
    # the system message is the first of `messages`, as in the docs' sample
    first = json.loads((dest / "pairs.axolotl.jsonl").read_text().splitlines()[3])
    assert first["id"] == "conv-sys" and first["messages"][0] == {"role": "system", "content": "Answer in one word."}
    # the lines printed are the config file's, and the card holds them too
    assert yaml.safe_load(res.output.split("config:\n", 2)[-1]) == yaml.safe_load(config)
    card = (dest / "README.md").read_text()
    assert "## Training with axolotl" in card and "type: chat_template.default" in card
    assert f'path: "{(dest / "pairs.axolotl.jsonl").resolve()}"' in card


def test_both_layouts_in_one_folder_and_the_card_names_both(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "both"
    assert export(run_dir, "llama-factory", dest).exit_code == 0
    assert export(run_dir, "axolotl", dest).exit_code == 0
    card = (dest / "README.md").read_text()
    assert "## Training with LLaMA-Factory" in card and "## Training with axolotl" in card
    assert "Format: axolotl's preference layout" in card
    # exporting TRL's layout too keeps both sections and says what pairs.jsonl holds
    assert export(run_dir, "jsonl", dest).exit_code == 0
    card = (dest / "README.md").read_text()
    assert "Format: TRL preference, conversational" in card and "## Training with LLaMA-Factory" in card
    # the run mixes string and message-list prompts, which no Arrow column holds: all conversational
    trl = {r["id"]: r for r in datasets.load_dataset("json", data_files=str(dest / "pairs.jsonl"), split="train")}
    assert trl["r0"]["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert trl["r0"]["chosen"] == [{"role": "assistant", "content": "A good answer 0."}]
    assert trl["conv-sys"]["prompt"] == CONVERSATIONS[0]["prompt"]
    assert read_llama_factory(dest, "edgepref_pairs") == read_axolotl((dest / "axolotl.yaml").read_text())
    marker = json.loads((dest / ".edgepref-export.json").read_text())
    assert set(marker["files"]) == {"README.md", "pairs.jsonl", "pairs.llama-factory.jsonl", "dataset_info.json",
                                    "pairs.axolotl.jsonl", "axolotl.yaml"}


# ---------------------------------------------------------------- what they write over


def test_a_users_dataset_info_is_never_clobbered(run_dir: Path, tmp_path: Path) -> None:
    # a LLaMA-Factory data folder of the user's: refused, untouched
    data = tmp_path / "data"
    data.mkdir()
    theirs = {"my_dpo": {"file_name": "my_dpo.json", "ranking": True, "formatting": "sharegpt"}}
    (data / "dataset_info.json").write_text(json.dumps(theirs))
    res = export(run_dir, "llama-factory", data)
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "dataset_info.json" in text and "not an edgepref export" in text and "--overwrite" in text
    assert sorted(p.name for p in data.iterdir()) == ["dataset_info.json"]
    # --overwrite adds the entry and keeps theirs
    res = export(run_dir, "llama-factory", data, "--overwrite")
    assert res.exit_code == 0, res.output
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["my_dpo"] == theirs["my_dpo"] and set(info) == {"my_dpo", "edgepref_pairs"}
    assert read_llama_factory(data, "edgepref_pairs") == expected_samples(run_dir)

    # an export's own dataset_info.json that the user added an entry to since: refused, then merged
    dest = tmp_path / "release"
    assert export(run_dir, "llama-factory", dest).exit_code == 0
    info = json.loads((dest / "dataset_info.json").read_text())
    info["other"] = {"file_name": "other.json"}
    (dest / "dataset_info.json").write_text(json.dumps(info))
    res = export(run_dir, "llama-factory", dest)
    assert res.exit_code == 1 and "changed since" in " ".join(res.output.split())
    assert json.loads((dest / "dataset_info.json").read_text()) == info
    assert export(run_dir, "llama-factory", dest, "--overwrite").exit_code == 0
    assert set(json.loads((dest / "dataset_info.json").read_text())) == {"edgepref_pairs", "other"}


def test_an_edited_axolotl_config_or_rows_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "release"
    assert export(run_dir, "axolotl", dest).exit_code == 0
    assert export(run_dir, "axolotl", dest).exit_code == 0  # its own files: replaced
    config = dest / "axolotl.yaml"
    config.write_text(config.read_text() + "    chat_template: chatml\n")
    res = export(run_dir, "axolotl", dest)
    assert res.exit_code == 1 and "axolotl.yaml" in res.output and "Traceback" not in res.output
    assert config.read_text().endswith("chatml\n")
    rows = dest / "pairs.axolotl.jsonl"
    rows.write_text(rows.read_text().splitlines()[0] + "\n")
    res = export(run_dir, "axolotl", dest)
    assert res.exit_code == 1 and "pairs.axolotl.jsonl" in res.output
    # a folder of other files: the rows, the config and the card are not added
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "axolotl.yaml").write_text("base_model: x\n")
    res = export(run_dir, "axolotl", mine)
    assert res.exit_code == 1 and sorted(p.name for p in mine.iterdir()) == ["axolotl.yaml"]


def test_a_row_that_is_no_pair_stops_the_export_before_any_write(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    good = {"id": "a", "prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}
    bad = {"id": "b", "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
           "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}
    src.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    for fmt in ("llama-factory", "axolotl"):
        dest = tmp_path / fmt
        res = export(src, fmt, dest)
        text = " ".join(res.output.split())
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert "pair 2" in text and "does not end with a user turn" in text
        assert not dest.exists()


def test_stats_and_the_margin_filter_take_pairs_without_scores() -> None:
    # a run that rated nothing (judge mode "none") writes None scores and margins
    pairs = [{"margin": 2.0, "score_chosen": 5.0, "score_rejected": 3.0},
             {"margin": None, "score_chosen": None, "score_rejected": None}]
    stats = pair_stats(pairs)
    assert stats["pairs"] == 2 and stats["mean_margin"] == 2.0 and stats["mean_score_rejected"] == 3.0
    assert pair_stats(pairs[1:])["mean_margin"] is None
    assert filter_pairs(pairs, min_margin=1.0) == pairs[:1] and filter_pairs(pairs) == pairs
