"""Training throughput: the alpaca-lora recipe (a) against llamaforge's default (b).

    python benchmarks/train_throughput.py [--steps 40] [--records PATH] [--model DIR]
                                          [--device cpu|cuda]

Both sides train the same model (SmolLM2-135M), LoRA config (r=8 on q/v), records, order,
cutoff (256), micro-batch (4) and optimizer (AdamW, lr 2e-4) in ONE process, alternating
steps so that machine noise hits both alike:

(a) alpaca-lora: plain peft LoRA, per-example `datasets.map` tokenization,
    `DataCollatorForSeq2Seq(pad_to_multiple_of=8)`, the model's own loss (lm_head + CE on
    every position); fp32 on CPU, bf16 autocast on CUDA (alpaca-lora's fp16=True there);
(b) llamaforge: batched cached tokenization (`tokenize_records`), padding-free packing
    (`DataCollatorWithFlattening` + per-example attention: bf16 matmuls on the CPU, varlen
    flash on CUDA), loss on trained positions only (`TrainedPositionsTrainer.compute_loss`,
    cross-entropy in fp32 a few rows at a time), bf16 autocast where the
    hardware supports it with the frozen base stored in bf16 and the adapter in fp32, LoRA
    inputs left uncast, our cheaper CPU LoRA dropout mask and the frozen weights pre-packed
    for oneDNN on the CPU, as `run_sft`.

Both sides' losses on the fixed evaluation batch are computed in fp32 with each trained
adapter on the same fp32 base weights. The fp32 and bf16 matmul ceilings are measured before
training and after every step pair; MFU uses their medians (the JSON gives their ranges).

Peak memory is measured per side in a fresh subprocess that runs that side alone, as its own
run would (side a loads the base in fp32, side b in the dtype `run_sft` loads it in; then
tokenization, b's pre-packed weights, the same steps on the same batches; the model comes
from the GGUF cache the main process has already built). Two figures per side: the whole
process's resident high-water mark (`peak_rss_process_*`: imports, loading and tokenizing
included, what a user sees and what `llamaforge train` writes as `peak_memory_bytes`), and
the high-water mark of the training steps alone (`peak_rss_*`: reset after loading). On
CUDA both are the GPU's allocated high-water marks (the keys stay `peak_rss_*`). The last
line printed is one JSON object with the figures and the ratios b/a.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_ALPACA = ROOT.parent / "shared" / "data" / "stanford_alpaca" / "alpaca_data.json"
SAMPLE = ROOT / "examples" / "quickstart" / "train.json"
CUTOFF, MICRO_BATCH, LR, EVAL_RECORDS = 256, 4, 2e-4, 16
DEVICE = torch.device("cpu")  # set from --device in main()
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(dtype: torch.dtype, reps: int = 20) -> float:
    """Measured dense GEMM throughput in GFLOP/s for `dtype` on this machine's device."""
    n = 8192 if DEVICE.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=DEVICE).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def load_rows(path: Path | None) -> tuple[list[dict[str, str]], str]:
    source = path or (SHARED_ALPACA if SHARED_ALPACA.is_file() else SAMPLE)
    return json.loads(source.read_text(encoding="utf-8")), str(source)


def recipe_tokenize(rows: list[dict[str, str]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """alpaca-lora's generate_and_tokenize_prompt, per example through datasets.map."""
    import datasets

    def prompt(row: dict[str, str]) -> str:
        template = ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT
        return template.format(instruction=row["instruction"], input=row["input"])

    def tokenize(row: dict[str, str]) -> dict[str, list[int]]:
        full = tokenizer(prompt(row) + row["output"], truncation=True, max_length=CUTOFF)
        ids = full["input_ids"]
        if ids[-1] != tokenizer.eos_token_id and len(ids) < CUTOFF:
            ids = [*ids, tokenizer.eos_token_id]
        user_len = len(tokenizer(prompt(row), truncation=True, max_length=CUTOFF)["input_ids"])
        labels = [-100] * user_len + ids[user_len:]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    mapped = datasets.Dataset.from_list(rows).map(
        tokenize, remove_columns=["instruction", "input", "output"]
    )
    return [dict(x) for x in mapped]


def side_config() -> Any:
    """The run config both sides share (b reads every setting from it, as run_sft does)."""
    from llamaforge.config import load_run_config

    return load_run_config(
        None,
        [
            "template=alpaca",
            f"cutoff_len={CUTOFF}",
            "lora_target_modules=[q_proj,v_proj]",
            f"micro_batch_size={MICRO_BATCH}",
            f"batch_size={MICRO_BATCH}",
            f"learning_rate={LR}",
        ],
    )


def base_dtype(side: str) -> str:
    """The dtype a side's own run loads the base model in: fp32 for a, run_sft's for b."""
    from llamaforge.models import resolve_dtype
    from llamaforge.training.harness import base_weights_dtype
    from llamaforge.training.trainer import resolve_precision

    if side == "a":
        return "float32"
    return str(
        resolve_dtype(base_weights_dtype(side_config(), resolve_precision("auto")))
    ).removeprefix("torch.")


def build(
    side: str, rows: list[dict[str, str]], base: Any, tokenizer: Any, *, copy_base: bool = True
) -> dict[str, Any]:
    """Model, examples, collator and loss function of one side (on a copy of `base` unless
    `copy_base` is false: then `base` itself becomes the side's model)."""
    from peft import get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import DataCollatorForSeq2Seq

    from llamaforge.adapters.attach import attach_adapter, to_peft_config
    from llamaforge.data import tokenize_records
    from llamaforge.data.formats import Conversation, Message
    from llamaforge.training.harness import RunPlan, base_weights_dtype, training_arguments
    from llamaforge.training.packing import packing_collator, use_packed_attention
    from llamaforge.training.prepack import prepacked_frozen_linears
    from llamaforge.training.trainer import TrainedPositionsTrainer, resolve_precision

    cfg = side_config()
    model = copy.deepcopy(base) if copy_base else base
    fast_paths = contextlib.ExitStack()  # b: held for the whole run, as run_sft's training
    if side == "b":  # as run_sft: the frozen base in the training precision, packed attention
        model.to(getattr(torch, base_dtype("b")))
        use_packed_attention(model)
    torch.manual_seed(0)  # identical LoRA initialisation on both sides
    if side == "a":  # plain peft, as alpaca-lora
        model = get_peft_model(model, to_peft_config(model, cfg.finetuning))
    else:
        model = attach_adapter(model, cfg.finetuning)
    start = time.perf_counter()
    if side == "a":
        examples = recipe_tokenize(rows, tokenizer)
        collator: Any = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt")

        # alpaca-lora trains in fp32 on CPUs and with fp16=True on GPUs (bf16 autocast here).
        precision = "bf16" if DEVICE.type == "cuda" else "fp32"

        def context() -> Any:
            return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**batch).loss

    else:
        conversations = [
            Conversation(
                (Message("user", r["instruction"], r["input"]), Message("assistant", r["output"]))
            )
            for r in rows
        ]
        with tempfile.TemporaryDirectory() as cache:
            dataset = tokenize_records(
                conversations, tokenizer, cfg.data, cache_dir=cache, show_progress=False
            )
        examples = [dict(x) for x in dataset]
        collator = packing_collator()
        precision = resolve_precision(cfg.training.precision)
        if precision == "bf16":
            fast_paths.enter_context(prepacked_frozen_linears(model))

        def context() -> Any:  # as run_sft: autocast, adapter inputs not cast to fp32
            stack = contextlib.ExitStack()
            stack.enter_context(
                torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            )
            stack.enter_context(disable_input_dtype_casting(model, active=precision != "fp32"))
            return stack

        with tempfile.TemporaryDirectory() as out:
            trainer = TrainedPositionsTrainer(
                model=model,
                args=training_arguments(
                    cfg,
                    RunPlan(
                        stage="sft",
                        run_dir=Path(out),
                        precision=precision,
                        base_dtype=base_weights_dtype(cfg, precision),
                        quantization_bit=None,
                        packing=True,
                        world_size=1,
                        resume=None,
                        sharded=False,
                    ),
                    has_eval=False,
                ),
                train_dataset=examples,
                data_collator=collator,
            )

        def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return trainer.compute_loss(model, batch)

    tokenize_s = time.perf_counter() - start
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    return {
        "model": model,
        "examples": examples,
        "collator": collator,
        "loss_fn": loss_fn,
        "context": context,
        "optimizer": optimizer,
        "tokenize_s": tokenize_s,
        "precision": precision,
        "fast_paths": fast_paths,
    }


def train_step(side: dict[str, Any], step: int) -> tuple[int, float]:
    """One optimizer step on micro-batch `step`; returns (non-pad tokens, seconds)."""
    features = side["examples"][step * MICRO_BATCH : (step + 1) * MICRO_BATCH]
    batch = to_device(side["collator"](features))
    tokens = sum(len(f["input_ids"]) for f in features)
    side["model"].train()
    synchronize()
    start = time.perf_counter()
    with side["context"]():
        loss = side["loss_fn"](batch)
    loss.backward()
    side["optimizer"].step()
    side["optimizer"].zero_grad(set_to_none=True)
    synchronize()
    return tokens, time.perf_counter() - start


def to_device(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}


def on_reference_base(trained: Any, reference: Any) -> Any:
    """A copy of `reference` (fp32 base + the same adapter layout) with `trained`'s adapter.

    Evaluating both sides' adapters on the same fp32 base weights compares what they
    learned, not the bf16 rounding of the base that side b trains on.
    """
    model = copy.deepcopy(reference)
    adapter = {name: p for name, p in trained.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in adapter:
                param.copy_(adapter.pop(name))
    if adapter:
        raise RuntimeError(f"adapter weights missing from the reference model: {sorted(adapter)}")
    return model


def eval_loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """Mean loss over trained tokens of the fixed evaluation batch, fp32, full logits."""
    model.eval()
    with torch.no_grad(), torch.autocast(DEVICE.type, enabled=False):
        return float(model(**to_device(batch)).loss)


def load_base(model: str, dtype: str = "float32") -> tuple[Any, Any]:
    from llamaforge.config import ModelConfig
    from llamaforge.models import load_model

    base, tokenizer = load_model(ModelConfig(model=model, dtype=dtype), for_training=True)
    return base.to(DEVICE), tokenizer


def peak_memory(reset: bool = False) -> int:
    """High-water mark so far (GPU memory on CUDA, else the process's resident memory);
    with `reset`, the mark then starts again from what is in use now."""
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak
    status = Path("/proc/self/status").read_text()
    peak = 1024 * int(
        next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]
    )
    if reset:  # Linux: reset VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    return peak


def memory_only(side_name: str, steps: int, records: Path | None, model: str) -> None:
    """Subprocess mode: one side alone, as its own run; print its whole-process and
    training peaks."""
    rows, _ = load_rows(records)
    rows = random.Random(0).sample(rows, min(len(rows), steps * MICRO_BATCH))
    base, tokenizer = load_base(model, base_dtype(side_name))  # no second copy of the model
    side = build(side_name, rows, base, tokenizer, copy_base=False)
    del base
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    # The training figure is the steps' own high-water mark, from what is resident after
    # loading; the whole-process figure is the larger of the two marks.
    before_training = peak_memory(reset=True)
    for step in range(steps):
        train_step(side, step)
    training = peak_memory()
    print(json.dumps({"peak_rss": training, "peak_rss_process": max(before_training, training)}))


def tokenize_full(rows: list[dict[str, str]], tokenizer: Any) -> tuple[float, float, int]:
    """Our tokenization of every record: cold (empty cache) and warm (cache hit)."""
    from llamaforge.config import load_run_config
    from llamaforge.data import tokenize_records
    from llamaforge.data.formats import Conversation, Message

    cfg = load_run_config(None, ["template=alpaca", f"cutoff_len={CUTOFF}"]).data
    with tempfile.TemporaryDirectory() as cache:
        timings = []
        for _ in range(2):
            start = time.perf_counter()  # reading records counts too: the cache is keyed on them
            conversations = [
                Conversation(
                    (
                        Message("user", r["instruction"], r["input"]),
                        Message("assistant", r["output"]),
                    )
                )
                for r in rows
            ]
            tokenize_records(conversations, tokenizer, cfg, cache_dir=cache, show_progress=False)
            timings.append(time.perf_counter() - start)
    return timings[0], timings[1], len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--records", type=Path, default=None)
    parser.add_argument(
        "--model", default="smollm2-135m", help="model name or directory (default: the bundled one)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train (default: cuda when available); peak memory is GPU memory on cuda",
    )
    parser.add_argument("--memory-only", choices=("a", "b"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch sees no CUDA device")
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.memory_only:
        memory_only(args.memory_only, min(args.steps, 8), args.records, args.model)
        return
    # The ceilings are measured before training and again after every step pair: on a
    # shared machine they drift with the neighbours' load, so MFU uses their medians.
    ceilings: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}

    def measure_ceilings() -> None:
        for dtype, samples in ceilings.items():
            samples.append(matmul_ceiling(dtype))

    measure_ceilings()
    print(
        f"matmul ceilings: fp32 {ceilings[torch.float32][0]:.0f} GFLOP/s, "
        f"bf16 {ceilings[torch.bfloat16][0]:.0f} GFLOP/s ({torch.get_num_threads()} threads)"
    )

    all_rows, source = load_rows(args.records)
    rng = random.Random(0)
    rows = rng.sample(all_rows, min(len(all_rows), args.steps * MICRO_BATCH + EVAL_RECORDS))
    train_rows, eval_rows = rows[EVAL_RECORDS:], rows[:EVAL_RECORDS]
    print(f"records: {len(train_rows)} train + {len(eval_rows)} eval from {source}")

    base, tokenizer = load_base(args.model)
    n_params = sum(p.numel() for p in base.parameters())
    sides = {name: build(name, train_rows, base, tokenizer) for name in ("a", "b")}
    eval_batch = sides["a"]["collator"](recipe_tokenize(eval_rows, tokenizer))
    del base

    steps = min(args.steps, len(train_rows) // MICRO_BATCH)
    warmup = 2
    totals = {name: [0, 0.0, 0] for name in sides}  # tokens, seconds, example tokens for attention
    for step in range(steps):
        for name, side in sides.items():
            tokens, seconds = train_step(side, step)
            if step >= warmup:
                totals[name][0] += tokens
                totals[name][1] += seconds
        measure_ceilings()
        if step % 10 == 0:
            print(f"step {step}/{steps}", flush=True)
    reference = sides["a"]["model"]  # fp32 base, never changed: only the adapter trains
    losses = {
        name: eval_loss(on_reference_base(side["model"], reference), eval_batch)
        for name, side in sides.items()
    }

    # Model FLOPs per token: ≈ 4N for LoRA (forward 2N + input-gradient backward 2N) plus attention.
    config = sides["a"]["model"].config
    mean_len = sum(len(e["input_ids"]) for e in sides["b"]["examples"]) / len(
        sides["b"]["examples"]
    )
    fp32, bf16 = (statistics.median(ceilings[dtype]) for dtype in (torch.float32, torch.bfloat16))
    flops_per_token = 4 * n_params + 12 * config.num_hidden_layers * config.hidden_size * mean_len
    tps = {name: tokens / seconds for name, (tokens, seconds, _) in totals.items()}
    precision = {name: side["precision"] for name, side in sides.items()}
    mfu = {
        name: tps[name] * flops_per_token / 1e9 / (bf16 if precision[name] == "bf16" else fp32)
        for name in sides
    }
    tokenize_sample = {name: side["tokenize_s"] for name, side in sides.items()}
    del sides

    rss, rss_process = {}, {}
    for name in ("a", "b"):
        command = [sys.executable, __file__, "--memory-only", name, "--steps", str(args.steps)]
        command += ["--model", args.model, "--device", args.device]
        if args.records:
            command += ["--records", str(args.records)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peaks = json.loads(out.strip().splitlines()[-1])
        rss[name], rss_process[name] = peaks["peak_rss"], peaks["peak_rss_process"]

    tokenize_s, tokenize_cached_s, n_tokenized = tokenize_full(all_rows, tokenizer)
    print(
        f"tokens/s: a {tps['a']:.1f}, b {tps['b']:.1f} (ratio {tps['b'] / tps['a']:.2f}); b runs {precision['b']}"
    )
    print(
        f"MFU: a {100 * mfu['a']:.1f} % of {precision['a']}, b {100 * mfu['b']:.1f} % of {precision['b']}"
        f" (median ceilings during the run: fp32 {fp32:.0f}, bf16 {bf16:.0f} GFLOP/s)"
    )
    print(
        f"eval loss after the same {totals['a'][0]} trained tokens: a {losses['a']:.4f}, b {losses['b']:.4f}"
    )
    kind = "GPU memory" if DEVICE.type == "cuda" else "RSS"
    print(
        f"peak {kind}, training steps: a {rss['a'] / 2**30:.2f} GiB, b {rss['b'] / 2**30:.2f} GiB;"
        f" whole process: a {rss_process['a'] / 2**30:.2f} GiB, b {rss_process['b'] / 2**30:.2f} GiB"
    )
    print(f"tokenizing {n_tokenized} records: {tokenize_s:.1f} s, cached {tokenize_cached_s:.2f} s")
    print(
        json.dumps(
            {
                "tokens_per_s_a": round(tps["a"], 2),
                "tokens_per_s_b": round(tps["b"], 2),
                "ratio": round(tps["b"] / tps["a"], 3),
                "mfu_a": round(mfu["a"], 4),
                "mfu_b": round(mfu["b"], 4),
                "precision_b": precision["b"],
                "device": DEVICE.type,
                "fp32_gflops": round(fp32, 1),
                "bf16_gflops": round(bf16, 1),
                "fp32_gflops_range": [round(f(ceilings[torch.float32]), 1) for f in (min, max)],
                "bf16_gflops_range": [round(f(ceilings[torch.bfloat16]), 1) for f in (min, max)],
                "peak_rss_a": rss["a"],
                "peak_rss_b": rss["b"],
                "peak_rss_ratio": round(rss["b"] / rss["a"], 3),
                "peak_rss_process_a": rss_process["a"],
                "peak_rss_process_b": rss_process["b"],
                "peak_rss_process_ratio": round(rss_process["b"] / rss_process["a"], 3),
                "eval_loss_a": round(losses["a"], 5),
                "eval_loss_b": round(losses["b"], 5),
                "eval_loss_rel_diff": round((losses["b"] - losses["a"]) / losses["a"], 5),
                "tokenize_records": n_tokenized,
                "tokenize_s": round(tokenize_s, 2),
                "tokenize_cached_s": round(tokenize_cached_s, 3),
                "recipe_tokenize_sample_s": round(tokenize_sample["a"], 2),
                "tokenize_sample_s": round(tokenize_sample["b"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
