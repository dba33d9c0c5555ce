"""The HTML report of a real small run: its numbers against run.json and pairs.jsonl, partial run
directories, and the page itself in headless Chromium with the network disabled."""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli
from edgepref.core.errors import InputError
from edgepref.ui.report import csp_sha256, load_run_dir, write_report

from .conftest import REFERENCE_INSTRUCTIONS

pytest.importorskip("matplotlib", reason="needs edgepref[report] (installed by edgepref[test])")

@pytest.fixture(scope="module")
def run_dir(reference_run) -> Path:
    return reference_run.out


def page_rows(page: str) -> list[dict]:
    blob = re.search(r'<script id="run-data"[^>]*>(.*?)</script>', page, re.S).group(1)
    return json.loads(gzip.decompress(base64.b64decode(blob)))


def test_report_numbers_match_the_run(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    run = json.loads((run_dir / "run.json").read_text())
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    summary = run["summary"]
    rows = page_rows(page)
    assert len(rows) == summary["instructions"] == len(REFERENCE_INSTRUCTIONS)
    written = [r for r in rows if r["status"] == "pair"]
    assert sum(r["pairs"] for r in written) == summary["pairs"] == len(pairs)
    assert re.search(rf'id="n-pairs">{summary["pairs"]}<', page)
    dropped = {}
    for r in rows:
        if r["status"] != "pair":
            dropped[r["status"]] = dropped.get(r["status"], 0) + 1
    assert dropped == summary["pairs_dropped"]
    by_id = {r["id"]: r for r in rows}
    for p in pairs:  # every written pair, with its chosen and rejected text and scores
        if p["id"] in by_id:  # an instruction's surest pair: in the row's columns
            row = by_id[p["id"]]
            chosen = next(c for c in row["candidates"] if c["role"] == "chosen")
            rejected = next(c for c in row["candidates"] if c["role"] == "rejected")
            assert (chosen["text"], rejected["text"]) == (p["chosen"], p["rejected"])
            assert row["margin"] == pytest.approx(p["margin"], abs=1e-3)
            assert (row["model_chosen"], row["model_rejected"]) == (p["model_chosen"], p["model_rejected"])
        else:  # its second or third ("<id>-2"): counted on the candidates
            row = by_id[p["id"].rsplit("-", 1)[0]]
            assert row["pairs"] >= int(p["id"].rsplit("-", 1)[1])
        cands = {c["text"]: c for c in row["candidates"]}
        assert cands[p["chosen"]]["chosen_in"] >= 1 and cands[p["rejected"]]["rejected_in"] >= 1
    for stage, st in summary["stages"].items():  # each unit's own counters, prompt tokens too
        assert re.search(rf"<td>{re.escape(stage)}</td><td>{st['seconds']}</td><td>{st['completion_tokens']}[^<]*</td>"
                         rf"<td>[^<]*</td><td>{st['prompt_decoded']}</td><td>{st['prompt_cached']}</td>", page)
    # qwen's own rewrites were generated in the complete stage's time (follow-up turns), smollm2's
    # answers rewritten in the evolve stage's own (every answer is rewritten by default)
    evolve = summary["stages"]["evolve"]
    assert 0 < evolve["continued_tokens"] < evolve["completion_tokens"]
    # its rate counts only the tokens generated in its own time
    own_rate = round((evolve["completion_tokens"] - evolve["continued_tokens"]) / evolve["seconds"], 1)
    row = re.search(r"<td>evolve</td><td>[^<]*</td><td>(\d+) \((\d+) as follow-ups in the complete stage\)</td><td>([^<]+)</td>", page)
    assert row and (int(row[1]), int(row[2])) == (evolve["completion_tokens"], evolve["continued_tokens"])
    assert float(row[3]) == pytest.approx(own_rate, abs=0.11)
    assert f"recipe {run['config']['judge']['recipe']}" in page
    for plot in ("scores", "expected", "confidence"):
        assert f'id="plot-{plot}"' in page
    addresses = re.findall(r"https?://[^\s\"'<>]+", re.sub(r'xmlns(:\w+)?="[^"]*"', "", page))
    assert addresses == []  # nothing to fetch (XML namespace names are names, not requests)


def test_report_of_partial_and_broken_run_directories(run_dir: Path, tmp_path: Path) -> None:
    # records only, with a torn last line: a report that says what is missing
    partial = tmp_path / "partial"
    partial.mkdir()
    text = (run_dir / "records.jsonl").read_text()
    (partial / "records.jsonl").write_text(text + '{"id": "torn", "instr')
    out = write_report(partial)
    page = out.read_text(encoding="utf-8")
    problems = [html.unescape(p) for p in re.findall(r'<div class="warn problem">(.*?)</div>', page)]
    assert any("no run.json" in p for p in problems)
    assert any("no pairs.jsonl yet" in p for p in problems)
    assert any(f"records.jsonl line {len(text.splitlines()) + 1}" in p for p in problems)
    assert len(page_rows(page)) == len(REFERENCE_INSTRUCTIONS)

    # pairs only, run.json unreadable
    pairs_only = tmp_path / "pairs-only"
    pairs_only.mkdir()
    shutil.copy(run_dir / "pairs.jsonl", pairs_only / "pairs.jsonl")
    (pairs_only / "run.json").write_text("{not json")
    view = load_run_dir(pairs_only)
    assert any("run.json is not readable" in p for p in view.problems)
    assert write_report(pairs_only).is_file()

    # nothing there: a clear error on the command line, no traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="has no run.json"):
        load_run_dir(empty)
    result = CliRunner().invoke(cli, ["report", str(empty)])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not a run directory" in result.output


def csp_of(page: str) -> dict[str, list[str]]:
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page).group(1)
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in html.unescape(policy).split(";")) if d}


def test_report_policy_allows_its_own_script_alone(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    csp = csp_of(page)
    assert csp["default-src"] == ["'none'"]
    # no 'unsafe-inline' for scripts: one hash, and it is the hash of the page's one script
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and "loadRows" in scripts[0]
    assert csp["script-src"] == [f"'{csp_sha256(scripts[0])}'"]
    assert all(re.fullmatch(r'<script id="run-data" type="application/octet-stream"[^>]*>', tag)
               for tag in re.findall(r"<script\b[^>]*>", page) if tag != "<script>")


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Chromium's traffic annotation of requests that a page's own resource loader makes (blink); its
# background services (updates, sign-in) use others, so only these count as the page's requests.
PAGE_LOADER_ANNOTATION = 101845102


def need_chromium() -> None:
    """Chromium is how the page is tested: in CI (CI set, as .ci/run sets it) its absence fails
    the test with what to install; on a developer's machine without it the test is skipped,
    and pytest's summary lists the skip and this reason."""
    if CHROMIUM is None:
        message = "the page in a browser needs chromium (Debian: apt install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail("CI is set and " + message, pytrace=False)
        pytest.skip(message)


def chromium(url: str, tmp: Path, *extra: str) -> tuple[str, str, list[str]]:
    """(DOM after scripts ran, console lines, URLs the page asked the network for)."""
    profile, netlog = tmp / f"profile-{len(list(tmp.iterdir()))}", tmp / "net.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: any name resolves to nothing
           f"--user-data-dir={profile}", f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000",  # let the page's scripts finish before the DOM or screenshot is taken
           *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    events = json.loads(netlog.read_text())["events"]
    asked = sorted({e["params"]["url"] for e in events
                    if str(e.get("params", {}).get("traffic_annotation")) == str(PAGE_LOADER_ANNOTATION)})
    return done.stdout, "\n".join(console), asked


def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    need_chromium()
    url = (run_dir / "report.html").resolve().as_uri()
    dom, console, asked = chromium(url, tmp_path, "--dump-dom")
    assert console == "", console  # no errors, no warnings, nothing logged
    assert 'data-ready="yes"' in dom  # the rows were inflated and drawn
    assert asked == []  # no request left the page
    svgs = re.findall(r"<svg\b.*?</svg>", dom, re.S)
    assert len(svgs) >= 3 and all(svg.count("<path") >= 3 for svg in svgs)  # drawn, not empty
    all_rows = dom.count('<tr class="row"')
    assert all_rows == len(REFERENCE_INSTRUCTIONS)
    assert f"{all_rows} of {all_rows} instructions shown" in dom

    rows = page_rows((run_dir / "report.html").read_text(encoding="utf-8"))
    needle = rows[0]["instruction"].split()[-1].strip("?.").lower()  # a word of one instruction
    filtered, console, asked = chromium(f"{url}#q={needle}", tmp_path, "--dump-dom")
    assert console == "" and asked == []
    expect = sum(needle in (r["instruction"] + " ".join(c["text"] for c in r["candidates"])).lower() for r in rows)
    assert 0 < filtered.count('<tr class="row"') == expect < all_rows
    assert f"{expect} of {all_rows} instructions shown" in filtered

    pair = next(r for r in rows if r["status"] == "pair")
    opened, console, asked = chromium(f"{url}#open={pair['id']}", tmp_path, "--dump-dom")
    assert console == "" and asked == []
    detail = re.search(r'<tr class="detail">(.*?)</tr>', opened, re.S).group(1)
    assert 'class="cand chosen"' in detail and 'class="cand rejected"' in detail
    chosen = next(c for c in pair["candidates"] if c["role"] == "chosen")
    assert html.escape(chosen["text"], quote=False) in detail  # side by side, with its text

    shot = tmp_path / "report.png"
    chromium(url, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.stat().st_size > 20_000


PAYLOAD = ('<script>document.body.dataset.pwned = "script"</script>'
           '<img src="data:," onerror="document.body.dataset.pwned = \'img\'">')


def test_model_text_does_not_run_as_script(run_dir: Path, tmp_path: Path) -> None:
    need_chromium()
    # Every response and instruction carries markup that would run if it reached the page as HTML.
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    shutil.copy(run_dir / "run.json", hostile / "run.json")
    shutil.copy(run_dir / "pairs.jsonl", hostile / "pairs.jsonl")
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    for rec in records:
        rec["instruction"] += PAYLOAD
        for c in rec["completions"]:
            c["text"] += PAYLOAD
    (hostile / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page_path = write_report(hostile)
    opened_id = records[0]["id"]
    dom, console, asked = chromium(f"{page_path.resolve().as_uri()}#open={opened_id}", tmp_path, "--dump-dom")
    assert console == "" and asked == []
    assert 'data-ready="yes"' in dom and "data-pwned" not in dom
    assert html.escape(PAYLOAD, quote=False) in dom  # shown as text

    # Were the escaping ever to fail, the policy still stops the markup: the page's own script
    # runs, an inline script or event handler that is not it does not.
    page = page_path.read_text(encoding="utf-8")
    raw = tmp_path / "raw.html"
    raw.write_text(page.replace("<body>", "<body>" + PAYLOAD, 1), encoding="utf-8")
    dom, console, asked = chromium(raw.resolve().as_uri(), tmp_path, "--dump-dom")
    assert 'data-ready="yes"' in dom and "data-pwned" not in dom
    # (Chromium's wording: "Refused to execute inline script ..." or, newer, "Executing inline
    # script violates ... The action has been blocked.")
    assert re.search(r"(Refused to execute|Executing) inline script", console), console
    assert re.search(r"(Refused to execute|Executing) inline event handler", console), console
    assert console.count("Content Security Policy") == 2, console
