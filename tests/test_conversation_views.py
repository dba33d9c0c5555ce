"""What a person sees of a conversation: `inspect` (one line that counts the earlier turns,
--turns to show them), `try`'s line under each instruction, the HTML report's collapsed turns
(escaped, within the page's script policy) and the dataset card's conversation section.

The runs are written by the real pair stage from hand-rated records (no model is needed to look
at a run), and one by a real run of examples/conversations.jsonl on the embedded models."""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from edgepref.core.files import write_jsonl_atomic
from edgepref.core.records import Completion, Rating, Record
from edgepref.stages.config import PipelineConfig
from edgepref.stages.pair import pair_records
from edgepref.ui.cli import cli
from edgepref.ui.display import render_pairs, render_try

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "Be brief & exact."
HISTORY = [{"role": "user", "content": "Hi <b>there</b>, my oven is cold."},
           {"role": "assistant", "content": "Preheat it first: ```preheat()``` for ten minutes."}]
LONG_TURN = "word " * 400  # 2000 characters: clipped like any response
TRIMMED = [{"role": "user", "content": "What is left?"}, {"role": "assistant", "content": "Two turns."}]


def rated(i: int, **fields) -> Record:
    return Record(id=f"r{i}", instruction=f"Question {i}?", completions=[
        Completion("qwen2.5-coder-0.5b:0", f"A good answer {i}.", "qwen2.5-coder-0.5b"),
        Completion("smollm2-135m:0", f"meh {i}", "smollm2-135m"),
    ], ratings=[
        Rating("qwen2.5-coder-0.5b:0", "qwen2.5-coder-0.5b", "overall", 5, 4.8, "clear"),
        Rating("smollm2-135m:0", "qwen2.5-coder-0.5b", "overall", 2, 2.1, "vague"),
    ], **fields)


def conversation_records() -> list[Record]:
    """r0: a system prompt and two earlier turns; r1: a single-turn row; r2: a conversation that
    lost its oldest exchange to the context (as conversations.fit_history records it); r3: one
    long earlier turn."""
    return [
        rated(0, history=[dict(t) for t in HISTORY], system=SYSTEM),
        rated(1),
        rated(2, history=[dict(t) for t in TRIMMED],
              dropped=[{"stage": "input", "reason": "context", "turns": 2, "kept": 2, "budget_tokens": 90}]),
        rated(3, history=[{"role": "user", "content": LONG_TURN}, {"role": "assistant", "content": "Noted."}]),
    ]


def write_run(out: Path, records: list[Record]) -> PipelineConfig:
    """A run directory as the pipeline leaves it: pairs (by the real pair stage), records, run.json."""
    cfg = PipelineConfig()
    cfg.pair.decide = "ratings"  # hand-made ratings, no pairwise verdicts
    report = pair_records(records, cfg.pair)
    write_jsonl_atomic(out / "pairs.jsonl", (p.to_row() for p in report.pairs))
    write_jsonl_atomic(out / "records.jsonl", (r.to_row() for r in records))
    (out / "run.json").write_text(json.dumps({
        "config": asdict(cfg), "judges": ["qwen2.5-coder-0.5b"],
        "summary": {"instructions": len(records), "pairs_dropped": dict(report.dropped)}}, default=str))
    return cfg


@pytest.fixture
def conversation_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    write_run(out, conversation_records())
    return out


def pairs_of(out: Path) -> dict[str, dict]:
    return {p["id"]: p for p in map(json.loads, (out / "pairs.jsonl").read_text().splitlines())}


def block(output: str, title: str) -> list[str]:
    """The lines of one pair's table in `inspect` output, from its title to its bottom border."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
    return [line.rstrip() for line in lines[start:end + 1]]


# ---------------------------------------------------------------- inspect


def test_inspect_counts_earlier_turns_and_turns_shows_them(conversation_run: Path) -> None:
    pairs = pairs_of(conversation_run)
    assert isinstance(pairs["r0"]["prompt"], list) and isinstance(pairs["r1"]["prompt"], list)  # auto: all conversational

    shown = CliRunner().invoke(cli, ["inspect", str(conversation_run), "--limit", "4"])
    assert shown.exit_code == 0, shown.output
    assert block(shown.output, "Question 0?")[1] == "2 earlier turns · system prompt (--turns shows them)"
    assert block(shown.output, "Question 2?")[1] == "2 earlier turns (--turns shows them)"
    assert block(shown.output, "Question 1?")[1].startswith("╭")  # a one-turn chat: the table right under its title
    assert SYSTEM not in shown.output and "oven is cold" not in shown.output  # collapsed

    turns = CliRunner().invoke(cli, ["inspect", str(conversation_run), "--limit", "4", "--turns"])
    assert turns.exit_code == 0, turns.output
    assert block(turns.output, "Question 0?")[1:5] == [
        "2 earlier turns · system prompt",
        f"system: {SYSTEM}",
        f"user: {HISTORY[0]['content']}",  # as text: neither markup nor HTML is interpreted
        f"assistant: {HISTORY[1]['content']}",
    ]
    long_turn = "\n".join(block(turns.output, "Question 3?")[2:8])
    assert long_turn.startswith("user: word word") and " …" in long_turn  # clipped like the responses
    assert long_turn.count("word") == 120  # _clip's 600 characters: 120 "word "s
    assert block(turns.output, "Question 1?")[1].startswith("╭")


def test_a_one_turn_chat_pair_looks_like_a_standard_pair(conversation_run: Path, capsys) -> None:
    chat = pairs_of(conversation_run)["r1"]
    standard = {**chat, "prompt": chat["prompt"][-1]["content"], "chosen": chat["chosen"][-1]["content"],
                "rejected": chat["rejected"][-1]["content"]}
    stats = {"pairs": 1, "mean_margin": None, "chosen_by_model": {}, "rejected_by_model": {}}
    render_pairs([standard], stats, total=1)
    as_strings = capsys.readouterr().out
    render_pairs([chat], stats, total=1, show_turns=True)
    assert capsys.readouterr().out == as_strings
    assert "Question 1?" in as_strings and "A good answer 1." in as_strings


# ---------------------------------------------------------------- try


def test_try_says_what_came_before_each_instruction(capsys) -> None:
    records = conversation_records()
    cfg = PipelineConfig()
    cfg.pair.decide = "ratings"
    report = pair_records(records, cfg.pair)
    render_try(SimpleNamespace(records=records, pairs=report.pairs, drop_reasons=report.drop_reasons), cfg)
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    under = {re.search(r"Question \d\?", line).group(0): lines[i + 1]
             for i, line in enumerate(lines) if line.startswith("─") and "Question" in line}
    assert under["Question 0?"] == "2 earlier turns · system prompt"
    assert under["Question 2?"] == "2 earlier turns · 2 oldest turns dropped to fit the context"
    assert under["Question 3?"] == "2 earlier turns"
    assert under["Question 1?"].startswith("╭─ CHOSEN")  # a single-turn row: its candidates at once
    assert not any(line.startswith("dropped input") for line in lines)  # said once, on the line above
    assert SYSTEM not in "\n".join(lines)


# ---------------------------------------------------------------- the report


def test_report_rows_carry_the_turns_and_what_was_dropped(conversation_run: Path, tmp_path: Path) -> None:
    from edgepref.ui.report import write_report

    from .test_report import page_rows

    rows = {r["id"]: r for r in page_rows(write_report(conversation_run).read_text(encoding="utf-8"))}
    assert (rows["r0"]["system"], rows["r0"]["history"], rows["r0"]["turns_dropped"]) == (SYSTEM, HISTORY, 0)
    assert (rows["r1"]["system"], rows["r1"]["history"], rows["r1"]["turns_dropped"]) == (None, [], 0)
    assert (rows["r2"]["history"], rows["r2"]["turns_dropped"]) == (TRIMMED, 2)

    # pairs alone: the turns come from each pair's prompt
    pairs_only = tmp_path / "pairs-only"
    pairs_only.mkdir()
    (pairs_only / "pairs.jsonl").write_bytes((conversation_run / "pairs.jsonl").read_bytes())
    rows = {r["id"]: r for r in page_rows(write_report(pairs_only).read_text(encoding="utf-8"))}
    assert (rows["r0"]["system"], rows["r0"]["history"], rows["r0"]["instruction"]) == (SYSTEM, HISTORY, "Question 0?")
    assert (rows["r1"]["system"], rows["r1"]["history"]) == (None, [])


def test_report_page_shows_turns_collapsed_and_escaped(tmp_path: Path) -> None:
    from edgepref.ui.report import csp_sha256, write_report

    from .test_report import PAYLOAD, chromium, csp_of, need_chromium

    records = conversation_records()
    records[0].system += PAYLOAD
    records[0].history[0]["content"] += PAYLOAD
    out = tmp_path / "run"
    write_run(out, records)
    page = write_report(out).read_text(encoding="utf-8")
    # the turns travel in the gzipped rows only, never as markup of the page
    assert "oven is cold" not in page and PAYLOAD not in page
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and csp_of(page)["script-src"] == [f"'{csp_sha256(scripts[0])}'"]
    need_chromium()

    dom, console, asked = chromium(f"{(out / 'report.html').resolve().as_uri()}#open=r0", tmp_path, "--dump-dom")
    assert console == "" and asked == [] and 'data-ready="yes"' in dom and "data-pwned" not in dom
    boxes = re.findall(r"<details class=\"turns\"[^>]*>.*?</details>", dom, re.S)
    assert len(boxes) == 3  # r0, r2, r3; not the single-turn r1
    assert all(not re.match(r"<details[^>]*\bopen\b", b) for b in boxes)  # closed until opened
    r0 = next(b for b in boxes if "system prompt" in b)
    assert "<summary>2 earlier turns · system prompt</summary>" in r0
    assert html.escape(SYSTEM + PAYLOAD, quote=False) in r0  # shown as text
    assert html.escape(HISTORY[0]["content"] + PAYLOAD, quote=False) in r0
    assert html.escape(HISTORY[1]["content"], quote=False) in r0
    r2 = next(b for b in boxes if "dropped" in b)
    assert "<summary>2 earlier turns · 2 oldest turns dropped to fit the context</summary>" in r2
    assert '<tr class="detail">' in dom  # the row's candidates opened too: the turns sit beside them


# ---------------------------------------------------------------- the dataset card


def render_markdown(card: str) -> str:
    from markdown_it import MarkdownIt  # rich's markdown parser: CommonMark, HTML blocks kept

    return MarkdownIt("commonmark").render(card.split("---\n", 2)[2])


def test_card_counts_conversations_and_shows_one_collapsed(conversation_run: Path, tmp_path: Path) -> None:
    dest = tmp_path / "release"
    res = CliRunner().invoke(cli, ["export", str(conversation_run), "--to", str(dest)])
    assert res.exit_code == 0, res.output
    card = (dest / "README.md").read_text(encoding="utf-8")
    assert "## Conversations" in card
    assert "Pairs with earlier turns: 3 of 4 (at most 2 earlier turns" in card
    assert "with a system message: 1." in card
    page = render_markdown(card)
    details = re.search(r"<details>\s*<summary>An example conversation \(pair <code>r0</code>\)</summary>(.*?)</details>",
                        page, re.S)
    assert details, page
    code = html.unescape(re.search(r"<pre><code[^>]*>(.*?)</code></pre>", details.group(1), re.S).group(1))
    assert code.split("\n\n") == [  # the whole conversation, as text: the example's backticks did not close it
        f"[system]\n{SYSTEM}", f"[user]\n{HISTORY[0]['content']}", f"[assistant]\n{HISTORY[1]['content']}",
        "[user, answered by the pair]\nQuestion 0?", "[chosen]\nA good answer 0.", "[rejected]\nmeh 0\n"]
    assert "<b>there</b>" not in page  # the example's markup is text in the page

    single = tmp_path / "single"
    write_run(single, [rated(1), rated(2)])
    res = CliRunner().invoke(cli, ["export", str(single), "--to", str(tmp_path / "single-release")])
    assert res.exit_code == 0, res.output
    assert "## Conversations" not in (tmp_path / "single-release" / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- a real run


def test_a_real_conversation_run_shows_its_turns(tmp_path: Path) -> None:
    from edgepref.ui.report import load_run_dir

    from .test_report import page_rows

    src = ROOT / "examples" / "conversations.jsonl"
    out = tmp_path / "out"
    # the cheapest run that writes a pair: no ratings, one verdict judge, every checked pair written
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--limit", "1", "--report",
                                      "--max-tokens", "24", "--evolutions", "0", "--judge-mode", "none",
                                      "--cascade", "qwen2.5-coder-0.5b", "--min-confidence", "0", "--slots", "4", "-q"])
    assert result.exit_code == 0, result.output
    records = {r.id: r for r in load_run_dir(out).records}
    rows = {r["id"]: r for r in page_rows((out / "report.html").read_text(encoding="utf-8"))}
    assert set(rows) == set(records) and len(rows) == 1
    for rid, record in records.items():
        assert record.is_conversation
        assert (rows[rid]["history"], rows[rid]["system"]) == (record.history, record.system)
    shown = CliRunner().invoke(cli, ["inspect", str(out), "--turns"])
    assert shown.exit_code == 0, shown.output
    pairs = pairs_of(out)
    assert pairs
    for pair_id in pairs:  # "<record id>" or "<record id>-2", ...
        record = next(r for rid, r in records.items() if pair_id == rid or pair_id.startswith(rid + "-"))
        n = len(record.history)
        assert f"{n} earlier turn{'s' if n != 1 else ''}" in shown.output
        assert f"user: {record.history[0]['content'][:40]}" in shown.output
        if record.system:
            assert f"system: {record.system[:40]}" in shown.output
