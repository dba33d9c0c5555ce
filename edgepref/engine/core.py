"""The local engine: continuous batching over llama.cpp's low-level API.

A fixed number of slots (llama.cpp sequence ids) decode together: every step builds one
llama_batch holding the next token of each generating slot plus prompt chunks of slots that are
still prefilling, and calls llama_decode once. New requests take a slot as soon as one frees.

Prompt reuse: every slot remembers the tokens its sequence holds in the KV cache. A new prompt
copies the longest matching prefix from any sequence (llama_memory_seq_cp on a unified KV cache
costs no extra memory) and decodes only the rest. So n samples of one prompt decode it once, and
requests that share a long system prompt or judge rubric decode it once per run.

Determinism. On CPUs (and GPUs) llama.cpp's kernels round differently for different batch
shapes: the same token's logits differ in the last bits when it is decoded alone, in a chunk of
another size, or beside other sequences' tokens; at temperature 1 that changes the draw. So the
engine computes every prompt one way, whatever the cache holds:
  - a prompt is decoded from position 0 in fixed blocks of `prompt_block` tokens, each block in a
    llama_decode call of its own (no other sequence's tokens beside it);
  - a cached prefix is reused only up to a block boundary, and only the part that was itself
    decoded as prompt blocks (never generated tokens), so reused KV is exactly what a fresh
    decode would have produced;
  - the logits of a prompt's last position are kept with its sequence; a request whose whole
    prompt is cached samples its first token from those very logits (no decode at all);
  - generating slots decode together, their rows ordered by (request, sample), not by slot;
  - each `chat` call starts from a cache holding only whole prompts of its own requests, so
    earlier requests cannot move where its tokens land or widen the attention window.
Hence the same request with the same seed gives the same text whatever the cache state, as long
as it generates beside the same requests (the same `chat` call contents). Text sampled beside
different concurrent requests, or on another machine or llama.cpp build, may differ.

Reads (requests that generate nothing and only read the next-token distribution after their
prompt: a pairwise verdict's label log-odds) go further: they run before the call's generation,
one at a time, on a KV cache that holds nothing else, each prompt decoded from position 0 in
blocks of `read_block` tokens (see `_read_alone`). Their numbers depend on the prompt alone, not
on the call, so a verdict is the same in a fresh run, a resumed run and an eval-judge run.

Knows nothing of instructions, ratings or pairs: messages + sampling + grammar in, text out.
"""

from __future__ import annotations

import os
import time
from collections import deque
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..backend import ChatRequest, ChatResult, ProgressCallback
from ..errors import EngineError
from ..logprobs import choice_logprobs, distribution
from .jobs import Call, Job, Slot, common_prefix, find_stop, reusable
from .template import ChatTemplate
from .handles import (
    LlamaBatch,
    LlamaContext,
    LlamaModel,
    LlamaSampler,
    available_memory,
    default_gpu_layers,
    default_use_extra_buffers,
)

# A request waits for a slot that is still prefilling a prompt it shares, rather than decoding
# that prefix itself, when the wait saves at least this many prompt tokens.
_MIN_SHARED_PREFIX = 16

# Prompts are decoded in blocks of this many tokens (see "Determinism" above); a cached prefix is
# reused up to a multiple of it. Smaller blocks reuse more of a shared prefix and cost one more
# llama_decode call per block.
DEFAULT_PROMPT_BLOCK = 32

# Reads are decoded alone in blocks of this many tokens: on 2 CPU cores 512-token blocks decode
# prompts faster than smaller ones (README, "Labels you can trust": seconds per pair by path).
DEFAULT_READ_BLOCK = 512


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0  # prompt tokens of all samples, as if each decoded its own prompt
    prompt_tokens_cached: int = 0  # of those, reused from the KV cache instead of decoded
    completion_tokens: int = 0
    decode_calls: int = 0
    batch_halvings: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class Engine:
    """A GGUF model loaded in llama.cpp, serving batches of chat requests.

    n_ctx is the context of one slot; the KV cache holds n_slots * n_ctx tokens in all.
    n_gpu_layers None offloads every layer when llama.cpp was built with a GPU backend (CUDA,
    Metal), else runs on the CPU. flash_attn None lets llama.cpp decide.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        n_ctx: int = 2048,
        n_slots: int = 8,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        seed: int = 0,
        models_file: str | os.PathLike | None = None,
        check_memory: bool = True,
        flash_attn: bool | None = None,
        prompt_block: int = DEFAULT_PROMPT_BLOCK,
        read_block: int = DEFAULT_READ_BLOCK,
        reads_alone: bool = True,
    ):
        from ..modelfiles import resolve_model_path
        from ..registry import load_registry

        self.name = str(model)
        path = resolve_model_path(model, load_registry(models_file))
        if n_slots < 1 or n_ctx < 16:
            raise EngineError(f"n_slots must be >= 1 and n_ctx >= 16 (got {n_slots}, {n_ctx})")
        if not 1 <= prompt_block <= n_batch:
            raise EngineError(
                f"prompt_block must be between 1 and n_batch={n_batch} (got {prompt_block})",
                "set [engine] prompt_block in the pipeline config to a value in that range",
            )
        if not 1 <= read_block <= n_batch:
            raise EngineError(
                f"read_block must be between 1 and n_batch={n_batch} (got {read_block})",
                "set [engine] read_block in the pipeline config to a value in that range",
            )
        self.prompt_block = prompt_block
        self.read_block = read_block
        # False: reads are scheduled like any request, beside the others (a noise measurement)
        self.reads_alone = reads_alone
        if n_gpu_layers is None:
            n_gpu_layers = default_gpu_layers()
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads or os.cpu_count() or 1
        self.seed = seed
        # Handles close in the reverse order of their opening (batch, context, model): a context
        # never outlives its model, whatever fails halfway through __init__.
        self._handles = ExitStack()
        with self._handles:
            self.model = self._handles.enter_context(
                closing(LlamaModel(Path(path), n_gpu_layers, default_use_extra_buffers()))
            )
            self.n_ctx = min(n_ctx, self.model.n_ctx_train)
            self.n_slots = n_slots
            if check_memory:
                self._check_kv_budget()
            self.ctx = self._handles.enter_context(closing(
                LlamaContext(self.model, self.n_ctx * n_slots, n_batch, n_slots, self.n_threads, flash_attn)
            ))
            self.batch = self._handles.enter_context(closing(LlamaBatch(n_batch)))
            self._handles = self._handles.pop_all()  # opened: kept open until close()
        self.n_batch = n_batch
        self.template = ChatTemplate(self.model)
        self.slots = [Slot(seq=i) for i in range(n_slots)]
        self.stats = EngineStats()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        for slot in getattr(self, "slots", []):
            if slot.sampler:
                slot.sampler.close()
                slot.sampler = None
        handles = getattr(self, "_handles", None)
        if handles is not None:
            handles.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _check_kv_budget(self) -> None:
        need = self.model.kv_bytes_per_token * self.n_ctx * self.n_slots
        avail = available_memory()
        if avail is not None and need > 0.7 * avail:
            raise EngineError(
                f"the KV cache for {self.n_slots} slots x {self.n_ctx} tokens needs "
                f"{need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB of memory is free",
                f"lower --slots (now {self.n_slots}) or --n-ctx (now {self.n_ctx})",
            )

    # ------------------------------------------------------------------ helpers

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.template.tokens(messages))

    @property
    def read_path(self) -> str:
        """The numerical path of reads, as recorded with verdicts: 'alone-512' (each prompt alone
        in 512-token blocks) or 'batched-32x16' (beside other requests, 32-token blocks, 16 slots)."""
        if self.reads_alone:
            return f"alone-{self.read_block}"
        return f"batched-{self.prompt_block}x{self.n_slots}"

    # ------------------------------------------------------------------ the loop

    def chat(
        self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None = None
    ) -> list[ChatResult]:
        """Run all requests to completion; results come back in request order.

        A request that cannot run (prompt too long, bad grammar) fails alone: its result has
        `error` set and finish_reason "error"; the others go on.
        """
        call = Call(requests, on_result)
        for i, req in enumerate(requests):
            try:
                prompt, trace, choices = self._tokens(req)
            except EngineError as exc:
                call.fail(i, [], exc.message)
                continue
            problem = self._too_long(prompt)
            if problem:
                call.fail(i, prompt, problem)
                continue
            base_seed = req.sampling.seed if req.sampling.seed is not None else self.seed
            call.enqueue(i, prompt, base_seed, trace, choices)

        if self.reads_alone:
            reads = [job for job in call.queue if job.request.sampling.max_tokens <= 0]
            if reads:
                call.queue = deque(job for job in call.queue if job.request.sampling.max_tokens > 0)
                self._read_alone(call, reads)
        self._keep_only({tuple(job.prompt) for job in call.queue})
        while call.queue or any(s.job for s in self.slots):
            self._admit(call)
            if not any(s.job for s in self.slots):
                continue
            self._step(call)

        self.stats.requests += len(requests)
        self.stats.seconds += time.perf_counter() - call.progress.start
        return call.results  # type: ignore[return-value]

    def _tokens(self, req: ChatRequest) -> tuple[list[int], dict[int, str], dict[int, str]]:
        """A request's prompt tokens and the first tokens of its traced and choice candidates."""
        prompt = self.template.tokens(req.messages, req.prefill)
        trace = self.template.candidate_tokens(req.trace_choices)
        choices = self.template.candidate_tokens(req.choices, spellings=True)
        return prompt, trace, choices

    def _too_long(self, prompt: list[int]) -> str | None:
        """Why a prompt cannot run in one slot, or None."""
        if len(prompt) + 1 > self.n_ctx:
            return f"prompt is {len(prompt)} tokens; a slot holds {self.n_ctx} (raise --n-ctx, or shorten the input)"
        return None

    def _job_done(self, call: Call, slot: Slot) -> None:
        """The slot's job has finished: its text is final and the slot is free, unless the
        request asks for a follow-up turn, which then continues in this slot."""
        job = slot.release()
        self.stats.completion_tokens += len(job.out_ids)
        call.job_finished(job)
        if job.request.then is not None and job.error is None and job.request.n <= 1:
            result = job.follows.follow_up if job.follows is not None else call.results[job.req_index]
            self._continue(call, slot, job, result)

    def _continue(self, call: Call, slot: Slot, parent: Job, result: ChatResult) -> None:
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
            follow.prompt, follow.trace_tokens, follow.choice_tokens = self._tokens(req)
            follow.error = self._too_long(follow.prompt)
        except EngineError as exc:
            follow.error = exc.message
        if follow.error:
            follow.finish = "error"
            call.job_finished(follow)
            return
        follow.seed = req.sampling.seed if req.sampling.seed is not None else self.seed
        call.job_started(follow)
        canon = slot.canon
        # keep at least the last prompt token to decode: its logits start the answer
        common = min(common_prefix(slot.tokens, follow.prompt), len(follow.prompt) - 1)
        self._assign(slot, follow, slot, common)
        slot.canon = min(canon, common)  # generated tokens' KV is never offered to other prompts
        if follow.finish:  # failed on admission (bad grammar)
            self._job_done(call, slot)

    def _read_alone(self, call: Call, jobs: list[Job]) -> None:
        """Each read on one fixed numerical path: the KV cache is emptied, then every prompt is
        decoded in sequence 0 alone, from position 0, in blocks of `read_block` tokens (each
        block one llama_decode), and its choice log-probabilities are read at its last position.
        A prompt reuses the whole leading blocks it shares with the one before it: they were
        decoded the same way into the same cells of an otherwise empty cache, so their KV is
        what a fresh decode computes, and so is the attention window of the blocks after them."""
        for s in self.slots:
            self._forget(s)
        slot, block = self.slots[0], self.read_block
        last: Job | None = None
        for job in jobs:
            call.job_started(job)
            if last is not None and job.prompt == last.prompt:  # another sample of the same read
                job.choice_logprobs, job.cached, job.finish = last.choice_logprobs, len(job.prompt), "stop"
                self.stats.prompt_tokens += len(job.prompt)
                self.stats.prompt_tokens_cached += len(job.prompt)
                call.job_finished(job)
                continue
            keep = reusable(slot.tokens, len(slot.tokens), -1, job.prompt, block)
            self.ctx.seq_rm(slot.seq, keep, -1)
            del slot.tokens[keep:]
            job.cached = keep
            self.stats.prompt_tokens += len(job.prompt)
            self.stats.prompt_tokens_cached += keep
            while slot.n_past < len(job.prompt):
                n = min(len(job.prompt) - slot.n_past, block - slot.n_past % block)
                chunk = job.prompt[slot.n_past : slot.n_past + n]
                last = slot.n_past + n == len(job.prompt)
                index = self._decode([(slot, t, last and k == n - 1) for k, t in enumerate(chunk)])
                if index is None:  # cannot happen: the cache holds this prompt alone, < n_ctx
                    raise EngineError("the KV cache has no room for one prompt (raise --n-ctx)")
                slot.tokens.extend(chunk)
            logits = self.ctx.logits(index[-1], self.model.n_vocab)
            job.choice_logprobs = choice_logprobs(logits, job.choice_tokens) if job.choice_tokens else None
            job.finish = "stop"
            call.job_finished(job)
            last = job
        self._forget(slot)

    def _keep_only(self, prompts: set[tuple[int, ...]]) -> None:
        """Start a call with a cache that holds nothing but whole prompts of this call's
        requests (with their kept logits), so that what ran before cannot change where this
        call's tokens land in the KV cache, nor the attention window llama.cpp computes over:
        CPU attention kernels split that window by its size, which changes the rounding."""
        for s in self.slots:
            if s.job is not None or not s.tokens:
                continue
            if s.logits is not None and tuple(s.tokens[: s.logits_len]) in prompts:
                self.ctx.seq_rm(s.seq, s.logits_len, -1)
                del s.tokens[s.logits_len :]
                s.canon = min(s.canon, s.logits_len)
            else:
                self._forget(s)

    def _forget(self, s: Slot) -> None:
        self.ctx.seq_rm(s.seq, -1, -1)
        s.tokens, s.canon, s.logits, s.logits_len = [], 0, None, -1

    def _reusable(self, src: Slot, prompt: list[int], with_pending: bool = False) -> int:
        if with_pending:  # what src will hold once its prompt is decoded
            tokens = src.tokens + src.pending
            return reusable(tokens, len(tokens), len(tokens), prompt, self.prompt_block)
        return reusable(src.tokens, src.canon, src.logits_len, prompt, self.prompt_block)

    def _admit(self, call: Call) -> None:
        queue = call.queue
        free = [s for s in self.slots if s.job is None]
        if not free or not queue:
            return
        deferred: list[Job] = []
        # Look a bounded way down the queue so that a long queue of jobs waiting for one shared
        # prefix does not cost a full scan every step.
        while free and queue and len(deferred) < 2 * self.n_slots:
            job = queue.popleft()
            # Would another slot that is still prefilling give us a longer prefix soon?
            best_src, best_len = None, 0
            for s in self.slots:
                n = self._reusable(s, job.prompt)
                if n > best_len or (n == best_len and s in free and best_src not in free):
                    best_src, best_len = s, n
            waiting_for = max(
                (self._reusable(s, job.prompt, with_pending=True) for s in self.slots if s.job and s.pending),
                default=0,
            )
            gain = waiting_for - best_len
            if gain >= _MIN_SHARED_PREFIX or (gain > 0 and waiting_for >= len(job.prompt) - 1):
                deferred.append(job)
                continue
            slot = best_src if best_src in free else self._pick_free(free)
            free.remove(slot)
            call.job_started(job)
            self._assign(slot, job, best_src, best_len)
            if slot.job is not None and not slot.job.finish and not slot.pending:
                # the whole prompt was cached: sample from the logits kept with it
                self._sample(call, slot, slot.logits)
            if slot.job is not None and slot.job.finish:  # failed on admission (bad grammar)
                self._job_done(call, slot)
        queue.extendleft(reversed(deferred))

    @staticmethod
    def _pick_free(free: list[Slot]) -> Slot:
        # Prefer a slot whose cached tokens are worth least (fewest), keeping long prefixes alive.
        return min(free, key=lambda s: s.n_past)

    def _assign(self, slot: Slot, job: Job, src: Slot | None, common: int) -> None:
        slot.job = job
        req = job.request
        try:
            slot.sampler = LlamaSampler(self.model, req.sampling, job.seed, req.grammar)
        except EngineError as exc:
            job.error, job.finish = exc.message, "error"
            return
        logits = src.logits if src is not None and common == len(job.prompt) else None
        if src is slot:
            self.ctx.seq_rm(slot.seq, common, -1)
        else:
            self.ctx.seq_rm(slot.seq, -1, -1)
            if src is not None and common > 0:
                self.ctx.share_prefix(src.seq, slot.seq, common)
        job.cached = common
        slot.tokens = job.prompt[:common]
        slot.canon = common
        slot.pending = job.prompt[common:]
        slot.logits, slot.logits_len = (logits, common) if logits is not None else (None, -1)
        self.stats.prompt_tokens += len(job.prompt)
        self.stats.prompt_tokens_cached += common

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

    def _fail_longest(self, call: Call) -> None:
        victim = max((s for s in self.slots if s.job), key=lambda s: s.n_past)
        victim.job.error = "the KV cache is full (lower --slots or raise --n-ctx)"
        victim.job.finish = "error"
        self._forget(victim)
        self._job_done(call, victim)

    def _step(self, call: Call) -> None:
        # 1. One token for every generating slot, rows in (request, sample) order. With no room
        #    in the KV cache, halve the batch (as llama.cpp's parallel example does) and only
        #    then fail the longest request.
        groups = [sorted((s for s in self.slots if s.job and s.next_token is not None), key=lambda s: s.job.key)]
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
                self._sample(call, s, idx)
        # 2. Prompt blocks, each decoded alone, at most n_batch // prompt_block of them per step
        #    (a short last block counts as a whole one).
        budget = self.n_batch
        for s in sorted((s for s in self.slots if s.job and s.pending), key=lambda s: s.job.key):
            while s.job and s.pending and budget > 0:
                if not self._prefill_block(call, s):
                    return
                budget -= self.prompt_block
            if budget <= 0:
                break

    def _prefill_block(self, call: Call, s: Slot) -> bool:
        """Decode the slot's next prompt block; False if the KV cache is full (a job failed)."""
        n = min(len(s.pending), self.prompt_block - s.n_past % self.prompt_block)
        exact = s.canon == s.n_past
        while True:
            last = n == len(s.pending)
            index = self._decode([(s, t, last and k == n - 1) for k, t in enumerate(s.pending[:n])])
            if index is not None:
                break
            if n == 1:
                self._fail_longest(call)
                return False
            # No room for the block: decode it in halves. The KV then differs from a fresh
            # block-wise decode, so it is not offered for reuse.
            n, exact = n // 2, False
            self.stats.batch_halvings += 1
        s.tokens.extend(s.pending[:n])
        s.pending = s.pending[n:]
        if exact:
            s.canon = len(s.tokens)
        if last:
            logits = self.ctx.logits(index[-1], self.model.n_vocab).copy()
            if exact:
                s.logits, s.logits_len = logits, len(s.tokens)
            self._sample(call, s, logits)
        return True

    def _evict_idle(self) -> bool:
        evicted = False
        for s in self.slots:
            if s.job is None and s.tokens:
                self._forget(s)
                evicted = True
        return evicted

    def _sample(self, call: Call, slot: Slot, source: np.ndarray | int) -> None:
        """Draw the slot's next token from kept logits (an array: a prompt's last position)
        or from a batch row of the last decode (an int: a generation step)."""
        job = slot.job
        req = job.request
        if isinstance(source, np.ndarray):
            logits = source
            if job.choice_tokens and job.choice_logprobs is None:
                job.choice_logprobs = choice_logprobs(logits, job.choice_tokens)
            if req.sampling.max_tokens <= 0:
                job.finish = "stop"
                self._job_done(call, slot)
                return
            tok = slot.sampler.sample(logits)
        else:
            tok = slot.sampler.sample_at(self.ctx, source, self.model.n_vocab)
            logits = None
        if self.model.is_eog(tok):
            job.finish = "stop"
            self._job_done(call, slot)
            return
        if tok in job.trace_tokens:
            if logits is None:
                logits = self.ctx.logits(source, self.model.n_vocab)
            offset = len(bytes(job.out_bytes).decode("utf-8", "ignore"))
            job.trace.append((offset, distribution(logits, job.trace_tokens)))
        job.out_bytes += self.model.piece(tok)
        job.out_ids.append(tok)
        if req.sampling.stop and find_stop(
            bytes(job.out_bytes[-256:]).decode("utf-8", "ignore"), req.sampling.stop
        ) is not None:
            job.finish = "stop"
            self._job_done(call, slot)
        elif len(job.out_ids) >= req.sampling.max_tokens or slot.n_past + 1 >= self.n_ctx:
            job.finish = "length"
            self._job_done(call, slot)
        else:
            slot.next_token = tok
