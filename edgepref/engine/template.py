"""A model's text to tokens: messages to prompt tokens, rendered with the chat template the GGUF
carries (jinja2, sandboxed, as transformers renders it; a ChatML fallback when it has none), and
the first tokens of candidate answers (choices, traced labels)."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import EngineError
from .handles import LlamaModel


# ChatML, for a GGUF that carries no chat template
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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
        text = self.render(messages) + prefill
        # Templates that write the BOS themselves must not get a second one.
        add_bos = self.model.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

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
