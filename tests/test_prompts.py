"""Prompt templates: every criterion and aspect renders, user overrides win, bad names explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepref.core.errors import ConfigError
from edgepref.prompts import (
    EVOL_CRITERIA, JUDGE_ASPECTS, PACKAGE_PROMPTS_DIR, evol_template_name, judge_template_name, list_prompts,
    render_prompt)

INSTRUCTION = "Name three primary colours."
RESPONSES = ["Red, yellow and blue.", "Green.\nAlso purple.", "Cyan, magenta, yellow."]


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real ~/.config/edgepref/prompts must not leak into the tests.
    monkeypatch.setenv("EDGEPREF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("EDGEPREF_PROMPTS_DIR", raising=False)


@pytest.mark.parametrize("criterion", EVOL_CRITERIA)
def test_every_evol_criterion_renders(criterion: str) -> None:
    text = render_prompt(evol_template_name(criterion), instruction=INSTRUCTION, response="Red.")
    # the turn after the conversation it rewrites (edgepref.stages.evolve): it quotes neither the
    # instruction nor the response again, which the model has just read and written
    assert INSTRUCTION not in text and "Red." not in text
    assert text.startswith("Write an improved version of your answer. Make it")
    # the output rule comes last, where a small model reads it just before answering
    assert text.rstrip().splitlines()[-1].startswith("Write only the new answer")
    assert "{" not in text and "}" not in text


def test_evol_criteria_differ() -> None:
    texts = {
        render_prompt(evol_template_name(c), instruction="i", response="r") for c in EVOL_CRITERIA
    }
    assert len(texts) == len(EVOL_CRITERIA)


@pytest.mark.parametrize("aspect", JUDGE_ASPECTS)
@pytest.mark.parametrize("with_rationale", [True, False])
def test_every_judge_aspect_renders_numbered(aspect: str, with_rationale: bool) -> None:
    text = render_prompt(
        judge_template_name(aspect),
        instruction=INSTRUCTION,
        responses=RESPONSES,
        with_rationale=with_rationale,
    )
    positions = [text.index(f"Response {i}:\n{r}") for i, r in enumerate(RESPONSES, start=1)]
    assert positions == sorted(positions)
    assert "Response 4" not in text
    for score in "12345":
        assert f"{score} = " in text  # the rubric names every score
    # The task, rubric and output format come before the input, and do not depend on it: the
    # prompts of one run share them as a prefix that the engine reuses.
    head, _, rest = text.partition("Instruction:\n")
    assert rest.startswith(INSTRUCTION)
    assert ("score - short reason" in head) == with_rationale
    assert ("only the score digit" in head) == (not with_rationale)
    other = render_prompt(judge_template_name(aspect), instruction="something else",
                          responses=["one", "two"], with_rationale=with_rationale)
    assert other.startswith(head + "Instruction:\n")
    assert text.rstrip().endswith(RESPONSES[-1])


def test_judge_aspects_have_their_own_rubrics() -> None:
    texts = {
        render_prompt(judge_template_name(a), instruction="i", responses=["r"], with_rationale=True)
        for a in JUDGE_ASPECTS
    }
    assert len(texts) == len(JUDGE_ASPECTS)


def test_single_response_is_shown_alone() -> None:
    text = render_prompt(
        "ultrafeedback_overall", instruction="i", responses=["only one"], with_rationale=False
    )
    assert "Response 1:\nonly one" in text and "Response 2" not in text
    assert "one line per response" in text  # the grammar fixes how many lines


def test_pairwise_renders() -> None:
    text = render_prompt("pairwise", instruction=INSTRUCTION, first="AAA", second="BBB",
                         label_first="A", label_second="B")
    assert text.index("Response A:\nAAA") < text.index("Response B:\nBBB")
    assert text.rstrip().endswith("one letter: A or B.")
    numbers = render_prompt("pairwise_headings", instruction=INSTRUCTION, first="AAA", second="BBB",
                            label_first="1", label_second="2", question="repeat")
    assert numbers.index("# Response 1\nAAA") < numbers.index("# Response 2\nBBB")
    assert numbers.count(INSTRUCTION) == 2 and numbers.endswith("one number, 1 or 2.")


def test_missing_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="responses"):
        render_prompt("ultrafeedback_overall", instruction="i", with_rationale=True)


def test_aspect_and_criterion_names() -> None:
    assert judge_template_name("instruction-following") == "ultrafeedback_instruction_following"
    assert judge_template_name("overall") == "ultrafeedback_overall"
    assert evol_template_name("deepening") == "evol_deepening"
    for name in [judge_template_name(a) for a in JUDGE_ASPECTS] + [
        evol_template_name(c) for c in EVOL_CRITERIA
    ]:
        assert (PACKAGE_PROMPTS_DIR / f"{name}.jinja2").is_file()
    with pytest.raises(ConfigError, match="overall"):
        judge_template_name("style")
    with pytest.raises(ConfigError, match="details"):
        evol_template_name("brevity")


def test_unknown_template_lists_available() -> None:
    with pytest.raises(ConfigError) as info:
        render_prompt("no_such_prompt")
    message = str(info.value)
    for name in ("pairwise", "evol_details", "ultrafeedback_overall"):
        assert name in message
    assert "_evol_base" not in list_prompts()


def test_list_prompts_has_all_package_templates() -> None:
    expected = {"pairwise", "pairwise_headings", "pointwise"} | {evol_template_name(c) for c in EVOL_CRITERIA}
    expected |= {judge_template_name(a) for a in JUDGE_ASPECTS}
    assert set(list_prompts()) == expected


def test_override_dir_argument_wins(tmp_path: Path) -> None:
    (tmp_path / "pairwise.jinja2").write_text("Pick: {{ first }} or {{ second }}")
    (tmp_path / "my_prompt.jinja2").write_text("Hello {{ who }}")
    variables = {"instruction": "i", "first": "x", "second": "y", "label_first": "A", "label_second": "B"}
    assert render_prompt("pairwise", override_dir=tmp_path, **variables) == "Pick: x or y"
    assert render_prompt("my_prompt", override_dir=tmp_path, who="you") == "Hello you"
    assert "my_prompt" in list_prompts(tmp_path)
    # without the override the package template is back
    assert render_prompt("pairwise", **variables).startswith("Which")


def test_config_dir_prompts_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cfg"
    (config / "prompts").mkdir(parents=True)
    (config / "prompts" / "evol_details.jinja2").write_text("MORE DETAIL: {{ response }}")
    monkeypatch.setenv("EDGEPREF_CONFIG_DIR", str(config))
    assert render_prompt("evol_details", instruction="i", response="r") == "MORE DETAIL: r"


def test_env_prompts_dir_wins_and_base_override_reaches_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Overriding the shared base changes every criterion that extends it.
    (tmp_path / "_evol_base.jinja2").write_text(
        "{{ instruction }}|{{ response }}|{% block criterion %}{% endblock %}"
    )
    monkeypatch.setenv("EDGEPREF_PROMPTS_DIR", str(tmp_path))
    for criterion in EVOL_CRITERIA:
        text = render_prompt(evol_template_name(criterion), instruction="i", response="r")
        assert text.startswith("i|r|Make it")
