"""Continuous batching: how one `Engine.chat` call's jobs move through the slots (see
edgepref.backends.engine.core for the design: prompt blocks, prefix reuse, reads alone, determinism).

`Batcher` applies the scheduler's decisions (edgepref.backends.engine.scheduler) with llama.cpp calls
through the handles of edgepref.backends.engine.handles: it copies and removes KV cells, decodes prompt
blocks and generation steps, and draws tokens.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..base import ChatRequest, ChatResult
from ...core.errors import EngineError
from ..logprobs import choice_logprobs, distribution
from .handles import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler
from .jobs import Call, EngineStats, Job, Slot, utf8_text
from .prefixes import next_block
from .scheduler import Scheduler, block_len, common_prefix, finish_reason
from .template import ChatTemplate

class Batcher:
    """Runs chat calls on the engine's model, context and batch, which the engine opens and
    closes: `enqueue` a call's jobs, then `run` them (the engine decodes reads first, alone,
with `forget` and `read_prompt`).
    Owns the sampler of each running job (`samplers`, by slot sequence id): opened when the job
    takes its slot, closed when it leaves it, and by `close()` for jobs cut short. Counts its
    work in the engine's `stats`."""

    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        batch: LlamaBatch,
        template: ChatTemplate,
        stats: EngineStats,
        *,
        n_slots: int,
        n_ctx: int,
        n_batch: int,
        prompt_block: int,
        read_block: int,
        seed: int,
        split_reads: bool = True,
    ):
        self.model, self.ctx, self.batch, self.template, self.stats = model, ctx, batch, template, stats
        self.n_ctx, self.n_batch, self.seed = n_ctx, n_batch, seed
        self.prompt_block, self.read_block = prompt_block, read_block
        self.split_reads = split_reads  # reads with marks are decoded segment by segment (prefixes.py)
        self.slots = [Slot(seq=i) for i in range(n_slots)]
        self.scheduler = Scheduler(self.slots, prompt_block)
        self.samplers: dict[int, LlamaSampler] = {}

    def close(self) -> None:
        while self.samplers:
            self.samplers.popitem()[1].close()

    # ------------------------------------------------------------------ a call

    def enqueue(self, call: Call) -> None:
        """Queue a job per sample of each request; a request that cannot run fails at once."""
        for i, req in enumerate(call.requests):
            try:
                prompt, bounds, trace, choices = self._tokens(req)
            except EngineError as exc:
                call.fail(i, [], exc.message)
                continue
            problem = self._too_long(prompt)
            if problem:
                call.fail(i, prompt, problem)
                continue
            call.enqueue(i, prompt, self._seed_of(req), trace, choices, bounds)

    def run(self, call: Call) -> None:
        """Run the call's queued jobs to completion, on a cache that holds only their prompts."""
        self._keep_only({tuple(job.prompt) for job in call.queue})
        while call.queue or any(s.job for s in self.slots):
            self._admit(call)
            if any(s.job for s in self.slots):
                self._step(call)

    def _tokens(self, req: ChatRequest) -> tuple[list[int], tuple[int, ...], dict[int, str], dict[int, str]]:
        """A request's prompt tokens, the bounds a split read decodes it by (a read's marks, when
        reads are split), and the first tokens of its traced and choice candidates."""
        split = self.split_reads and req.sampling.max_tokens <= 0
        prompt, bounds = self.template.prompt(req.messages, req.prefill, req.marks if split else ())
        trace = self.template.candidate_tokens(req.trace_choices)
        choices = self.template.candidate_tokens(req.choices, spellings=True)
        return prompt, bounds, trace, choices

    def _seed_of(self, req: ChatRequest) -> int:
        return req.sampling.seed if req.sampling.seed is not None else self.seed

    def _too_long(self, prompt: list[int]) -> str | None:
        """Why a prompt cannot run in one slot, or None."""
        if len(prompt) + 1 > self.n_ctx:
            return f"prompt is {len(prompt)} tokens; a slot holds {self.n_ctx} (raise --n-ctx, or shorten the input)"
        return None

    # ------------------------------------------------------------------ the KV cache

    def read_prompt(self, slot: Slot, prompt: list[int], keep: int, bounds: tuple[int, ...] = (),
                    at_bound: Callable[[int], None] | None = None) -> np.ndarray:
        """Keep the slot's first `keep` tokens and decode the rest of `prompt` segment by
        segment (split at `bounds`), each segment in blocks of `read_block` tokens from its start,
        each block in a llama_decode of its own; `at_bound(b)` runs when the slot holds exactly
        the first b tokens, b a bound. Returns the logits after the prompt."""
        self.ctx.seq_rm(slot.seq, keep, -1)
        slot.cut(keep)
        while True:
            n = next_block(slot.n_past, len(prompt), bounds, self.read_block)
            ends = slot.n_past + n == len(prompt)
            decoded, logits = self._decode_block(slot, prompt[slot.n_past : slot.n_past + n], ends)
            if not decoded:  # cannot happen: the cache holds this prompt alone, < n_ctx
                raise EngineError("the KV cache has no room for one prompt (raise --n-ctx)")
            if ends:
                return logits
            if at_bound is not None and slot.n_past in bounds:
                at_bound(slot.n_past)

    def clear(self) -> None:
        """Empty the KV cache: every slot holds nothing, and the next tokens land from cell 0."""
        self.ctx.clear()
        for s in self.slots:
            s.forget()

    def _keep_only(self, prompts: set[tuple[int, ...]]) -> None:
        """Start a call with a cache that holds nothing but whole prompts of this call's
        requests (with their kept logits), so that what ran before cannot change where this
        call's tokens land in the KV cache, nor the attention window llama.cpp computes over:
        CPU attention kernels split that window by its size, which changes the rounding."""
        for s, keep in self.scheduler.keep_for_call(prompts):
            if keep is None:
                self.forget(s)
            else:
                self.ctx.seq_rm(s.seq, keep, -1)
                s.cut(keep)

    def forget(self, s: Slot) -> None:
        """Empty the slot's sequence in the KV cache."""
        self.ctx.seq_rm(s.seq, -1, -1)
        s.forget()

    def _evict_idle(self) -> bool:
        """Forget every idle slot's cached tokens; False if there were none."""
        idle = self.scheduler.idle_cached()
        for s in idle:
            self.forget(s)
        return bool(idle)

    def _decode(self, entries: list[tuple[Slot, int, bool]]) -> list[int] | None:
        """Decode (slot, token, want_logits) entries in one llama_decode, each at its slot's
        next positions; returns each entry's batch index, or None if the KV cache has no room
        even after dropping idle cached sequences."""
        while True:
            self.batch.clear()
            pos: dict[int, int] = {}
            index = []
            for slot, tok, want in entries:
                p = pos.get(slot.seq, slot.n_past)
                index.append(self.batch.add(tok, p, slot.seq, want))
                pos[slot.seq] = p + 1
            code = self.ctx.decode(self.batch)
            self.stats.decode_calls += 1
            if code == 0:
                return index
            if not self._evict_idle():
                return None

    def _decode_block(self, slot: Slot, chunk: list[int], ends_prompt: bool) -> tuple[bool, np.ndarray | None]:
        """Decode `chunk`, the slot's next prompt tokens, in one llama_decode of its own and add
        them to slot.tokens. Returns (False, None) if the KV cache had no room, else True and
        the logits after the chunk when it ends the prompt (a copy, to keep), else None."""
        index = self._decode([(slot, t, ends_prompt and k == len(chunk) - 1) for k, t in enumerate(chunk)])
        if index is None:
            return False, None
        slot.tokens.extend(chunk)
        return True, self.ctx.logits(index[-1], self.model.n_vocab).copy() if ends_prompt else None

    # ------------------------------------------------------------------ jobs in slots

    def _admit(self, call: Call) -> None:
        """Start the queued jobs the scheduler places; a job whose whole prompt is cached draws
        its first token at once from the logits kept with it."""
        for job, place in self.scheduler.admissions(call.queue):
            slot = place.slot
            call.job_started(job)
            self._assign(slot, job, place.source, place.reuse)
            if slot.job is not None and not slot.job.finish and not slot.pending:
                self._draw_token(call, slot, slot.logits)
            if slot.job is not None and slot.job.finish:  # failed on admission (bad grammar)
                self._job_done(call, slot)

    def _assign(self, slot: Slot, job: Job, src: Slot | None, common: int) -> None:
        """Make `slot` run `job`, its sequence holding the first `common` prompt tokens copied
        from `src` (or kept, when src is slot). A bad grammar fails the job, changing no KV."""
        slot.job = job
        req = job.request
        try:
            self.samplers[slot.seq] = LlamaSampler(self.model, req.sampling, job.seed, req.grammar)
        except EngineError as exc:
            job.error, job.finish = exc.message, "error"
            return
        if src is slot:
            self.ctx.seq_rm(slot.seq, common, -1)
        else:
            self.ctx.seq_rm(slot.seq, -1, -1)
            if src is not None and common > 0:
                self.ctx.share_prefix(src.seq, slot.seq, common)
        slot.hold(job.prompt, common, src)
        job.cached = common
        self.stats.prompt_tokens += len(job.prompt)
        self.stats.prompt_tokens_cached += common

    def _job_done(self, call: Call, slot: Slot) -> None:
        """The slot's job has finished: its text is final and the slot is free, unless the
        request asks for a follow-up turn, which then continues in this slot."""
        sampler = self.samplers.pop(slot.seq, None)
        if sampler is not None:
            sampler.close()
        job = slot.release()
        self.stats.completion_tokens += len(job.out_ids)
        call.job_finished(job)
        if job.request.then is not None and job.error is None and job.request.n <= 1:
            result = job.follows.follow_up if job.follows is not None else call.results[job.req_index]
            self._follow_up(call, slot, job, result)

    def _follow_up(self, call: Call, slot: Slot, parent: Job, result: ChatResult) -> None:
        """Run the follow-up turn of a finished request (ChatRequest.then) in the slot that holds
        its conversation: the KV of the prompt and of the generated answer stay, and only the
        tokens after their common prefix with the new prompt are decoded. The generated tokens'
        KV was computed in generation steps, not in prompt blocks, so the follow-up's numbers
        can differ in the last bits from a fresh decode of the same conversation; it runs at the
        same place in every run of the same call, so a seeded run stays reproducible."""
        req = parent.request.then(parent.text)
        if req is None:
            return
        follow = Job(req, parent.req_index, parent.sample, [], 0, {}, {}, follows=result)
        try:
            follow.prompt, _, follow.trace_tokens, follow.choice_tokens = self._tokens(req)  # runs in its slot, never split
            follow.error = self._too_long(follow.prompt)
        except EngineError as exc:
            follow.error = exc.message
        if follow.error:
            follow.finish = "error"
            call.job_finished(follow)
            return
        follow.seed = self._seed_of(req)
        call.job_started(follow)
        canon = slot.canon
        # keep at least the last prompt token to decode: its logits start the answer
        common = min(common_prefix(slot.tokens, follow.prompt), len(follow.prompt) - 1)
        self._assign(slot, follow, slot, common)
        slot.canon = min(canon, common)  # generated tokens' KV is never offered to other prompts
        if follow.finish:  # failed on admission (bad grammar)
            self._job_done(call, slot)

    def _fail_longest(self, call: Call) -> None:
        victim = self.scheduler.longest_running()
        victim.job.error = "the KV cache is full (lower --slots or raise --n-ctx)"
        victim.job.finish = "error"
        self.forget(victim)
        self._job_done(call, victim)

    # ------------------------------------------------------------------ a step

    def _step(self, call: Call) -> None:
        # 1. One token for every generating slot, rows in (request, sample) order. With no room
        #    in the KV cache, halve the batch (as llama.cpp's parallel example does) and only
        #    then fail the longest request.
        groups = [self.scheduler.generating()]
        while groups:
            gen = [s for s in groups.pop() if s.job and s.next_token is not None]
            if not gen:
                continue
            index = self._decode([(s, s.next_token, True) for s in gen])
            if index is None:
                if len(gen) > 1:
                    self.stats.batch_halvings += 1
                    groups += [gen[len(gen) // 2 :], gen[: len(gen) // 2]]
                else:
                    self._fail_longest(call)
                    groups.append(gen)
                continue
            for s, idx in zip(gen, index):
                s.tokens.append(s.next_token)
                s.next_token = None
                self._draw_token(call, s, idx)
        # 2. Prompt blocks, each decoded alone, at most n_batch // prompt_block of them per step
        #    (a short last block counts as a whole one).
        budget = self.n_batch
        for s in self.scheduler.prefilling():
            while s.job and s.pending and budget > 0:
                if not self._prefill_block(call, s):
                    return
                budget -= self.prompt_block
            if budget <= 0:
                break

    def _prefill_block(self, call: Call, s: Slot) -> bool:
        """Decode the slot's next prompt block; False if the KV cache is full (a job failed)."""
        n = block_len(s.n_past, len(s.pending), self.prompt_block)
        exact = s.canon == s.n_past
        while True:
            decoded, logits = self._decode_block(s, s.pending[:n], n == len(s.pending))
            if decoded:
                break
            if n == 1:
                self._fail_longest(call)
                return False
            # No room for the block: decode it in halves. The KV then differs from a fresh
            # block-wise decode, so it is not offered for reuse.
            n, exact = n // 2, False
            self.stats.batch_halvings += 1
        s.pending = s.pending[n:]
        if exact:
            s.canon = len(s.tokens)
        if logits is not None:
            if exact:
                s.logits, s.logits_len = logits, len(s.tokens)
            self._draw_token(call, s, logits)
        return True

    def _draw_token(self, call: Call, slot: Slot, source: np.ndarray | int) -> None:
        """Draw the slot's next token, from kept logits (an array: a prompt's last position) or
        from a batch row of the last decode (an int: a generation step), and add it to the
        job's text, or finish the job (scheduler.finish_reason)."""
        job = slot.job
        sampler = self.samplers[slot.seq]
        logits = source if isinstance(source, np.ndarray) else None
        if logits is not None:
            if job.choice_tokens and job.choice_logprobs is None:
                job.choice_logprobs = choice_logprobs(logits, job.choice_tokens)
            if job.request.sampling.max_tokens <= 0:  # a read: nothing to generate
                job.finish = "stop"
                self._job_done(call, slot)
                return
            tok = sampler.sample(logits)
        else:
            tok = sampler.sample_at(self.ctx, source, self.model.n_vocab)
        eog = self.model.is_eog(tok)
        if not eog:
            if tok in job.trace_tokens:
                row = logits if logits is not None else self.ctx.logits(source, self.model.n_vocab)
                offset = len(utf8_text(job.out_bytes))  # where the text stands, as stored
                job.trace.append((offset, distribution(row, job.trace_tokens)))
            job.out_bytes += self.model.piece(tok)
            job.out_ids.append(tok)
        job.finish = finish_reason(job, eog, slot.n_past, self.n_ctx)
        if job.finish:
            self._job_done(call, slot)
        else:
            slot.next_token = tok
