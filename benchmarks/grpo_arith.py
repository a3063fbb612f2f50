"""Benchmark: GRPO on the project's arithmetic problems, held-out greedy accuracy before and
after (the acceptance figure: +20 points within 30 minutes on the 2-core CPU).

    python benchmarks/grpo_arith.py                  # train configs/grpo_arith.yaml
    python benchmarks/grpo_arith.py max_steps=30     # key=value overrides of the config
    python benchmarks/grpo_arith.py --baseline-only  # the bundled model's accuracy only

The run scores examples/arith/held_out.json before and after training itself
(summary.json ``held_out``); this script prints those with the wall time and the split by
language. ``--baseline-only`` answers the held-out problems greedily with the bundled
model in float32, batched through the generation engine, as the stage does before it
trains. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from llamaforge.config import load_run_config
from llamaforge.config.sections import ModelConfig
from llamaforge.data import read_records
from llamaforge.inference.engine import GenerationEngine
from llamaforge.methods import run_training
from llamaforge.models import load_model
from llamaforge.rewards.held_out import problems, score_held_out

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "grpo_arith.yaml"
HELD_OUT = ROOT / "examples" / "arith" / "held_out.json"


def is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def by_language(questions: list[str], correct: list[bool]) -> dict[str, float]:
    split: dict[str, list[bool]] = {"en": [], "zh": []}
    for question, ok in zip(questions, correct, strict=True):
        split["zh" if is_chinese(question) else "en"].append(ok)
    return {lang: round(sum(v) / len(v), 4) for lang, v in split.items() if v}


def baseline(max_new_tokens: int) -> dict[str, object]:
    prompts, references = problems(read_records(HELD_OUT))
    model, tokenizer = load_model(ModelConfig(model="smollm2-135m", dtype="float32"))
    engine = GenerationEngine(model, tokenizer)
    start = time.monotonic()
    score = score_held_out(engine, prompts, references, max_new_tokens)
    return {
        "held_out": len(prompts),
        "max_new_tokens": max_new_tokens,
        "accuracy": score.accuracy,
        "by_language": by_language([p[-1].content for p in prompts], score.correct),
        "seconds": round(time.monotonic() - start, 1),
    }


def train(overrides: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        given = any(o.startswith("output_dir=") for o in overrides)
        output = [] if given else [f"output_dir={tmp}/run"]
        cfg = load_run_config(CONFIG, [*output, *overrides])
        start = time.monotonic()
        run_dir = run_training(cfg)
        wall = time.monotonic() - start
        summary = json.loads((run_dir / "summary.json").read_text())
        answers = [json.loads(line) for line in (run_dir / "held_out_answers.jsonl").open()]
    questions = [a["prompt"] for a in answers]
    split = {
        when: by_language(questions, [a[f"{when}_correct"] for a in answers])
        for when in ("before", "after")
    }
    held = summary["held_out"]
    return {
        **held,
        "gain_points": round(100 * (held["accuracy_after"] - held["accuracy_before"]), 1),
        "by_language": split,
        "steps": summary["global_step"],
        "train_wall_s": summary["wall_time_s"],
        "total_wall_s": round(wall, 1),
        "final_reward": summary["final_metrics"].get("reward"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = parser.parse_args()
    cfg = load_run_config(CONFIG, args.overrides)
    result = (
        baseline(cfg.options.max_completion_length) if args.baseline_only else train(args.overrides)
    )
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
