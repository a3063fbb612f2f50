"""Benchmark: a reward model's held-out pairwise accuracy and margin, untrained vs trained.

    python benchmarks/rm_accuracy.py quickstart          # examples/quickstart pairs
    python benchmarks/rm_accuracy.py demo --data-dir ../shared/data/llama_factory_demo

``quickstart`` trains configs/rm.yaml on ``train_pairs.json`` and scores
``held_out_pairs.json`` (questions never trained on) with the untrained head (same seed,
same pad token) and with the trained run. ``demo`` trains on LLaMA-Factory's
``dpo_en_demo`` + ``dpo_zh_demo`` with a seeded 80/20 split (``val_set_size: 0.2``); the
held-out figures are the run's own evaluations (step 0 = the untrained head). Extra
``key=value`` arguments override the config (e.g. ``cutoff_len=256 num_epochs=1``). The
last line printed is JSON: ``{"before": {"accuracy", "margin"}, "after": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from llamaforge.config import load_run_config
from llamaforge.config.sections import ModelConfig
from llamaforge.data import read_records
from llamaforge.evaluation.reward_scores import score_pairs
from llamaforge.methods import run_training
from llamaforge.models import load_model
from llamaforge.rundir import read_log

ROOT = Path(__file__).resolve().parents[1]


def quickstart(output: Path, overrides: list[str]) -> dict[str, object]:
    cfg = load_run_config(ROOT / "configs" / "rm.yaml", [f"output_dir={output}", *overrides])
    run = run_training(cfg)
    held_out = read_records(ROOT / "examples" / "quickstart" / "held_out_pairs.json")
    model, tokenizer = load_model(ModelConfig(model=str(run)), head="score")
    after = score_pairs(model, tokenizer, held_out, cfg)
    torch.manual_seed(cfg.training.seed)  # the head the run started from
    base, base_tokenizer = load_model(cfg.model, head="score")
    base_tokenizer.pad_token = tokenizer.pad_token
    base.config.pad_token_id = tokenizer.pad_token_id
    before = score_pairs(base, base_tokenizer, held_out, cfg)
    return {
        "before": {"accuracy": before.accuracy, "margin": before.margin},
        "after": {"accuracy": after.accuracy, "margin": after.margin},
    }


def demo(output: Path, data_dir: str, overrides: list[str]) -> dict[str, object]:
    cfg = load_run_config(
        ROOT / "configs" / "rm.yaml",
        [
            "dataset=[dpo_en_demo,dpo_zh_demo]",
            f"dataset_dir={Path(data_dir).resolve()}",
            "val_set_size=0.2",
            "cutoff_len=512",
            "num_epochs=1",
            "eval_steps=30",
            "save_steps=30",
            f"output_dir={output}",
            *overrides,
        ],
    )
    run = run_training(cfg)
    evals = [r for r in read_log(run) if "eval_accuracy" in r]
    figures = [
        {"step": r["step"], "accuracy": r["eval_accuracy"], "margin": r["eval_margin"]}
        for r in evals
    ]
    return {"before": figures[0], "after": figures[-1], "evals": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("quickstart", "demo"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/llama_factory_demo"))
    parser.add_argument("--output", default=None, help="run directory (default: a temp dir)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(args.output) if args.output else Path(tmp) / "run"
        if args.which == "quickstart":
            result = quickstart(output, args.overrides)
        else:
            result = demo(output, args.data_dir, args.overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
