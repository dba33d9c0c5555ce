"""Does TRL's DPOTrainer train on edgepref's pairs? One real optimizer step per pairs file.

    python scripts/trl_check.py PAIRS... [--gguf PATH] [--max-length N] [--threads N]

Run it through scripts/trl_check.sh, which makes a separate venv with CPU torch, trl,
transformers, datasets and gguf (none of them are edgepref's dependencies).

Each PAIRS is a pairs.jsonl or a run directory holding one. The file is loaded with `datasets`
as TRL's documentation loads a preference dataset (`load_dataset("json", ...)`, the
prompt/chosen/rejected columns), its format is told apart with TRL's own `is_conversational`
(standard: strings; conversational: `prompt` a message list, `chosen`/`rejected` one assistant
message each), and DPOTrainer takes one step on it with SmolLM2-135M-Instruct's real weights.

There is no model hub here, so the model is the GGUF that edgepref embeds (found with
`edgepref models path smollm2-135m` unless --gguf names one), which transformers dequantises
into a float32 LlamaForCausalLM; its chat template comes from the GGUF's metadata, and the
conversational format needs it.

What counts as trained, per file: TRL kept at least one row after tokenising, the step's loss is
finite with a non-zero gradient, parameters changed, and the DPO loss on the very batch of that
step is lower after the step than before it. The loss logged for the step itself is always
ln 2 = 0.693147: before the first update the policy equals the reference model, so the reward
margin is zero; the loss after the step is what shows the preference was learned.
Exit status 0 only when every file passes; each failure is named.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import fields
from pathlib import Path

# No hub here: nothing may try to download (it would fail slowly, then confusingly).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF unpacking's progress bar, in a log

REPO = Path(__file__).resolve().parent.parent
ROLES = ("system", "user", "assistant")


class CheckFailed(Exception):
    """A pairs file that TRL cannot train on, or a step that did not train."""


def find_gguf(given: str | None) -> Path:
    """The SmolLM2 GGUF: --gguf, $TRL_CHECK_GGUF, or what edgepref says its embedded model is."""
    path = given or os.environ.get("TRL_CHECK_GGUF")
    if not path:
        exe = shutil.which("edgepref") or str(REPO / ".venv" / "bin" / "edgepref")
        try:
            done = subprocess.run([exe, "models", "path", "smollm2-135m"], check=False, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CheckFailed(f"cannot run {exe} to find the SmolLM2 GGUF ({e}); pass --gguf PATH") from e
        if done.returncode != 0:
            raise CheckFailed(f"`edgepref models path smollm2-135m` failed: {done.stderr.strip()}; pass --gguf PATH")
        path = done.stdout.strip().splitlines()[-1]
    gguf = Path(path)
    if not gguf.is_file():
        raise CheckFailed(f"no GGUF file at {gguf}")
    return gguf


def gguf_chat_template(gguf: Path) -> str | None:
    """tokenizer.chat_template from the GGUF's metadata, for a tokenizer that came without one."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def load_smollm2(gguf: Path):
    """Tokenizer and float32 model from the GGUF (transformers dequantises it); the template's source."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    source = "the tokenizer transformers built from the GGUF"
    if not tokenizer.chat_template:
        tokenizer.chat_template = gguf_chat_template(gguf)
        source = "the GGUF's tokenizer.chat_template, set by this script"
    if not tokenizer.chat_template:
        raise CheckFailed(f"{gguf.name} has no chat template: the conversational format cannot be rendered")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, plain_copy(loaded, tokenizer), source


def plain_copy(loaded, tokenizer):
    """The same dense float32 weights in a model without the GGUF quantizer mark.

    transformers 5 keeps a GgufHfQuantizer on a model loaded from a GGUF even when every weight
    was unpacked into a plain Linear, and Trainer refuses to fine-tune any model carrying a
    quantizer ("purely quantized models"). A model built from the same config without
    quantization_config, holding the very same tensors, is what a full fine-tune needs; its
    logits are checked against the loaded model's so the copy cannot silently differ."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    odd = {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("transformers.integrations")}
    if getattr(model, "hf_quantizer", None) is not None or odd:
        raise CheckFailed(f"the model is still quantized ({odd or 'hf_quantizer set'}): a full fine-tune needs dense weights")
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        same = torch.allclose(loaded.eval()(ids).logits, model.eval()(ids).logits, atol=1e-5)
    if not same:
        raise CheckFailed("the dense copy of the GGUF model gives other logits than the loaded model")
    return model


def pairs_file(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        path = path / "pairs.jsonl"
    if not path.is_file():
        raise CheckFailed(f"no pairs file at {path}")
    return path


def _message_problem(messages: object, where: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{where} is not a non-empty message list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"{where}[{i}] is not exactly {{role, content}}"
        if m["role"] not in ROLES or not isinstance(m["content"], str) or not m["content"].strip():
            return f"{where}[{i}] has role {m['role']!r} or empty content"
        if m["role"] == "system" and i:
            return f"{where}[{i}] is a system message after the first"
    return None


def row_problem(row: dict, conversational: bool) -> str | None:
    """What keeps one row from being a preference row of the file's format, or None."""
    from trl.data_utils import is_conversational

    if is_conversational(row) != conversational:
        return f"is {'standard' if conversational else 'conversational'} in a {'conversational' if conversational else 'standard'} file (TRL decides the format from the first row)"
    if not conversational:
        bad = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row[k], str) or not row[k].strip()]
        return f"{', '.join(bad)} not a non-empty string" if bad else None
    problem = _message_problem(row["prompt"], "prompt")
    if problem is None and row["prompt"][-1]["role"] != "user":
        problem = "prompt does not end with a user turn"
    for key in ("chosen", "rejected"):
        problem = problem or _message_problem(row[key], key)
        if problem is None and [m["role"] for m in row[key]] != ["assistant"]:
            problem = f"{key} is not one assistant message"
    return problem


def load_pairs(path: Path, cache_dir: str):
    """The rows as TRL reads them, the format, and a few facts about the prompts."""
    import datasets
    from trl.data_utils import is_conversational

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise CheckFailed(f"columns {sorted(missing)} missing (has {ds.column_names})")
    if len(ds) == 0:
        raise CheckFailed("no rows")
    ds = ds.select_columns(["prompt", "chosen", "rejected"])
    conversational = is_conversational(ds[0])
    problems = [f"row {i + 1}: {p}" for i, row in enumerate(ds) if (p := row_problem(row, conversational))]
    if problems:
        raise CheckFailed(f"{len(problems)} of {len(ds)} rows unusable: " + "; ".join(problems[:5]))
    facts = {}
    if conversational:
        facts["with a system message"] = sum(row["prompt"][0]["role"] == "system" for row in ds)
        facts["with earlier turns"] = sum(sum(m["role"] != "system" for m in row["prompt"]) > 1 for row in ds)
        facts["most prompt messages"] = max(len(row["prompt"]) for row in ds)
    return ds, conversational, facts


def check_rendering(trainer, tokenizer, conversational: bool) -> None:
    """Every message of every prompt reaches the tokens TRL trains on, and each completion too."""
    for i, row in enumerate(trainer.train_dataset):
        prompt = tokenizer.decode(row["prompt_ids"])
        chosen = tokenizer.decode(row["chosen_ids"])
        texts = [m["content"] for m in row["prompt"]] if conversational else [row["prompt"]]
        lost = [t for t in texts if t.strip() not in prompt]
        want = row["chosen"][0]["content"] if conversational else row["chosen"]
        if lost or want.strip() not in chosen:
            raise CheckFailed(f"tokenised row {i + 1} lost text: prompt {lost!r} chosen ok {want.strip() in chosen}")


def train_one_step(base, tokenizer, ds, workdir: str, max_length: int) -> dict:
    import torch
    from trl import DPOConfig, DPOTrainer

    class RecordingDPOTrainer(DPOTrainer):
        """Keeps the step's batch, so the loss on it can be measured again after the update."""

        first_batch: dict | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.first_batch is None:
                self.first_batch = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # transformers 5 renamed gradient_checkpointing (which DPOConfig turns on by default) to
    # activation_checkpointing; off either way: memory is no issue at 135M parameters.
    names = {f.name for f in fields(DPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    config = DPOConfig(
        output_dir=workdir,
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=max_length,
        report_to=[],
        push_to_hub=False,
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # DPOConfig turns bf16 on by default; float32 on the CPU
        **{checkpointing: False},
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    model = copy.deepcopy(base)
    # The reference model is given: TRL would otherwise load it again from model.config's path,
    # a directory holding only the GGUF.
    ref_model = copy.deepcopy(base).eval()
    trainer = RecordingDPOTrainer(
        model=model, ref_model=ref_model, args=config, train_dataset=ds, processing_class=tokenizer
    )
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise CheckFailed(f"TRL dropped every row: each prompt alone fills max_length={max_length}")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    step = next(e for e in trainer.state.log_history if "loss" in e)
    trainer.model.eval()
    with torch.no_grad():
        after = float(trainer.compute_loss(trainer.model, trainer.first_batch))
    before = dict(base.named_parameters())
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n].detach())]
    max_delta = max(float((p.detach() - before[n].detach()).abs().max()) for n, p in trainer.model.named_parameters())
    return {
        "trainer": trainer,
        "kept": kept,
        "loss": float(step["loss"]),
        "grad_norm": float(step.get("grad_norm", float("nan"))),
        "loss_after": after,
        "changed": len(changed),
        "params": sum(1 for _ in trainer.model.parameters()),
        "max_delta": max_delta,
        "step_seconds": seconds,
        "truncated": sum(
            len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > max_length
            for r in trainer.train_dataset
        ),
    }


def check_file(arg: str, base, tokenizer, max_length: int) -> None:
    start = time.perf_counter()
    path = pairs_file(arg)
    with tempfile.TemporaryDirectory(prefix="trl-check-") as tmp:
        ds, conversational, facts = load_pairs(path, cache_dir=os.path.join(tmp, "datasets"))
        kind = "conversational" if conversational else "standard"
        print(f"{path}: {kind} format, {len(ds)} rows" + "".join(f", {v} {k}" for k, v in facts.items()))
        result = train_one_step(base, tokenizer, ds, os.path.join(tmp, "out"), max_length)
        check_rendering(result["trainer"], tokenizer, conversational)
    r = result
    print(
        f"  TRL kept {r['kept']} of {len(ds)} rows at max_length={max_length}"
        f" ({r['truncated']} cut at the end); every prompt message is in the tokens it trains on"
    )
    print(f"  step 1: loss {r['loss']:.6f} (ln 2 = {math.log(2):.6f}: policy == reference), grad norm {r['grad_norm']:.3f}")
    print(f"  same batch after the step: loss {r['loss_after']:.6f} ({r['loss_after'] - r['loss']:+.6f})")
    print(f"  parameters changed: {r['changed']} of {r['params']} tensors, largest change {r['max_delta']:.2e}")
    failures = []
    if not math.isfinite(r["loss"]) or not r["grad_norm"] > 0:
        failures.append(f"loss {r['loss']} with grad norm {r['grad_norm']}: no learning signal")
    if r["changed"] == 0:
        failures.append("no parameter changed")
    if not r["loss_after"] < r["loss"]:
        failures.append("the loss on the step's own batch did not go down")
    if failures:
        raise CheckFailed("; ".join(failures))
    print(f"  ok: DPOTrainer trained one step ({r['step_seconds']:.1f} s; {time.perf_counter() - start:.1f} s for the file)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="pairs.jsonl files or run directories")
    parser.add_argument("--gguf", help="the SmolLM2 GGUF (default: edgepref models path smollm2-135m)")
    parser.add_argument("--max-length", type=int, default=256, help="DPOConfig.max_length (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    # TRL 1.16 still reads transformers' deprecated gradient-checkpointing names: noise, not a finding
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    versions = {m.__name__: m.__version__ for m in (trl, transformers, torch, datasets)}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    start = time.perf_counter()
    try:
        gguf = find_gguf(args.gguf)
        tokenizer, base, source = load_smollm2(gguf)
    except CheckFailed as e:
        print(f"FAILED before training: {e}", file=sys.stderr)
        return 2
    print(f"model: {gguf.name} as {type(base).__name__} float32, chat template from {source}"
          f" ({time.perf_counter() - start:.1f} s to load)")

    failed = []
    for arg in args.pairs:
        try:
            check_file(arg, base, tokenizer, args.max_length)
        except CheckFailed as e:
            print(f"  FAILED {arg}: {e}", file=sys.stderr)
            failed.append(arg)
        except Exception as e:  # noqa: BLE001 (a TRL or datasets error is this check's finding: name it, go on)
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
            print(f"  FAILED {arg}: {type(e).__name__}: {e}{cause}", file=sys.stderr)
            failed.append(arg)
    total = time.perf_counter() - start
    print(f"{len(args.pairs) - len(failed)} passed, {len(failed)} failed ({total:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
