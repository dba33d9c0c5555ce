"""The docs hold together: every relative link in README.md and docs/*.md resolves (the file, and
an `#anchor` to a heading that exists, by GitHub's anchor rules), and each command's one-line
help is its line in the README's command table, so `edgepref --help` and the README say the
same thing. No model loads; these run in a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks (a `#` comment in a bash block
    is no heading, a `[x](y)` in a code block no link)."""
    lines, fenced, marker = [], False, ""
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m and (not fenced or m.group(1) == marker):
            fenced, marker = not fenced, m.group(1)
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (link targets, code backticks, emphasis
    stars and HTML tags gone), lowercased, every character that is not a letter, digit, space,
    hyphen or underscore removed, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        plain = CODE_SPAN.sub(lambda m: "code", line)  # a bracket in `code` is not a link
        found += [(number, m.group(2)) for m in INLINE_LINK.finditer(plain)]
        ref = REFERENCE.match(plain)
        if ref:
            found.append((number, ref.group(1)))
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `path` that names no file in the repository or no heading there."""
    problems, root = [], root.resolve()
    for number, target in links(path):
        if SCHEME.match(target):  # http:, https:, mailto: are not checked here (offline)
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.resolve().relative_to(root)}:{number}: {target}"
        if not dest.is_relative_to(root):
            problems.append(f"{where} leaves the repository")
        elif not dest.exists():
            problems.append(f"{where} names no file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{where} names no heading of {dest.relative_to(root)}")
    return problems


def test_github_slugs_of_headings_github_rendered() -> None:
    # anchors GitHub made for headings of this README before it was split (links to them worked)
    assert github_slug("Labels you can trust: the calibrated verdict chain") == (
        "labels-you-can-trust-the-calibrated-verdict-chain")
    assert github_slug("Determinism: what a seed promises") == "determinism-what-a-seed-promises"
    assert github_slug("Compared with distilabel's llama.cpp pipeline") == (
        "compared-with-distilabels-llamacpp-pipeline")
    assert github_slug("3. Calibration") == "3-calibration"
    assert github_slug("Try it on one machine: `edgepref serve`") == "try-it-on-one-machine-edgepref-serve"


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Same\n\n## Same\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n[ok](docs/a.md#a-page) [twice](docs/a.md#same-1) [self](#top) [web](https://x.org/#no)\n"
        "[gone](docs/b.md) [no heading](docs/a.md#nothing) [up](../outside.md)\n"
        "```bash\n# not a heading\n[in code](nowhere.md)\n```\n"
        "`[in a code span](nowhere.md)` and [text with `code`](#no-such-heading)\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == [
        "docs/b.md", "docs/a.md#nothing", "../outside.md", "#no-such-heading"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(README) if not SCHEME.match(t)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def leaf_commands() -> dict[str, object]:
    """'run', 'models list', ...: every command a user types, groups opened."""
    out = {}
    for name, command in cli.commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            out.update({f"{name} {sub}": c for sub, c in subcommands.items()})
        else:
            out[name] = command
    return out


def command_table() -> dict[str, str]:
    """The README's command table: the command words of each row's first cell (`edgepref run
    INPUT --out DIR` gives 'run') -> the row's second cell."""
    rows, commands = {}, leaf_commands()
    for _, line in prose_lines(README.read_text(encoding="utf-8")):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        m = re.fullmatch(r"`edgepref ([^`]+)`", cells[0]) if len(cells) >= 2 else None
        if m:
            words = m.group(1).split()
            rows[" ".join(words[:2]) if " ".join(words[:2]) in commands else words[0]] = cells[1]
    return rows


def test_each_command_has_one_whole_line_of_help() -> None:
    for name, command in leaf_commands().items():
        short = command.get_short_help_str()
        assert short and short == command.get_short_help_str(limit=1000), (
            f"`edgepref {name}`: the first sentence of its help is shortened to {short!r}; "
            "make it 45 characters or fewer")


def test_the_readme_command_table_says_what_each_help_says() -> None:
    table, commands = command_table(), leaf_commands()
    assert set(table) == set(commands), "one row per command, no row for a command that does not exist"
    for name, command in commands.items():
        assert table[name] == command.get_short_help_str(), f"`edgepref {name}`"


def test_edgepref_help_lists_each_line_whole() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listed = dict(re.findall(r"^  ([a-z-]+)\s{2,}(.+)$", result.output.split("Commands:")[1], re.M))
    for name, command in cli.commands.items():
        assert listed[name] == command.get_short_help_str(), name
