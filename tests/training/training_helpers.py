"""Helpers shared by the training tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamaforge.config import load_run_config
from llamaforge.config.sections import RunConfig

# Short records: the chat template's default system prompt dominates their length.
OVERFIT_RECORDS = [
    {"instruction": "Name a primary color.", "input": "", "output": "Red."},
    {"instruction": "What is two plus two?", "input": "", "output": "Four."},
    {"instruction": "Capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Opposite of hot?", "input": "", "output": "Cold."},
]


def write_alpaca(path: Path, records: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def tiny_config(model_dir: Path, data: Path, output_dir: Path, **values: Any) -> RunConfig:
    """A deterministic fp32 run on a tiny model: full-batch steps, a log line per step."""
    defaults: dict[str, Any] = {
        "model": str(model_dir),
        "dataset": [str(data)],
        "output_dir": str(output_dir),
        "precision": "fp32",
        "batch_size": 4,
        "micro_batch_size": 4,
        "max_steps": 6,
        "logging_steps": 1,
        "lr_scheduler_type": "constant",
        "learning_rate": 1e-2,
    }
    defaults.update(values)
    return load_run_config(None, (), **defaults)


def real_preference_config(stage: str, train: Path, held_out: Path, tmp_path: Path) -> RunConfig:
    """A short preference run on the bundled model: 16 records of ``train`` and 8 of
    ``held_out`` (the validation split, val_set_size 8), 4 LoRA q/v steps of 4, evaluated
    before and after."""
    rows = json.loads(train.read_text())[:16] + json.loads(held_out.read_text())[:8]
    data = tmp_path / "preference_data.json"
    data.write_text(json.dumps(rows))
    return load_run_config(
        None,
        stage=stage,
        model="smollm2-135m",
        dataset=[str(data)],
        output_dir=str(tmp_path / "run"),
        precision="fp32",
        val_set_size=8,
        batch_size=4,
        micro_batch_size=4,
        max_steps=4,
        eval_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        lora_target_modules=["q_proj", "v_proj"],
    )


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def logged_losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_log(run_dir) if "loss" in record]


@dataclass
class AttachedModel:
    """The model `run_sft` trained (the object itself) and its parameters before training."""

    model: Any = None
    before: dict[str, torch.Tensor] = field(default_factory=dict)
    trainable: set[str] = field(default_factory=set)

    def changed(self) -> set[str]:
        after = dict(self.model.named_parameters())
        return {name for name, value in self.before.items() if not torch.equal(value, after[name])}
