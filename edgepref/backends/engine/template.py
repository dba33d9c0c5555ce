"""A model's text to tokens: messages to prompt tokens, rendered with the chat template the GGUF
carries (jinja2, sandboxed, as transformers renders it; a ChatML fallback when it has none), and
the first tokens of candidate answers (choices, traced labels).

Only the template's own markup becomes control tokens. A message's content (an instruction, a
response a judge reads) and the prefill are text: `<|im_end|>` written in them is the ten
characters, not the token that ends a turn, so text cannot close its turn and open another.
llama.cpp's special-token parsing cannot tell markup from text in a rendered string, so
`tokens` finds where each content lies in it (`content_spans`). A prompt whose text holds no
control token's string (nearly all) is tokenized exactly as before, in one llama_tokenize call
with special parsing; one that does is split the way llama.cpp's tokenizer splits a text at
control tokens (longest first, LSTRIP/RSTRIP whitespace dropped), with the occurrences inside
text left to be tokenized as text (`tokens_apart`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Iterator, Sequence

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ...core.errors import EngineError
from .handles import ControlToken, LlamaModel


# ChatML, for a GGUF that carries no chat template
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Where a content goes, rendered in its place to find the markup around it: private-use
# characters, which no template trims or escapes.
_MARK = "\ue000{}\ue001"
_MARK_SPLIT = re.compile("\ue000(\\d+)\ue001")

# The whitespace that a token's LSTRIP/RSTRIP attribute drops (C isspace, as llama.cpp tests)
_C_SPACE = " \t\n\v\f\r"

Span = tuple[int, int]  # [start, end) in the rendered text


class ChatTemplate:
    """Renders messages with the model's own jinja2 chat template (as transformers does)."""

    def __init__(self, model: LlamaModel):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        self.template = env.from_string(model.chat_template or _FALLBACK_TEMPLATE)
        self.bos_text = model.token_text(model.bos_id)
        self.eos_text = model.token_text(model.eos_id)
        self.model = model
        self.controls: list[ControlToken] = model.control_tokens()
        self._longest = max((len(t.text) for t in self.controls), default=0)
        # one search for any control string; longest first, so a match is the longest at its start
        self._any_control = (
            re.compile("|".join(re.escape(t.text) for t in self.controls)) if self.controls else None
        )

    def render(self, messages: list[dict[str, str]]) -> str:
        def raise_exception(message: str) -> None:
            raise EngineError(f"the model's chat template rejected the messages: {message}")

        return self.template.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.bos_text,
            eos_token=self.eos_text,
            raise_exception=raise_exception,
            strftime_now=lambda fmt: datetime.now().strftime(fmt),
        )

    def tokens(self, messages: list[dict[str, str]], prefill: str = "") -> list[int]:
        """The prompt tokens: the rendered messages and the prefill, where only the template's
        markup makes control tokens (see the module docstring)."""
        return self.prompt(messages, prefill)[0]

    def prompt(self, messages: list[dict[str, str]], prefill: str = "",
               marks: Sequence[int] = ()) -> tuple[list[int], tuple[int, ...]]:
        """The prompt tokens (as `tokens`) and the positions of `marks` (character offsets into
        the last message's content) in them: for each, the fewest leading tokens whose text
        reaches it (a token across a mark goes before the bound). A function of the messages
        alone, so prompts that share the text up to a mark, and its tokens, share the bound. No
        bounds when the template changes the content or the tokens do not spell the rendered
        text. One rendering of the messages gives both."""
        body = self.render(messages)
        spans = self.content_spans(messages, body)
        prompt = self._tokenize(messages, prefill, body, spans)
        return prompt, self._bounds(messages, body, spans, prompt, marks)

    def _tokenize(self, messages: list[dict[str, str]], prefill: str, body: str,
                  spans: list[Span] | None) -> list[int]:
        text = body + prefill
        # Templates that write the BOS themselves must not get a second one.
        add_bos = self.model.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        if spans is None:
            contents = [m.get("content") for m in messages] + [prefill]
            if any(self._first_control(c) for c in contents if isinstance(c, str)):
                raise EngineError(
                    "a message holds a control token's text and this model's chat template changes "
                    "message text as it renders it, so markup and text cannot be told apart",
                    "remove the control-token text from the input, or use a model whose chat template "
                    "writes messages unchanged",
                )
            return self.model.tokenize(text, add_special=add_bos, parse_special=True)
        spans = [*spans, (len(body), len(text))]
        if not any(self._controls_over(text, span) for span in spans):
            return self.model.tokenize(text, add_special=add_bos, parse_special=True)
        return self.tokens_apart(text, spans, add_bos)

    def _bounds(self, messages: list[dict[str, str]], body: str, spans: list[Span] | None,
                prompt: list[int], marks: Sequence[int]) -> tuple[int, ...]:
        if not marks:
            return ()
        content = messages[-1].get("content")
        if not spans or not isinstance(content, str) or body[spans[-1][0]:spans[-1][1]] != content:
            return ()
        start = spans[-1][0]
        skip = 1 if prompt and prompt[0] == self.model.bos_id and not body.startswith(self.bos_text) else 0
        pieces = [self.model.piece(token, special=True) for token in prompt[skip:]]
        if not b"".join(pieces).startswith(body.encode("utf-8")):
            return ()
        ends, at = [], 0
        for piece in pieces:
            at += len(piece)
            ends.append(at)
        out = []
        for mark in marks:
            offset = len(body[: start + mark].encode("utf-8"))
            n = next((k + 1 for k, end in enumerate(ends) if end >= offset), None)
            if n is not None and 0 < n + skip < len(prompt):
                out.append(n + skip)
        return tuple(sorted(set(out)))

    # ------------------------------------------------------------------ markup and text

    def content_spans(self, messages: list[dict[str, str]], rendered: str) -> list[Span] | None:
        """Where each message's content lies in `rendered` (the template's output for
        `messages`), found by rendering the messages again with a mark in place of each content;
        None when the template's output cannot be matched to that skeleton (it branches on the
        text, or changes it other than by stripping whitespace)."""
        marked = [
            {**m, "content": _MARK.format(i)} if isinstance(m.get("content"), str) else m
            for i, m in enumerate(messages)
        ]
        try:
            skeleton = self.render(marked)
        except Exception:  # a template may inspect the text (and reject the mark)
            return None
        parts = _MARK_SPLIT.split(skeleton)  # markup, index, markup, index, ..., markup
        spans: list[Span] = []
        pos = 0
        for k in range(0, len(parts), 2):
            markup = parts[k]
            if not rendered.startswith(markup, pos):
                return None
            pos += len(markup)
            if k + 1 == len(parts):
                break
            index = int(parts[k + 1])
            if index >= len(messages):
                return None
            after = parts[k + 2]
            content = messages[index]["content"]
            # the content as written, or as a template's trim left it
            for shown in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
                end = pos + len(shown)
                if rendered.startswith(shown, pos) and rendered.startswith(after, end):
                    break
            else:
                return None
            spans.append((pos, end))
            pos = end
        return spans if pos == len(rendered) else None

    def _first_control(self, text: str) -> re.Match | None:
        return self._any_control.search(text) if self._any_control is not None else None

    def _occurrences(self, text: str, lo: int, hi: int) -> Iterator[Span]:
        """Every control string in `text` that starts in [lo, hi), overlapping ones too."""
        if self._any_control is None:
            return
        pos = max(lo, 0)
        while (m := self._any_control.search(text, pos, min(hi + self._longest, len(text)))) and m.start() < hi:
            yield m.start(), m.end()
            pos = m.start() + 1

    def _controls_over(self, text: str, span: Span) -> bool:
        """Whether a control string overlaps the text span (inside it, or across its edge)."""
        a, b = span
        if a == b:
            return False
        return any(end > a for _, end in self._occurrences(text, a - self._longest + 1, b))

    def tokens_apart(self, text: str, spans: Sequence[Span], add_special: bool) -> list[int]:
        """Tokenize `text` as llama.cpp does with special parsing, except that a control string
        overlapping a text span stays text. llama.cpp's tokenizer splits the text at control
        strings, longest first, each fragment between them tokenized on its own; this makes the
        same fragments from the markup's control strings only, and tokenizes each fragment
        (content and all) without special parsing, so the seams of text and markup fall where
        they fall for a clean prompt."""
        fragments: list[tuple[int, int, int | None]] = [(0, len(text), None)]  # (start, end, token)
        for control in self.controls:
            if control.text not in text:
                continue
            split: list[tuple[int, int, int | None]] = []
            for start, end, token in fragments:
                if token is None:
                    split += self._split_at(text, start, end, control, spans)
                else:
                    split.append((start, end, token))
            fragments = split
        out = [self.model.bos_id] if add_special and self.model.add_bos else []
        for start, end, token in fragments:
            if token is not None:
                out.append(token)
            else:
                out += self.model.tokenize(text[start:end], add_special=False, parse_special=False)
        if add_special and self.model.add_eos:
            out.append(self.model.eos_id)
        return out

    @staticmethod
    def _split_at(text: str, start: int, end: int, control: ControlToken,
                  spans: Sequence[Span]) -> list[tuple[int, int, int | None]]:
        """Split the raw fragment [start, end) at each occurrence of `control` outside the text
        spans, as llama.cpp's tokenizer_st_partition does."""
        out: list[tuple[int, int, int | None]] = []
        raw = pos = start
        while (at := text.find(control.text, pos, end)) >= 0:
            stop = at + len(control.text)
            if any(at < b and stop > a for a, b in spans):  # written in text: stays text
                pos = at + 1
                continue
            left = at
            if control.lstrip:
                while left > raw and text[left - 1] in _C_SPACE:
                    left -= 1
            if left > raw:
                out.append((raw, left, None))
            out.append((at, stop, control.id))
            raw = stop
            if control.rstrip:
                while raw < end and text[raw] in _C_SPACE:
                    raw += 1
            pos = raw
        if raw < end:
            out.append((raw, end, None))
        return out

    def candidate_tokens(self, candidates: Sequence[str] | None, spellings: bool = False) -> dict[int, str]:
        """First token -> candidate. With `spellings`, a candidate also owns the token of its
        spelling with a leading space (" A" beside "A") when that is one token of its own."""
        out: dict[int, str] = {}
        for cand in candidates or ():
            toks = self.model.tokenize(cand, add_special=False, parse_special=False)
            if not toks:
                raise EngineError(f"choice {cand!r} has no tokens")
            if toks[0] in out:
                raise EngineError(f"choices {out[toks[0]]!r} and {cand!r} start with the same token")
            out[toks[0]] = cand
            if spellings and not cand.startswith(" "):
                spaced = self.model.tokenize(" " + cand, add_special=False, parse_special=False)
                if spaced and spaced[0] not in out and self.model.piece(spaced[0]) == (" " + cand).encode():
                    out[spaced[0]] = cand
        return out
