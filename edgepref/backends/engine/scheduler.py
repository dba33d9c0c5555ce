"""The engine's scheduling policy, in plain Python: which queued job starts in which slot, how
many prompt tokens it reuses from which slot's KV cache, what a call keeps of the cache, which
slots decode in a step, and when a job is finished.

Everything here reads `Slot`s and `Job`s (token lists, counts, kept logits) and returns
decisions; nothing calls llama.cpp. The engine (edgepref.backends.engine.core) applies the decisions: it
copies and removes KV cells, decodes, and draws tokens. So the policy can be tested without a
model (tests/test_scheduler.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

from .jobs import Job, Slot, find_stop

# A job waits for a slot that is still prefilling a prompt it shares, rather than decoding
# that prefix itself, when the wait saves at least this many prompt tokens.
MIN_SHARED_PREFIX = 16

# How far down the queue admission looks, in slots: a long queue of jobs waiting for one
# shared prefix then does not cost a full scan every step.
LOOKAHEAD_PER_SLOT = 2

# Of the generated text, the bytes searched for a stop string after each token.
STOP_WINDOW_BYTES = 256


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(tokens: list[int], canon: int, logits_len: int, prompt: list[int], block: int) -> int:
    """How many tokens of `prompt` a sequence holding `tokens` can give, so that the prompt's KV
    and first logits are exactly those of a fresh block-wise decode: the whole prompt when the
    sequence kept the logits after exactly this prompt, else a whole number of blocks, short of
    the prompt's last block (which must be decoded to produce its logits)."""
    common = common_prefix(tokens[: max(canon, 0)], prompt)
    if common == len(prompt) == logits_len:
        return common
    last_block_start = (len(prompt) - 1) // block * block
    return min(common // block * block, last_block_start)


def block_len(n_past: int, n_left: int, block: int) -> int:
    """How many of the `n_left` prompt tokens after position `n_past` the next prompt block
    holds: up to the next multiple of `block`."""
    return min(n_left, block - n_past % block)


def finish_reason(job: Job, eog: bool, n_past: int, n_ctx: int) -> str | None:
    """Why the job ends after the token it just drew, or None if it goes on. `eog`: the token
    ends generation (it is not part of the text); otherwise it is already in job.out_bytes and
    job.out_ids. `n_past`: the tokens the job's slot holds in the KV cache, of `n_ctx`."""
    if eog:
        return "stop"
    sampling = job.request.sampling
    if sampling.stop:
        tail = bytes(job.out_bytes[-STOP_WINDOW_BYTES:]).decode("utf-8", "ignore")
        if find_stop(tail, sampling.stop) is not None:
            return "stop"
    if len(job.out_ids) >= sampling.max_tokens or n_past + 1 >= n_ctx:
        return "length"
    return None


@dataclass(frozen=True)
class Placement:
    """Where a job starts: in the free `slot`, with the first `reuse` tokens of its prompt taken
    from the KV cache of `source` (`slot` itself, another slot, or None: nothing reused)."""

    slot: Slot
    source: Slot | None
    reuse: int


class Scheduler:
    """The policy over the engine's slots (the same list the engine holds); prompts are decoded
    and reused in blocks of `prompt_block` tokens (edgepref.backends.engine.core, "Determinism")."""

    def __init__(self, slots: list[Slot], prompt_block: int):
        self.slots = slots
        self.prompt_block = prompt_block

    # ------------------------------------------------------------------ prefix reuse

    def reusable_from(self, src: Slot, prompt: list[int], with_pending: bool = False) -> int:
        """The prompt tokens `src` can give now, or, with_pending, once the prompt it is
        prefilling is decoded."""
        if with_pending:
            tokens = src.tokens + src.pending
            return reusable(tokens, len(tokens), len(tokens), prompt, self.prompt_block)
        return reusable(src.tokens, src.canon, src.logits_len, prompt, self.prompt_block)

    def best_source(self, prompt: list[int], free: list[Slot]) -> tuple[Slot | None, int]:
        """The slot that gives the most of `prompt` and how much; on a tie a free slot wins
        over a busy one, else the first in slot order."""
        best_src, best_len = None, 0
        for s in self.slots:
            n = self.reusable_from(s, prompt)
            if n > best_len or (n == best_len and s in free and best_src not in free):
                best_src, best_len = s, n
        return best_src, best_len

    def worth_waiting(self, prompt: list[int], best_len: int) -> bool:
        """Whether a slot still prefilling a prompt will soon give enough more of `prompt` than
        the `best_len` tokens it can get now: at least MIN_SHARED_PREFIX more, or all of it."""
        waiting_for = max(
            (self.reusable_from(s, prompt, with_pending=True) for s in self.slots if s.job and s.pending),
            default=0,
        )
        gain = waiting_for - best_len
        return gain >= MIN_SHARED_PREFIX or (gain > 0 and waiting_for >= len(prompt) - 1)

    # ------------------------------------------------------------------ admission

    @staticmethod
    def pick_free(free: list[Slot]) -> Slot:
        """The free slot whose cached tokens are worth least (fewest), keeping long prefixes
        alive; the first such slot on a tie."""
        return min(free, key=lambda s: s.n_past)

    def place(self, prompt: list[int], free: list[Slot]) -> Placement | None:
        """Where a job with `prompt` starts now, or None if it should wait for a prefill."""
        src, n = self.best_source(prompt, free)
        if self.worth_waiting(prompt, n):
            return None
        slot = src if src in free else self.pick_free(free)
        return Placement(slot, src, n)

    def admissions(self, queue: deque[Job]) -> Iterator[tuple[Job, Placement]]:
        """Take jobs off the front of `queue` and yield (job, placement) for each that starts
        now, one per free slot. The caller makes the slot run the job (`Slot.hold`) before
        asking for the next, so that later jobs see the prompts earlier ones decode. Jobs that
        wait go back to the front of the queue, in their order."""
        free = [s for s in self.slots if s.job is None]
        deferred: list[Job] = []
        try:
            while free and queue and len(deferred) < LOOKAHEAD_PER_SLOT * len(self.slots):
                job = queue.popleft()
                placement = self.place(job.prompt, free)
                if placement is None:
                    deferred.append(job)
                    continue
                free.remove(placement.slot)
                yield job, placement
        finally:
            queue.extendleft(reversed(deferred))

    # ------------------------------------------------------------------ the cache between calls

    def keep_for_call(self, prompts: set[tuple[int, ...]]) -> list[tuple[Slot, int | None]]:
        """(idle slot, tokens to keep) for each idle slot holding tokens at the start of a call:
        the length of its kept prompt when that is one of the call's `prompts` (its logits
        stay), else None (forget everything)."""
        keep: list[tuple[Slot, int | None]] = []
        for s in self.slots:
            if s.job is not None or not s.tokens:
                continue
            whole = s.logits is not None and tuple(s.tokens[: s.logits_len]) in prompts
            keep.append((s, s.logits_len if whole else None))
        return keep

    def idle_cached(self) -> list[Slot]:
        """Slots without a job that still hold tokens: what a full KV cache evicts first."""
        return [s for s in self.slots if s.job is None and s.tokens]

    # ------------------------------------------------------------------ a step

    def generating(self) -> list[Slot]:
        """Slots with a drawn token to decode, in (request, sample) order: the batch rows."""
        return sorted((s for s in self.slots if s.job and s.next_token is not None), key=lambda s: s.job.key)

    def prefilling(self) -> list[Slot]:
        """Slots with prompt tokens left to decode, in (request, sample) order."""
        return sorted((s for s in self.slots if s.job and s.pending), key=lambda s: s.job.key)

    def longest_running(self) -> Slot:
        """The running slot holding the most tokens: the job failed when the KV cache is full."""
        return max((s for s in self.slots if s.job), key=lambda s: s.n_past)
