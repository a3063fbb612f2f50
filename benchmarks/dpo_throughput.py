"""DPO throughput and memory: TRL's DPOTrainer with its defaults (a) against stage dpo (b).

    python benchmarks/dpo_throughput.py [--steps 12] [--micro-batch 4] [--cutoff 256]
                                        [--no-sft]

Both sides train LoRA (r=8, alpha 16, q/v, lr 1e-4, sigmoid loss, beta 0.1) on the bundled
SmolLM2-135M from the same pairs (the project's `examples/quickstart/train_pairs.json`,
rendered with the chat template into the same texts), same micro-batch, max length, seed
(so the same batches in the same order) and steps, each side alone in a fresh subprocess
that loads the base in fp32 from the GGUF cache:

(a) TRL's defaults: `DPOTrainer(model, args=DPOConfig(...), peft_config=LoraConfig(...))`
    with DPOConfig's defaults (gradient checkpointing on, dropout disabled, padded rows,
    its fused LM head) except `bf16=False` unless `--bf16`: TRL defaults to bf16, which a
    CPU without bf16 (AVX2 only) cannot run, so fp32 is the nearest runnable setting there;
    on a bf16 CPU (AVX-512 BF16, AMX) pass `--bf16` to keep TRL's default;
(b) `llamaforge train stage=dpo` (`methods/dpo.py`) with our defaults: no gradient
    checkpointing, the shared-prompt scoring (one row per pair, LM head on answer
    positions only), the reference as the adapter disabled.

tokens/s = non-padding tokens of the chosen and rejected sequences (what both trainers count)
over the wall time of `trainer.train()`; peak memory = the subprocess's peak RSS (loading
included, as `llamaforge train` reports it). Both trained adapters are then evaluated by
the same code (TRL's DPO evaluation on `held_out_pairs.json`): eval loss, reward accuracy
and margin. Side (c), unless --no-sft: stage sft (LoRA, same micro-batch, the chosen answers
of the same pairs) for the LoRA DPO / LoRA SFT memory ratio. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "examples" / "quickstart" / "train_pairs.json"
HELD_OUT = ROOT / "examples" / "quickstart" / "held_out_pairs.json"
TARGETS = ["q_proj", "v_proj"]
LR, BETA = 1e-4, 0.1


def rows(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    from llamaforge.data.formats import read_records
    from llamaforge.data.templates import get_template
    from llamaforge.training.preference import pair_rows

    return pair_rows(read_records(path), tokenizer, get_template("chat"), adds_specials=True)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def side_trl(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from llamaforge.config import load_run_config
    from llamaforge.models import load_model

    model, tokenizer = load_model(load_run_config(None).model, for_training=True)
    config = DPOConfig(
        str(out),
        bf16=args.bf16,  # TRL's default; see the module docstring
        use_cpu=True,
        per_device_train_batch_size=args.micro_batch,
        max_length=args.cutoff,
        max_steps=args.steps,
        learning_rate=LR,
        beta=BETA,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",  # counting only
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows(PAIRS, tokenizer)),
        processing_class=tokenizer,
        peft_config=lora,
    )
    start = time.monotonic()
    trainer.train()
    wall = time.monotonic() - start
    trainer.save_model(str(out))
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def side_ours(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from llamaforge.config import load_run_config
    from llamaforge.methods import run_training

    cfg = load_run_config(
        None,
        stage="dpo",
        dataset=[str(PAIRS)],
        output_dir=str(out),
        precision="bf16" if args.bf16 else "fp32",
        micro_batch_size=args.micro_batch,
        batch_size=args.micro_batch,
        cutoff_len=args.cutoff,
        max_steps=args.steps,
        learning_rate=LR,
        beta=BETA,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=10**6,
        lora_target_modules=TARGETS,
    )
    run_training(cfg)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "tokens": summary["tokens_trained"],
        "wall_s": summary["wall_time_s"],
        "tokens_per_s": summary["tokens_trained"] / summary["wall_time_s"],
    }


def side_sft(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from llamaforge.config import load_run_config
    from llamaforge.methods import run_training

    chosen = [
        {"instruction": r["prompt"], "input": "", "output": r["chosen"]}
        for r in json.loads(PAIRS.read_text())
    ]
    data = out.with_suffix(".json")
    data.write_text(json.dumps(chosen))
    cfg = load_run_config(
        None,
        dataset=[str(data)],
        output_dir=str(out),
        precision="bf16" if args.bf16 else "fp32",
        micro_batch_size=args.micro_batch,
        batch_size=args.micro_batch,
        cutoff_len=args.cutoff,
        max_steps=args.steps,
        learning_rate=LR,
        logging_steps=1,
        save_steps=10**6,
        lora_target_modules=TARGETS,
    )
    run_training(cfg)
    return {}


def evaluate(adapter: Path, micro_batch: int, cutoff: int) -> dict[str, float]:
    """TRL's DPO evaluation of a trained adapter on the held-out pairs (same code for both)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from llamaforge.config import load_run_config
    from llamaforge.models import load_model
    from llamaforge.training.preference import drop_reference_adapter

    model_cfg = load_run_config(None, adapter=str(adapter)).model
    model, tokenizer = load_model(model_cfg, for_training=True)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    config = DPOConfig(
        tempfile.mkdtemp(),
        bf16=False,
        use_cpu=True,
        per_device_eval_batch_size=micro_batch,
        max_length=cutoff,
        beta=BETA,
        report_to="none",
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows(PAIRS, tokenizer)[:1]),
        eval_dataset=Dataset.from_list(rows(HELD_OUT, tokenizer)),
        processing_class=tokenizer,
    )
    drop_reference_adapter(trainer.model)  # the reference is the base, as in training
    metrics = trainer.evaluate()
    return {
        k: round(metrics[f"eval_{k}"], 4) for k in ("loss", "rewards/accuracies", "rewards/margins")
    }


SIDES = {"trl": side_trl, "ours": side_ours, "sft": side_sft}


def run_side(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--side", name, "--out", str(out)]
    command += ["--steps", str(args.steps), "--micro-batch", str(args.micro_batch)]
    command += ["--cutoff", str(args.cutoff)] + (["--bf16"] if args.bf16 else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"side {name} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--bf16", action="store_true", help="both sides in bf16 (bf16 CPUs)")
    parser.add_argument("--no-sft", action="store_true", help="skip the SFT memory side")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one side, in its own process
        result = SIDES[args.side](args, args.out)
        result["peak_rss_bytes"] = peak_rss()
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in ("trl", "ours"):  # each side's figures as soon as it is done
            results[name] = run_side(name, args, Path(tmp) / name)
            print(name, json.dumps(results[name]), flush=True)
        for name in ("trl", "ours"):
            results[name]["eval"] = evaluate(Path(tmp) / name, args.micro_batch, args.cutoff)
            print(name, "held-out", json.dumps(results[name]["eval"]), flush=True)
        a, b = results["trl"], results["ours"]
        report: dict[str, Any] = {
            "steps": args.steps,
            "micro_batch": args.micro_batch,
            "cutoff": args.cutoff,
            "a_trl_defaults": a,
            "b_llamaforge": b,
            "tokens_per_s_ratio": round(b["tokens_per_s"] / a["tokens_per_s"], 3),
            "peak_memory_ratio": round(b["peak_rss_bytes"] / a["peak_rss_bytes"], 3),
            "same_tokens": a["tokens"] == b["tokens"],
        }
        if not args.no_sft:
            sft = run_side("sft", args, Path(tmp) / "sft")
            report["lora_sft_peak_rss_bytes"] = sft["peak_rss_bytes"]
            report["dpo_over_sft_memory"] = round(b["peak_rss_bytes"] / sft["peak_rss_bytes"], 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
