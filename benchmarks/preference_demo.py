"""Reward model and DPO on LLaMA-Factory's demo pairs: llamaforge against TRL's defaults.

    python benchmarks/preference_demo.py [--data-dir ../shared/data/llama_factory_demo]
                                         [--steps 30] [--cutoff 256] [--bf16]

``dpo_en_demo`` + ``dpo_zh_demo`` (600 pairs) are mixed and split 80/20 with seed 42 exactly
as ``val_set_size: 0.2`` splits them (``training.harness.stage_records``); every side trains
on the same 480 pairs for the same steps, micro-batch, maximum length, LoRA (r 8, alpha 16,
all linear layers, no dropout), learning rate and schedule, and is judged on the same 120
held-out pairs:

- ``rm_ours``: ``configs/rm.yaml`` (stage rm). ``rm_trl``: TRL's ``RewardTrainer`` with
  ``RewardConfig``'s defaults for everything else (gradient checkpointing, bf16 only with
  ``--bf16``: an AVX2-only CPU cannot run TRL's bf16 default), on the same score-head model
  and tokenizer as loaded by ``llamaforge`` (TRL pads with the tokenizer's pad token, which on
  the bundled model is the ``<|im_end|>`` that ends every answer). Each reward model is
  evaluated by its own trainer (``eval_accuracy``, ``eval_margin`` of TRL's RewardTrainer
  metrics, before and after training). Both get the same token ids, cut to the same length
  (TRL's ``max_length`` would drop the longer pairs, most of ``dpo_en_demo``).
- ``dpo_ours``: ``configs/dpo.yaml`` with ``sft_weight: 0`` (plain sigmoid DPO, TRL's default
  loss). ``dpo_trl``: TRL's ``DPOTrainer`` with ``DPOConfig``'s defaults otherwise. Each is
  evaluated by its own trainer with TRL's DPO metrics (``eval_rewards/accuracies``,
  ``eval_rewards/margins``; the reference is the base, the adapter disabled), before training
  and after.

The last line is one JSON object with each side's held-out accuracy and margin.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from llamaforge.config import RunConfig, load_run_config
from llamaforge.data import Record, get_template
from llamaforge.methods import run_training
from llamaforge.rundir import read_log
from llamaforge.training.harness import stage_records
from llamaforge.training.preference import pair_rows

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


def config(args: argparse.Namespace, name: str, output: Path, extra: list[str]) -> RunConfig:
    return load_run_config(
        ROOT / "configs" / f"{name}.yaml",
        [
            "dataset=[dpo_en_demo,dpo_zh_demo]",
            f"dataset_dir={Path(args.data_dir).resolve()}",
            "val_set_size=0.2",
            f"cutoff_len={args.cutoff}",
            f"max_steps={args.steps}",
            f"eval_steps={args.steps}",
            f"save_steps={args.steps}",
            f"precision={'bf16' if args.bf16 else 'fp32'}",
            f"output_dir={output}",
            *extra,
        ],
    )


def trl_arguments(cfg: RunConfig, args: argparse.Namespace, output: Path) -> dict[str, Any]:
    """What a TRL user sets by hand to match the run; TRL's defaults for the rest."""
    tr = cfg.training
    return {
        "output_dir": str(output),
        "bf16": args.bf16,
        "use_cpu": True,
        "per_device_train_batch_size": tr.micro_batch_size,
        "per_device_eval_batch_size": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.batch_size // tr.micro_batch_size,
        "max_steps": args.steps,
        "learning_rate": tr.learning_rate,
        "lr_scheduler_type": tr.lr_scheduler_type,
        "warmup_steps": tr.warmup_steps,
        "seed": tr.seed,
        "logging_steps": tr.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": args.steps,
        "eval_on_start": True,
        "save_strategy": "no",
        "report_to": "none",
    }


def final_evals(log: list[dict[str, Any]], accuracy: str, margin: str) -> dict[str, Any]:
    evals = [r for r in log if accuracy in r]
    first, last = evals[0], evals[-1]
    return {
        "before": {"accuracy": first[accuracy], "margin": first[margin]},
        "after": {"accuracy": last[accuracy], "margin": last[margin]},
    }


def rm_ours(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run = run_training(config(args, "rm", out, []))
    return final_evals(read_log(run), "eval_accuracy", "eval_margin")


def rm_trl(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    from llamaforge.data.preference import encode_pairs, reward_examples
    from llamaforge.models import load_model

    cfg = config(args, "rm", out, [])
    model, tokenizer = load_model(cfg.model, for_training=True, head="score")
    model.config.pad_token_id = tokenizer.pad_token_id

    def examples(records: list[Record]) -> Dataset:
        # The same ids, cut the same way, as stage rm trains on: TRL's own max_length
        # drops every longer pair instead (most of dpo_en_demo at 256 tokens).
        pairs = encode_pairs(records, tokenizer, get_template("chat"))  # type: ignore[arg-type]
        cut = reward_examples(pairs, args.cutoff)[0]
        return Dataset.from_list([{k: e[k] for k in ("chosen_ids", "rejected_ids")} for e in cut])

    train, held_out = split(cfg)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(
            **trl_arguments(cfg, args, out),
            max_length=None,
            center_rewards_coefficient=0.01,  # configs/rm.yaml's
        ),
        train_dataset=examples(train),
        eval_dataset=examples(held_out),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    return final_evals(trainer.state.log_history, "eval_accuracy", "eval_margin")


def dpo_ours(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run = run_training(config(args, "dpo", out, ["sft_weight=0"]))
    return final_evals(read_log(run), "eval_rewards/accuracies", "eval_rewards/margins")


def dpo_trl(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from llamaforge.models import load_model

    cfg = config(args, "dpo", out, [])
    train, held_out = split(cfg)
    model, tokenizer = load_model(cfg.model, for_training=True)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**trl_arguments(cfg, args, out), max_length=args.cutoff, beta=0.1),
        train_dataset=Dataset.from_list(text_pairs(train, tokenizer)),
        eval_dataset=Dataset.from_list(text_pairs(held_out, tokenizer)),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    return final_evals(trainer.state.log_history, "eval_rewards/accuracies", "eval_rewards/margins")


def split(cfg: RunConfig) -> tuple[list[Record], list[Record]]:
    train, held_out = stage_records(cfg)
    assert (len(train), len(held_out)) == (480, 120), (len(train), len(held_out))
    return train, held_out


def text_pairs(records: list[Record], tokenizer: Any) -> list[dict[str, Any]]:
    """The pairs as the texts llamaforge renders (chat template), for TRL's trainers."""
    pairs = pair_rows(records, tokenizer, get_template("chat"), adds_specials=True)
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs]


SIDES = {"rm_ours": rm_ours, "rm_trl": rm_trl, "dpo_ours": dpo_ours, "dpo_trl": dpo_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/llama_factory_demo"))
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of 8 pairs")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--bf16", action="store_true", help="every side in bf16 (bf16 CPUs)")
    parser.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES))
    args = parser.parse_args()
    report: dict[str, Any] = {"steps": args.steps, "cutoff": args.cutoff}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sides:
            start = time.monotonic()
            report[name] = SIDES[name](args, Path(tmp) / name)
            report[name]["wall_s"] = round(time.monotonic() - start, 1)
            print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
