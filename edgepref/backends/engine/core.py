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
blocks of `read_block` tokens, split at the marks its request carries (see `_read_alone`). Their
numbers depend on the prompt (and its marks) alone, not on the call, so a verdict is the same in
a fresh run, a resumed run and an eval-judge run. The prefixes that end at a mark are saved
and loaded by later reads that share them (prefixes.py): the text a verdict's prompts share
(the instruction, a response shown first) is decoded once per engine, not once per prompt.

Who does what: `Engine` (here) opens and closes the llama.cpp handles and serves calls;
`Batcher` (batching.py) runs each call's jobs through the slots with llama.cpp calls;
`Scheduler` (scheduler.py) decides, in plain Python, where jobs run, what prefix they reuse and
when they finish; prefixes.py, how reads split and which saved prefix they load; jobs.py holds
the plain data (jobs, slots, the call).

Knows nothing of instructions, ratings or pairs: messages + sampling + grammar in, text out.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Sequence

from ..base import ChatRequest, ChatResult, ProgressCallback
from ...core.errors import EngineError
from ..logprobs import choice_logprobs
from .batching import Batcher
from .handles import (
    LlamaBatch, LlamaContext, LlamaModel, available_memory, default_gpu_layers, default_use_extra_buffers)
from .jobs import Call, EngineStats, Job
from .prefixes import PrefixStore, read_path_name, shared_start
from .template import ChatTemplate

# Prompts are decoded in blocks of this many tokens (see "Determinism" above); a cached prefix is
# reused up to a multiple of it. Smaller blocks reuse more of a shared prefix and cost one more
# llama_decode call per block.
DEFAULT_PROMPT_BLOCK = 32

# Reads are decoded alone in blocks of this many tokens: on 2 CPU cores 512-token blocks decode
# prompts faster than smaller ones (README, "Labels you can trust": seconds per pair by path).
DEFAULT_READ_BLOCK = 512

# Sequences decoded together: generation gains 2-3x from batching on CPU (README, "Speed").
DEFAULT_SLOTS = 16


def _check_block(name: str, value: int, n_batch: int) -> None:
    if not 1 <= value <= n_batch:
        raise EngineError(
            f"{name} must be between 1 and n_batch={n_batch} (got {value})",
            f"set [engine] {name} in the pipeline config to a value in that range",
        )


class Engine:
    """A GGUF model loaded in llama.cpp, serving batches of chat requests.

    n_ctx is the context of one slot; the KV cache holds n_slots * n_ctx tokens in all.
    n_gpu_layers None offloads every layer when llama.cpp was built with a GPU backend (CUDA,
    Metal, Vulkan) that sees a device, else runs on the CPU; 0 runs everything on the CPU, the
    batches' matrix products included. flash_attn None lets llama.cpp decide.

    All llama.cpp handles close through one stack, `_handles`: the running jobs' samplers
    (owned by the batcher), then batch, context and model.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        n_ctx: int = 2048,
        n_slots: int = DEFAULT_SLOTS,
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
        split_reads: bool = True,
    ):
        from ...models.modelfiles import resolve_model_path
        from ...models.registry import load_registry

        self.name = str(model)
        path = resolve_model_path(model, load_registry(models_file))
        if n_slots < 1 or n_ctx < 16:
            raise EngineError(f"n_slots must be >= 1 and n_ctx >= 16 (got {n_slots}, {n_ctx})")
        _check_block("prompt_block", prompt_block, n_batch)
        _check_block("read_block", read_block, n_batch)
        self.prompt_block = prompt_block
        self.read_block = read_block
        # False: reads are scheduled like any request, beside the others (a noise measurement)
        self.reads_alone = reads_alone
        # reads with marks decoded segment by segment, their prefixes saved (prefixes.py)
        self.split_reads = split_reads
        self.prefixes = PrefixStore()
        self.n_gpu_layers = default_gpu_layers() if n_gpu_layers is None else n_gpu_layers
        self.n_threads = n_threads or os.cpu_count() or 1
        self.seed = seed
        # Handles close in the reverse order of their opening (batch, context, model): a context
        # never outlives its model, whatever fails halfway through __init__.
        self._handles = ExitStack()
        with self._handles:
            self.model = self._handles.enter_context(
                closing(LlamaModel(Path(path), self.n_gpu_layers, default_use_extra_buffers()))
            )
            self.n_ctx = min(n_ctx, self.model.n_ctx_train)
            self.n_slots = n_slots
            if check_memory:
                self._check_kv_budget()
            self.ctx = self._handles.enter_context(closing(
                LlamaContext(self.model, self.n_ctx * n_slots, n_batch, n_slots, self.n_threads, flash_attn,
                             op_offload=self.n_gpu_layers > 0)
            ))
            self.batch = self._handles.enter_context(closing(LlamaBatch(n_batch)))
            self._handles = self._handles.pop_all()  # opened: kept open until close()
        self.n_batch = n_batch
        self.template = ChatTemplate(self.model)
        self.stats = EngineStats()
        self._batcher = Batcher(
            self.model, self.ctx, self.batch, self.template, self.stats, n_slots=n_slots, n_ctx=self.n_ctx,
            n_batch=n_batch, prompt_block=prompt_block, read_block=read_block, seed=seed,
            split_reads=split_reads,
        )
        self._handles.enter_context(closing(self._batcher))  # its samplers close first
        self.slots = self._batcher.slots

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
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

    # ------------------------------------------------------------------ the API

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.template.tokens(messages))

    @property
    def read_path(self) -> str:
        """The numerical path of reads, as recorded with verdicts: 'split-512' (each prompt alone,
        split at its marks, each segment in 512-token blocks), 'alone-512' (each prompt alone in
        512-token blocks) or 'batched-32x16' (beside other requests, 32-token blocks, 16 slots)."""
        return read_path_name(self.reads_alone, self.split_reads, self.read_block, self.prompt_block, self.n_slots)

    def chat(
        self, requests: Sequence[ChatRequest], on_result: ProgressCallback | None = None
    ) -> list[ChatResult]:
        """Run all requests to completion; results come back in request order.

        A request that cannot run (prompt too long, bad grammar) fails alone: its result has
        `error` set and finish_reason "error"; the others go on.
        """
        call = Call(requests, on_result)
        self._batcher.enqueue(call)
        reads = call.take_reads() if self.reads_alone else []
        if reads:
            self._read_alone(call, reads)
        self._batcher.run(call)
        self.stats.requests += len(requests)
        self.stats.seconds += time.perf_counter() - call.progress.start
        return call.results  # type: ignore[return-value]

    def _read_alone(self, call: Call, jobs: list[Job]) -> None:
        """Each read on one fixed numerical path: the KV cache is emptied, then every prompt is
        decoded in sequence 0 alone, from position 0, segment by segment (split at its bounds,
        prefixes.py), each segment in blocks of `read_block` tokens (each block one
        llama_decode), and its choice log-probabilities are read at its last position.
        A prompt reuses the leading blocks it shares with the one before it, or the longest of
        its prefixes that ends at a bound and was saved (loaded into the emptied cache): either
        was decoded the same way into the same cells of an otherwise empty cache, so its KV is
        what a fresh decode computes, and so is the attention window of the blocks after it."""
        batcher = self._batcher
        batcher.clear()
        slot = batcher.slots[0]
        last: Job | None = None
        for job in jobs:
            call.job_started(job)
            self.stats.prompt_tokens += len(job.prompt)
            if last is not None and job.prompt == last.prompt and job.bounds == last.bounds:  # another sample
                job.choice_logprobs, job.cached = last.choice_logprobs, len(job.prompt)
            else:
                keep = shared_start(slot.tokens, last.bounds, job.prompt, job.bounds, self.read_block) if last else 0
                saved, state = self.prefixes.longest(job.prompt, job.bounds)
                if saved > keep:
                    batcher.clear()
                    self.ctx.load_seq(slot.seq, state)
                    slot.tokens, slot.canon, keep = job.prompt[:saved], saved, saved
                job.cached = keep

                def save(b: int, job: Job = job) -> None:
                    key = PrefixStore.key(job.prompt, job.bounds, b)
                    if key not in self.prefixes:
                        buf, size = self.ctx.save_seq(slot.seq)
                        self.prefixes.put(key, (buf, size), size)

                logits = batcher.read_prompt(slot, job.prompt, keep, job.bounds, save)
                job.choice_logprobs = choice_logprobs(logits, job.choice_tokens) if job.choice_tokens else None
                last = job
            self.stats.prompt_tokens_cached += job.cached
            job.finish = "stop"
            call.job_finished(job)
        batcher.forget(slot)
