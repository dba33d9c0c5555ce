"""Reads split at their marks, and the saved prefixes that let later reads skip them.

A read's prompt (a pairwise verdict's) may carry bounds: token positions where the text that
other reads share ends (the instruction, the response shown first). The engine decodes such a
prompt segment by segment, each segment from its own start in blocks of `read_block` tokens,
so the KV cache after a bound depends on the tokens before it and on the bounds below it, and
on nothing after it. At each bound it saves the sequence's KV state (llama_state_seq_get_data,
the bytes of those cells); a later read whose prompt starts with the same tokens and has the
same bounds below loads them into an empty cache (the same cells, the same bytes) and decodes
only the rest. So a verdict's numbers are the same whether its prefix came from the store or
was decoded: they depend on the prompt and its bounds alone.

The policy here is plain Python (positions, token lists, bytes); the engine applies it
(edgepref.backends.engine.core, `_read_alone`; batching.Batcher.read_prompt).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from .scheduler import block_len, common_prefix

# Bytes of saved prefixes an engine keeps (least recently used dropped first): for the 0.5B judge
# about 12 KiB a token, so some 40,000 prompt tokens; the 1.5B about 28 KiB a token.
STORE_BYTES = 512 * 2**20


def read_path_name(alone: bool, split: bool, read_block: int, prompt_block: int, slots: int) -> str:
    """How reads are computed, as verdicts record it and the request cache keys them."""
    if not alone:
        return f"batched-{prompt_block}x{slots}"
    return f"{'split' if split else 'alone'}-{read_block}"


def block_starts(n: int, bounds: Sequence[int], block: int) -> list[int]:
    """Where each llama_decode of an n-token prompt starts: every segment (0 and each bound open
    one) in blocks of `block` tokens from its own start."""
    cuts = sorted({0, *(b for b in bounds if 0 < b < n)})
    starts: list[int] = []
    for k, start in enumerate(cuts):
        end = cuts[k + 1] if k + 1 < len(cuts) else n
        starts += range(start, end, block)
    return starts


def next_block(n_past: int, n: int, bounds: Sequence[int], block: int) -> int:
    """How many tokens the decode that starts at `n_past` takes: to the end of its block, its
    segment, or the prompt, whichever comes first."""
    start = max((b for b in bounds if b <= n_past), default=0)
    end = min((b for b in bounds if n_past < b < n), default=n)
    return block_len(n_past - start, end - n_past, block)


def below(bounds: Sequence[int], p: int) -> tuple[int, ...]:
    return tuple(sorted(b for b in bounds if b < p))


def shared_start(held: Sequence[int], held_bounds: Sequence[int], prompt: Sequence[int],
                 bounds: Sequence[int], block: int) -> int:
    """How many leading tokens of `prompt` a sequence holding the decoded prompt `held` gives
    exactly: the largest block start of both decodes within their common prefix, with the same
    bounds below it, short of the prompt's last token (whose logits must be computed)."""
    limit = min(common_prefix(list(held), list(prompt)), len(prompt) - 1)
    mine = block_starts(len(prompt), bounds, block)
    theirs = {*block_starts(len(held), held_bounds, block), len(held)}
    for p in reversed(mine):
        if p <= limit and p in theirs and below(bounds, p) == below(held_bounds, p):
            return p
    return 0


class PrefixStore:
    """Saved KV states of read prefixes, keyed by (tokens, bounds below), at most `capacity`
    bytes; the least recently used go first."""

    def __init__(self, capacity: int = STORE_BYTES):
        self.capacity = capacity
        self.size = 0
        self._states: OrderedDict[tuple, object] = OrderedDict()

    @staticmethod
    def key(prompt: Sequence[int], bounds: Sequence[int], b: int) -> tuple:
        return tuple(prompt[:b]), below(bounds, b)

    def __contains__(self, key: tuple) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def longest(self, prompt: Sequence[int], bounds: Sequence[int]) -> tuple[int, object | None]:
        """The longest saved prefix of `prompt` that ends at one of its bounds (short of its last
        token): (its length, its state), or (0, None)."""
        for b in sorted((b for b in bounds if 0 < b < len(prompt)), reverse=True):
            key = self.key(prompt, bounds, b)
            if key in self._states:
                self._states.move_to_end(key)
                return b, self._states[key][0]
        return 0, None

    def put(self, key: tuple, state, nbytes: int) -> None:
        if key in self._states or nbytes > self.capacity:
            return
        self._states[key] = (state, nbytes)
        self.size += nbytes
        while self.size > self.capacity:
            _, (_, dropped) = self._states.popitem(last=False)
            self.size -= dropped
