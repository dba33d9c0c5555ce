"""The engine's scheduling policy on plain data: no model is loaded. Slots are described by the
tokens they hold; the tests apply each decision the way the engine does (`Slot.hold`)."""

from __future__ import annotations

from collections import deque

import numpy as np

from edgepref.backends.base import ChatRequest, Sampling
from edgepref.backends.engine.jobs import Job, Slot
from edgepref.backends.engine.prefixes import PrefixStore, block_starts, next_block, shared_start
from edgepref.backends.engine.scheduler import (
    MIN_SHARED_PREFIX, Scheduler, block_len, common_prefix, finish_reason, reusable)

BLOCK = 8


def job(prompt: list[int], index: int = 0, sample: int = 0, **sampling) -> Job:
    req = ChatRequest([{"role": "user", "content": "x"}], Sampling(**sampling))
    return Job(req, index, sample, list(prompt), 0, {}, {})


def cached(seq: int, tokens: list[int], canon: int | None = None, kept_logits: bool = False) -> Slot:
    """An idle slot holding `tokens` (decoded as prompt blocks up to `canon`), optionally with
    the logits kept after them."""
    slot = Slot(seq=seq, tokens=list(tokens), canon=len(tokens) if canon is None else canon)
    if kept_logits:
        slot.logits, slot.logits_len = np.zeros(4, dtype=np.float32), len(tokens)
    return slot


def running(seq: int, prompt: list[int], decoded: int) -> Slot:
    """A slot whose job has decoded the first `decoded` tokens of `prompt`, the rest pending."""
    slot = Slot(seq=seq)
    slot.job = job(prompt, index=100 + seq)
    slot.hold(prompt, decoded, None)
    return slot


def admit_all(scheduler: Scheduler, queue: deque[Job]) -> list[tuple[int, int, int | None, int]]:
    """(request index, slot, source slot, reused tokens) of each admission, applied as the engine
    applies them."""
    decisions = []
    for j, place in scheduler.admissions(queue):
        place.slot.job = j
        place.slot.hold(j.prompt, place.reuse, place.source)
        decisions.append((j.req_index, place.slot.seq, place.source.seq if place.source else None, place.reuse))
    return decisions


PROMPT = list(range(1, 41))  # 40 tokens: blocks 0-7, 8-15, 16-23, 24-31, 32-39


# ---------------------------------------------------------------- prefix reuse


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_reuse_is_cut_to_whole_blocks() -> None:
    held = PROMPT[:21] + [99]  # 21 tokens in common: two whole blocks
    assert reusable(held, len(held), -1, PROMPT, BLOCK) == 16


def test_only_tokens_decoded_as_prompt_blocks_are_reused() -> None:
    # canon 9: the tokens after it were generated, so only the first block counts
    assert reusable(PROMPT, 9, -1, PROMPT, BLOCK) == 8


def test_the_last_block_is_decoded_again_without_kept_logits() -> None:
    # the whole prompt is cached but its logits were not kept: its last block (32-39) is decoded
    assert reusable(PROMPT, len(PROMPT), -1, PROMPT, BLOCK) == 32
    # a prompt ending on a block boundary keeps its last block to decode too
    assert reusable(PROMPT[:32], 32, -1, PROMPT[:32], BLOCK) == 24


def test_a_whole_prompt_with_kept_logits_is_reused_whole() -> None:
    assert reusable(PROMPT, len(PROMPT), len(PROMPT), PROMPT, BLOCK) == 40
    # logits kept after another length do not count
    assert reusable(PROMPT, len(PROMPT), 24, PROMPT, BLOCK) == 32


def test_reusable_from_a_slot_and_from_what_it_will_hold() -> None:
    scheduler = Scheduler([], BLOCK)
    prefilling = running(0, PROMPT, 8)
    assert scheduler.reusable_from(prefilling, PROMPT) == 8
    # once its prompt is decoded the slot keeps its logits: the whole prompt
    assert scheduler.reusable_from(prefilling, PROMPT, with_pending=True) == 40


def test_block_len_stops_at_block_boundaries() -> None:
    assert block_len(0, 40, BLOCK) == 8
    assert block_len(5, 40, BLOCK) == 3
    assert block_len(16, 5, BLOCK) == 5


# ---------------------------------------------------------------- admission


def test_a_job_goes_to_the_slot_holding_most_of_its_prompt() -> None:
    slots = [cached(0, [7] * 20), cached(1, PROMPT[:17] + [0]), cached(2, PROMPT[:9])]
    placement = Scheduler(slots, BLOCK).place(PROMPT, list(slots))
    assert (placement.slot.seq, placement.source.seq, placement.reuse) == (1, 1, 16)


def test_a_prefix_held_by_a_busy_slot_is_copied_into_the_free_slot_worth_least() -> None:
    busy = running(0, PROMPT[:24] + [50] * 8, 32)  # decoded, generating
    slots = [busy, cached(1, [5] * 30), cached(2, [6] * 3), cached(3, [7] * 10)]
    placement = Scheduler(slots, BLOCK).place(PROMPT, slots[1:])
    assert (placement.slot.seq, placement.source.seq, placement.reuse) == (2, 0, 24)


def test_with_nothing_to_reuse_the_first_free_slot_is_taken() -> None:
    slots = [running(0, [9] * 16, 16), cached(1, [5] * 30), cached(2, [6] * 3)]
    placement = Scheduler(slots, BLOCK).place(PROMPT, slots[1:])
    assert (placement.slot.seq, placement.reuse) == (1, 0)


def test_pick_free_prefers_the_fewest_cached_tokens() -> None:
    free = [cached(0, [1] * 5), cached(1, [1] * 2), cached(2, []), cached(3, [])]
    assert Scheduler.pick_free(free).seq == 2


def test_a_job_waits_for_a_prefill_that_will_give_it_much_more() -> None:
    long_prompt = list(range(1, 81))
    slots = [running(0, long_prompt, 8), cached(1, [])]
    scheduler = Scheduler(slots, BLOCK)
    assert scheduler.worth_waiting(long_prompt, 8)  # 80 - 8 >= MIN_SHARED_PREFIX
    assert scheduler.place(long_prompt, [slots[1]]) is None
    # a prompt that shares only one more block than is cached now does not wait
    other = long_prompt[:16] + [0] * 40
    assert 16 - 8 < MIN_SHARED_PREFIX
    assert scheduler.place(other, [slots[1]]).reuse == 8


def test_a_small_gain_is_worth_waiting_for_when_it_is_the_whole_prompt() -> None:
    slots = [running(0, PROMPT, 32), cached(1, [])]
    scheduler = Scheduler(slots, BLOCK)
    # 40 - 32 = 8 tokens of gain, below MIN_SHARED_PREFIX, but then nothing is left to decode
    assert scheduler.worth_waiting(PROMPT, 32)
    assert not scheduler.worth_waiting(PROMPT + [77] * 20, 32)


def test_samples_of_one_prompt_wait_for_the_first_and_keep_their_order() -> None:
    slots = [cached(i, []) for i in range(3)]
    queue = deque([job(PROMPT, 0, 0), job(PROMPT, 0, 1), job([3] * 12, 1, 0)])
    decisions = admit_all(Scheduler(slots, BLOCK), queue)
    # the first sample decodes the prompt in slot 0; the second waits for it; the other request
    # takes the next free slot
    assert decisions == [(0, 0, 0, 0), (1, 1, 1, 0)]
    assert [(j.req_index, j.sample) for j in queue] == [(0, 1)]
    # the prompt decoded, its logits kept: the waiting sample reuses all of it in the free slot
    slots[0].tokens, slots[0].pending, slots[0].canon = list(PROMPT), [], 40
    slots[0].logits, slots[0].logits_len = np.zeros(4, dtype=np.float32), 40
    assert admit_all(Scheduler(slots, BLOCK), queue) == [(0, 2, 0, 40)]
    assert not queue


def test_admission_stops_when_the_slots_are_full_and_looks_a_bounded_way() -> None:
    slots = [running(0, PROMPT, 8)]
    queue = deque([job(PROMPT, i) for i in range(5)])
    assert admit_all(Scheduler(slots, BLOCK), queue) == []  # no free slot: nothing taken off
    assert len(queue) == 5
    slots.append(cached(1, []))
    waiting = [job(PROMPT, i) for i in range(5)]  # all wait for slot 0's prompt
    other = job([4] * 10, 9)  # could run in slot 1, but lies past the look-ahead
    queue = deque(waiting + [other])
    # look-ahead of 2 per slot: four jobs deferred, then admission stops before the fifth
    assert admit_all(Scheduler(slots, BLOCK), queue) == []
    assert [id(j) for j in queue] == [id(j) for j in waiting + [other]]
    queue = deque(waiting[:3] + [other])
    assert admit_all(Scheduler(slots, BLOCK), queue) == [(9, 1, 1, 0)]
    assert [id(j) for j in queue] == [id(j) for j in waiting[:3]]


def test_a_slot_takes_kept_logits_only_with_the_whole_prompt() -> None:
    src = cached(0, PROMPT, kept_logits=True)
    whole, part = Slot(seq=1), Slot(seq=2)
    whole.hold(PROMPT, 40, src)
    part.hold(PROMPT, 32, src)
    assert whole.logits is src.logits and whole.logits_len == 40 and whole.pending == []
    assert part.logits is None and part.logits_len == -1 and part.pending == PROMPT[32:]
    assert part.tokens == PROMPT[:32] and part.canon == 32


# ---------------------------------------------------------------- the cache between calls


def test_a_call_keeps_only_its_own_whole_prompts() -> None:
    mine = cached(0, PROMPT + [1, 2, 3], kept_logits=True)
    mine.logits_len = 40  # logits kept after the prompt; 3 generated tokens after it
    other = cached(1, [8] * 20, kept_logits=True)
    no_logits = cached(2, PROMPT)
    busy = running(3, PROMPT, 8)
    scheduler = Scheduler([mine, other, no_logits, busy, cached(4, [])], BLOCK)
    keep = [(s.seq, n) for s, n in scheduler.keep_for_call({tuple(PROMPT)})]
    assert keep == [(0, 40), (1, None), (2, None)]
    mine.cut(40)
    assert mine.tokens == PROMPT and mine.canon == 40 and mine.logits is not None


def test_idle_slots_with_tokens_are_evicted_first_and_the_longest_job_fails() -> None:
    slots = [running(0, PROMPT, 16), cached(1, [1] * 5), cached(2, []), running(3, PROMPT, 24)]
    scheduler = Scheduler(slots, BLOCK)
    assert [s.seq for s in scheduler.idle_cached()] == [1]
    assert scheduler.longest_running().seq == 3


def test_steps_order_slots_by_request_and_sample() -> None:
    a, b, c = running(0, PROMPT, 40), running(1, PROMPT, 40), running(2, PROMPT, 8)
    a.job, b.job, c.job = job(PROMPT, 2, 1), job(PROMPT, 0, 0), job(PROMPT, 1, 0)
    a.next_token, b.next_token = 5, 6
    scheduler = Scheduler([a, b, c], BLOCK)
    assert [s.seq for s in scheduler.generating()] == [1, 0]
    assert [s.seq for s in scheduler.prefilling()] == [2]


# ---------------------------------------------------------------- finishing


def test_end_of_generation_stops() -> None:
    assert finish_reason(job(PROMPT, max_tokens=10), eog=True, n_past=41, n_ctx=100) == "stop"


def test_a_stop_string_stops() -> None:
    j = job(PROMPT, max_tokens=10, stop=("END",))
    j.out_bytes += b"the EN"
    j.out_ids += [1, 2]
    assert finish_reason(j, eog=False, n_past=42, n_ctx=100) is None
    j.out_bytes += b"D"
    j.out_ids.append(3)
    assert finish_reason(j, eog=False, n_past=43, n_ctx=100) == "stop"


def test_a_stop_string_is_looked_for_in_the_last_256_bytes() -> None:
    j = job(PROMPT, max_tokens=1000, stop=("END",))
    j.out_bytes += b"END" + b"x" * 256
    j.out_ids += [1] * 100
    assert finish_reason(j, eog=False, n_past=141, n_ctx=1000) is None


def test_the_length_limit_and_a_full_context_end_with_length() -> None:
    j = job(PROMPT, max_tokens=3)
    j.out_ids += [1, 2]
    assert finish_reason(j, eog=False, n_past=42, n_ctx=100) is None
    j.out_ids.append(3)
    assert finish_reason(j, eog=False, n_past=43, n_ctx=100) == "length"
    k = job(PROMPT, max_tokens=50)
    k.out_ids += [1]
    assert finish_reason(k, eog=False, n_past=98, n_ctx=100) is None
    assert finish_reason(k, eog=False, n_past=99, n_ctx=100) == "length"


# ---------------------------------------------------------------- reads split at their bounds


def test_a_split_read_is_decoded_in_blocks_from_each_segment_start() -> None:
    assert block_starts(10, (), 4) == [0, 4, 8]
    assert block_starts(10, (3, 7), 4) == [0, 3, 7]
    assert block_starts(12, (5,), 4) == [0, 4, 5, 9]
    assert block_starts(6, (6, 9), 4) == [0, 4]  # bounds at or past the end split nothing
    walk, pos = [], 0
    while pos < 12:
        walk.append(next_block(pos, 12, (5,), 4))
        pos += walk[-1]
    assert walk == [4, 1, 4, 3]


def test_a_held_prompt_gives_only_what_a_fresh_decode_would_hold() -> None:
    held = [1, 2, 3, 4, 5, 6, 7, 8]
    # same bounds below the split: the common prefix up to the last shared block start
    assert shared_start(held, (3,), [1, 2, 3, 4, 5, 9, 9, 9], (3,), 2) == 5
    # the bound below differs: the blocks after it were cut elsewhere, only the first segment counts
    assert shared_start(held, (3,), [1, 2, 3, 4, 5, 9, 9, 9], (4,), 2) == 2
    # a whole held prompt whose end is a block start of the new one
    assert shared_start([1, 2, 3, 4], (), [1, 2, 3, 4, 5], (), 2) == 4
    # never the prompt's last token: its logits must be computed
    assert shared_start(held, (), held, (), 4) == 4
    assert shared_start([], (), held, (3,), 2) == 0


def test_the_prefix_store_keys_by_tokens_and_bounds_and_drops_the_least_used() -> None:
    store = PrefixStore(capacity=10)
    prompt, bounds = [1, 2, 3, 4, 5, 6], (2, 4)
    store.put(PrefixStore.key(prompt, bounds, 2), "two", 4)
    store.put(PrefixStore.key(prompt, bounds, 4), "four", 4)
    assert store.longest(prompt, bounds) == (4, "four")
    assert store.longest([1, 2, 3, 9, 9, 9], bounds) == (2, "two")  # shares only the first segment
    assert store.longest(prompt, (1, 2, 4)) == (0, None)  # cut elsewhere below: nothing matches
    assert store.longest(prompt[:4], bounds) == (2, "two")  # a bound at the prompt's end is not used
    store.longest(prompt[:3], bounds)  # "two" used last
    store.put(PrefixStore.key([7, 7, 7], (2,), 2), "other", 4)  # over capacity: "four" goes
    assert len(store) == 2 and store.size == 8
    assert store.longest(prompt, bounds) == (2, "two")
    store.put(("too", "big"), "x", 11)
    assert len(store) == 2
