"""`edgepref review`'s full-screen terminal view (Textual) over a runs.review.ReviewSession.

One pair at a time: the instruction (a conversation's earlier turns collapsed), the chosen and
rejected responses side by side (stacked under 100 columns) with the model that wrote each and
whether it was rewritten, and the judge's margin and decider (h hides them). Every key that
decides appends to review.jsonl before the next pair is drawn. Model text is shown as text,
never read as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Collapsible, Footer, Static

from ..runs.review import ReviewSession, Side

NARROW = 100  # columns below which the two responses are stacked
SHOWN = {"keep": "kept", "swap": "swapped (the rejected is better)", "drop": "dropped", "skip": "skipped"}


def message_text(value: object) -> str:
    """A response or prompt as text: a string, or the contents of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def split_prompt(prompt: object) -> tuple[list[dict], str]:
    """(earlier turns, the instruction answered): a string prompt has no earlier turns."""
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        *earlier, last = prompt
        return earlier, str(last.get("content", ""))
    return [], message_text(prompt)


def side_title(label: str, side: Side) -> str:
    if not side.rewritten:
        return f"{label}: {side.model}"
    what = f"{side.member}'s answer" if side.member and side.member != side.model else "an answer"
    return f"{label}: {side.model}, rewriting {what}" + (f" ({side.criterion})" if side.criterion else "")


def judge_line(pair: dict) -> str:
    parts = []
    if isinstance(pair.get("confidence"), (int, float)):
        parts.append(f"margin {pair['confidence']:.2f}")
    parts.append(f"decided by {pair.get('decided_by') or 'the ratings'}")
    if isinstance(pair.get("agreement"), (int, float)):
        parts.append(f"calibrated agreement {pair['agreement']:.0%}")
    a, b = pair.get("score_chosen"), pair.get("score_rejected")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        parts.append(f"ratings {a:.2f} vs {b:.2f}")
    return "judge: " + " · ".join(parts)


class ReviewApp(App):
    """The review screen. Exits with None; the session holds what was decided."""

    TITLE = "edgepref review"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    #prompt { height: auto; max-height: 40%; padding: 0 1; border: round $secondary; }
    #sides { height: 1fr; }
    #sides.stacked { layout: vertical; }
    .side { width: 1fr; height: 1fr; border: round $primary; padding: 0 1; }
    #judge { height: auto; padding: 0 1; color: $text-muted; }
    #judge.hidden { display: none; }
    #decision { height: auto; padding: 0 1; color: $warning; }
    """
    BINDINGS = [
        Binding("k", "decide('keep')", "keep"),
        Binding("s", "decide('swap')", "swap"),
        Binding("d", "decide('drop')", "drop"),
        Binding("space", "decide('skip')", "skip"),
        Binding("u", "undo", "undo"),
        Binding("left,b", "back", "back"),
        Binding("right,n", "forward", "next", show=False),
        Binding("h", "toggle_judge", "judge"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(self, session: ReviewSession, hide_judge: bool = False):
        super().__init__()
        self.session = session
        self.hide_judge = hide_judge

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield VerticalScroll(id="prompt")
        with Horizontal(id="sides"):
            yield VerticalScroll(Static(id="chosen-text"), id="chosen", classes="side")
            yield VerticalScroll(Static(id="rejected-text"), id="rejected", classes="side")
        yield Static(id="judge", classes="hidden" if self.hide_judge else "")
        yield Static(id="decision")
        yield Footer()

    def on_mount(self) -> None:
        self.show()

    def on_resize(self) -> None:
        self.query_one("#sides").set_class(self.size.width < NARROW, "stacked")

    # ------------------------------------------------------------ drawing

    def show(self) -> None:
        s = self.session
        counts = s.counts()
        order = "sample" if s.sampled else "least sure first"
        where = f"pair {min(s.pos + 1, len(s.queue))} of {len(s.queue)}" if s.queue else "no pair to review"
        self.query_one("#status", Static).update(Text(
            f"{where} ({order}) · {counts['kept']} kept · {counts['swapped']} swapped · "
            f"{counts['dropped']} dropped · {counts['unreviewed']} not reviewed"))
        prompt = self.query_one("#prompt", VerticalScroll)
        prompt.remove_children()
        pair = s.current()
        if pair is None:
            prompt.mount(Static(Text(
                "Every pair of this review has been shown. q quits (the review is saved as you go), "
                "u undoes the last decision, ← goes back.")))
            for which in ("chosen", "rejected"):
                self.query_one(f"#{which}", VerticalScroll).border_title = ""
                self.query_one(f"#{which}-text", Static).update("")
            self.query_one("#judge", Static).update("")
            self.query_one("#decision", Static).update("")
            return
        earlier, instruction = split_prompt(pair.get("prompt"))
        if earlier:
            turns = "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in earlier)
            prompt.mount(Collapsible(Static(Text(turns)), title=f"{len(earlier)} earlier turn(s)", collapsed=True))
        prompt.mount(Static(Text(instruction)))
        prompt.border_title = f"instruction · {pair['id']}"
        for label, side in zip(("chosen", "rejected"), s.sides(pair)):
            self.query_one(f"#{label}", VerticalScroll).border_title = side_title(label, side)
            self.query_one(f"#{label}-text", Static).update(Text(message_text(side.text)))
            self.query_one(f"#{label}", VerticalScroll).scroll_home(animate=False)
        self.query_one("#judge", Static).update(Text(judge_line(pair)))
        decided = s.decision_for(pair)
        self.query_one("#decision", Static).update(Text(f"your decision: {SHOWN[decided]}" if decided else ""))

    # ------------------------------------------------------------ keys

    def action_decide(self, decision: str) -> None:
        if not self.session.finished:
            self.session.decide(decision)
            self.show()

    def action_undo(self) -> None:
        if self.session.undo():
            self.show()

    def action_back(self) -> None:
        if self.session.back():
            self.show()

    def action_forward(self) -> None:
        if self.session.forward():
            self.show()

    def action_toggle_judge(self) -> None:
        self.hide_judge = not self.hide_judge
        self.query_one("#judge").set_class(self.hide_judge, "hidden")
