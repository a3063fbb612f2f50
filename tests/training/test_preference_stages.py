"""Stages kto, orpo and simpo on a tiny model: each raises the held-out reward margin on
the project's preference set (KTO from its labelled answers and from pairs), trains only
the adapter, and refuses data of the wrong kind; and each raises it in a few steps on the
bundled model. The feedback reader: messages + label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import read_log, real_preference_config, tiny_config

from llamaforge.data.formats import Feedback, read_records
from llamaforge.errors import DataError
from llamaforge.methods import run_training

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


def subset(tmp_path: Path, name: str, count: int) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(json.loads((QUICKSTART / name).read_text())[:count]))
    return path


def held_out_margins(run_dir: Path) -> list[float]:
    return [r["eval_rewards/margins"] for r in read_log(run_dir) if "eval_rewards/margins" in r]


@pytest.mark.parametrize(
    "stage, data, count",
    [
        ("kto", "train_kto.json", 32),  # labelled answers
        ("kto", "train_pairs.json", 24),  # pairs, split into a good and a bad answer
        ("orpo", "train_pairs.json", 24),
        ("simpo", "train_pairs.json", 24),
    ],
)
def test_stage_raises_the_held_out_margin(
    stage, data, count, tiny_model_dir, tmp_path, capture_attach
):
    cfg = tiny_config(
        tiny_model_dir,
        subset(tmp_path, data, count),
        tmp_path / "run",
        stage=stage,
        val_set_size=8,
        max_steps=8,
        eval_steps=8,
    )
    run_dir = run_training(cfg)
    before, after = held_out_margins(run_dir)
    assert after > before + 0.005, read_log(run_dir)  # ORPO: beta 0.1 × mean log-prob
    # KTO logs a margin only for micro-batches holding both kinds of answer.
    assert any("rewards/margins" in r for r in read_log(run_dir) if "loss" in r)
    changed = capture_attach.changed()
    assert changed and all("lora_" in name for name in changed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_metrics"]["eval_rewards/margins"] == after


def test_feedback_records_and_their_errors(tmp_path):
    records = read_records(QUICKSTART / "train_kto.json")
    assert all(isinstance(r, Feedback) for r in records)
    assert records[0].prompt[-1].content == "Subtract 2 from 9."
    assert (records[0].completion, records[0].desirable) == ("The answer is 7", False)
    bad = tmp_path / "bad.json"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    bad.write_text(json.dumps([{"messages": turns, "label": "yes"}]))
    with pytest.raises(DataError, match=r"bad\.json: record 1.*'label' must be true"):
        read_records(bad, format="kto")  # unforced, a non-boolean label is a plain chat


def test_pair_stages_refuse_unpaired_answers(tiny_model_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir, subset(tmp_path, "train_kto.json", 8), tmp_path / "run", stage="orpo"
    )
    with pytest.raises(DataError, match="this stage trains on chosen/rejected pairs"):
        run_training(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, train, held_out, rise",
    [
        ("kto", "train_kto.json", "held_out_kto.json", 0.05),
        ("orpo", "train_pairs.json", "held_out_pairs.json", 0.01),  # beta 0.1 × log-odds
        ("simpo", "train_pairs.json", "held_out_pairs.json", 0.05),
    ],
)
def test_real_model_steps_raise_the_held_out_margin(
    stage, train, held_out, rise, tmp_path, smollm2_cached
):
    """The bundled model, 4 steps of 4 on the project's set, 8 held-out records."""
    cfg = real_preference_config(stage, QUICKSTART / train, QUICKSTART / held_out, tmp_path)
    run_dir = run_training(cfg)
    before, after = held_out_margins(run_dir)
    assert after > before + rise, read_log(run_dir)
