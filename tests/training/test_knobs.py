"""Training keys that are easy to accept and ignore, each shown doing what it says on a tiny
run, seen only through the run directory (trainer_log.jsonl, checkpoint-N/, summary.json):
save_total_limit, load_best_model_at_end, early_stopping_patience, group_by_length and
report_to tensorboard. (Schedules and warmup: test_lr_schedules.py.)"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from training_helpers import read_log, tiny_config, write_alpaca

from llamaforge.config import load_run_config
from llamaforge.errors import ConfigError
from llamaforge.methods import run_training

# Each answer's tokens appear in no other answer (checked: no shared token ids), and with
# a prompt template and no EOS only answer tokens are trained. Held-out answers are then
# made of tokens training never rewards: once the model memorizes its training answers,
# the eval loss rises (10.8 → 21 in 8 full fine-tuning steps at lr 0.1).
DISJOINT_ANSWERS = [
    "apple banana cherry grape lemon",
    "tiger zebra monkey rabbit horse",
    "Paris London Berlin Madrid Rome",
    "violin guitar piano trumpet flute",
    "copper silver nickel cobalt zinc",
    "Monday Tuesday Friday Sunday Thursday",
    "hammer wrench shovel chisel drill",
    "purple orange yellow crimson teal",
]
WORSENING_EVAL = {
    "template": "alpaca",
    "add_eos_token": False,
    "val_set_size": 2,
    "eval_steps": 1,
    "lr_scheduler_type": "constant",
}


@pytest.fixture
def disjoint_data(tmp_path: Path) -> Path:
    records = [
        {"instruction": f"List group {i}.", "input": "", "output": answer}
        for i, answer in enumerate(DISJOINT_ANSWERS)
    ]
    return write_alpaca(tmp_path / "disjoint.json", records)


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if p.is_dir())


def eval_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in read_log(run_dir) if "eval_loss" in r}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_save_total_limit_keeps_only_the_newest_checkpoints(tiny_model_dir, overfit_data, tmp_path):
    run_dir = run_training(
        tiny_config(
            tiny_model_dir, overfit_data, tmp_path / "run", max_steps=5, save_steps=1,
            save_total_limit=2,
        )
    )  # fmt: skip
    assert checkpoint_steps(run_dir) == [4, 5]


def test_load_best_model_at_end_saves_the_best_checkpoints_adapter(
    tiny_model_dir, disjoint_data, tmp_path
):
    run_dir = run_training(
        tiny_config(
            tiny_model_dir,
            disjoint_data,
            tmp_path / "run",
            finetuning="lora",
            lora_dropout=0.0,
            learning_rate=0.3,
            max_steps=6,
            save_steps=1,
            save_total_limit=2,
            load_best_model_at_end=True,
            **WORSENING_EVAL,
        )
    )
    evals = eval_losses(run_dir)
    assert sorted(evals) == [1, 2, 3, 4, 5, 6]
    best = min(evals, key=evals.__getitem__)
    assert best != 6, f"the last step was the best: nothing to tell apart ({evals})"
    assert Path(summary(run_dir)["best_checkpoint"]).name == f"checkpoint-{best}"
    # save_total_limit keeps the best checkpoint besides the newest one.
    assert checkpoint_steps(run_dir) == [best, 6]

    final = load_file(run_dir / "adapter_model.safetensors")
    at_best = load_file(run_dir / f"checkpoint-{best}" / "adapter_model.safetensors")
    at_last = load_file(run_dir / "checkpoint-6" / "adapter_model.safetensors")
    assert final.keys() == at_best.keys() and any("lora_B" in k for k in final)
    assert all((final[k] == at_best[k]).all() for k in final)
    assert any((final[k] != at_last[k]).any() for k in final)


def test_early_stopping_stops_when_eval_loss_stops_improving(
    tiny_model_dir, disjoint_data, tmp_path
):
    patience, max_steps = 2, 12
    run_dir = run_training(
        tiny_config(
            tiny_model_dir,
            disjoint_data,
            tmp_path / "run",
            finetuning="full",
            learning_rate=0.1,
            max_steps=max_steps,
            early_stopping_patience=patience,
            **WORSENING_EVAL,
        )
    )
    evals = eval_losses(run_dir)
    # The step where `patience` evaluations in a row have not beaten the best before them.
    best, misses, expected_stop = float("inf"), 0, None
    for step in sorted(evals):
        best, misses = (evals[step], 0) if evals[step] < best else (best, misses + 1)
        if misses == patience:
            expected_stop = step
            break
    assert expected_stop is not None and expected_stop < max_steps, evals
    assert summary(run_dir)["global_step"] == expected_stop
    assert max(evals) == expected_stop


@pytest.mark.slow  # 16 steps: 15-60 s on a busy 2-core machine
def test_group_by_length_batches_examples_of_similar_length(tiny_model_dir, tmp_path):
    """32 short and 32 long records (37-38 vs 125-126 tokens), two per step: each step's
    token count (the difference of `tokens_seen`) says whether it paired two short, two
    long or one of each. Grouped, a step mixes them at most once per sorted run of 16
    examples; a random order mixes about half of the steps (8 of 16 expected; 8 with this
    seed), and would mix at most 2 of 16 by chance with probability ~0.2 %."""
    long_answer = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
    names = [f"{a}{b}" for a in "ABCD" for b in "ABCDEFGH"]
    records = [{"instruction": f"Item {n}.", "input": "", "output": "Yes."} for n in names] + [
        {"instruction": f"Item {n}.", "input": "", "output": long_answer} for n in names
    ]
    data = write_alpaca(tmp_path / "lengths.json", records)
    run_dir = run_training(
        tiny_config(
            tiny_model_dir,
            data,
            tmp_path / "run",
            batch_size=2,
            micro_batch_size=2,
            max_steps=16,
            save_steps=1000,
            learning_rate=1e-3,
            group_by_length=True,
        )
    )

    seen = [r["tokens_seen"] for r in read_log(run_dir) if "loss" in r]
    per_step = [b - a for a, b in itertools.pairwise([0, *seen])]
    assert len(per_step) == 16
    two_short, two_long = min(per_step), max(per_step)  # 74-76 and 250-252 here
    assert two_long - two_short > 150, per_step
    mixed = [t for t in per_step if two_short + 20 < t < two_long - 20]
    assert len(mixed) <= 2, per_step


def test_tensorboard_event_file_holds_the_logged_losses(tiny_model_dir, overfit_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run_training(
        tiny_config(
            tiny_model_dir, overfit_data, tmp_path / "run", max_steps=3, save_steps=1000,
            report_to=["tensorboard"],
        )
    )  # fmt: skip
    events = list(run_dir.glob("runs/*/events.out.tfevents.*"))  # transformers' default place
    assert len(events) == 1, list(run_dir.rglob("*tfevents*"))
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    scalars = board.Scalars("train/loss")
    logged = [r for r in read_log(run_dir) if "loss" in r]
    assert [s.step for s in scalars] == [r["step"] for r in logged] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [s.value for s in board.Scalars("train/learning_rate")] == pytest.approx([1e-2] * 3)


# load_best_model_at_end keeps the best *saved* checkpoint, so checkpoints must be written
# where evaluations happen. Unset intervals mean once per epoch.
MISMATCHED_INTERVALS = [
    # (eval_steps, save_steps, the fix the message proposes)
    (2, None, "save_steps=2"),
    (None, 2, "eval_steps=2"),
    (2, 3, "save_steps=2"),
]
MATCHING_INTERVALS = [(None, None), (2, 2), (2, 4)]


def best_model_overrides(eval_steps: int | None, save_steps: int | None) -> list[str]:
    overrides = ["load_best_model_at_end=true", "val_set_size=1"]
    overrides += [f"eval_steps={eval_steps}"] if eval_steps else []
    return overrides + ([f"save_steps={save_steps}"] if save_steps else [])


@pytest.mark.parametrize(("eval_steps", "save_steps", "fix"), MISMATCHED_INTERVALS)
def test_load_best_model_refuses_checkpoints_that_miss_evaluations(eval_steps, save_steps, fix):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, best_model_overrides(eval_steps, save_steps))
    message = str(info.value)
    for key in ("load_best_model_at_end", "eval_steps", "save_steps", fix):
        assert key in message, message


@pytest.mark.parametrize(("eval_steps", "save_steps"), MATCHING_INTERVALS)
def test_load_best_model_accepts_checkpoints_at_evaluations(eval_steps, save_steps):
    load_run_config(None, best_model_overrides(eval_steps, save_steps))


@pytest.mark.parametrize(
    ("eval_steps", "save_steps", "accepted"),
    [(e, s, False) for e, s, _ in MISMATCHED_INTERVALS]
    + [(e, s, True) for e, s in MATCHING_INTERVALS],
)
def test_transformers_draws_the_same_line(eval_steps, save_steps, accepted, tmp_path):
    """Our rule is transformers' rule, for the strategies our keys map to (an interval set:
    "steps", unset: "epoch"): if transformers relaxes it, this fails and the check can go."""
    from transformers import TrainingArguments

    def build() -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(tmp_path),
            load_best_model_at_end=True,
            eval_strategy="steps" if eval_steps else "epoch",
            eval_steps=eval_steps,
            save_strategy="steps" if save_steps else "epoch",
            save_steps=save_steps or 500,
            use_cpu=True,
            report_to="none",
        )

    if accepted:
        build()
    else:
        with pytest.raises(ValueError, match="load_best_model_at_end requires"):
            build()
