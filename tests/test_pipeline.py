"""`llamaforge pipeline`: stages in order, each on the one before; finished stages are
skipped, an interrupted one resumes exactly (the final adapter equals an uninterrupted run's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llamaforge.errors import ConfigError
from llamaforge.pipeline import STATE_FILE, run_pipeline
from llamaforge.rundir import CHECKPOINT_MARKER

SFT_STEPS = 12


def _write_pipeline(tmp_path: Path, model: Path, output: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"The {w} river runs past the old mill." for w in "abcdefgh"), encoding="utf-8"
    )
    records = [
        {"instruction": f"Name {i}.", "input": "", "output": f"Number {i}."} for i in range(8)
    ]
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    common = {
        "precision": "fp32",
        "micro_batch_size": 4,
        "batch_size": 4,
        "logging_steps": 1,
        "lr_scheduler_type": "constant",
        "learning_rate": 1e-2,
    }
    pipeline = {
        "output_dir": str(output),
        "stages": [
            {
                "name": "pt",
                "train": {
                    "stage": "pt",
                    "model": str(model),
                    "dataset": [str(corpus)],
                    "cutoff_len": 16,
                    "max_steps": 3,
                    **common,
                },
            },
            {
                "name": "sft",
                "train": {
                    "model": "@pt",
                    "dataset": [str(data)],
                    "max_steps": SFT_STEPS,
                    "save_steps": 2,
                    "save_total_limit": 2,
                    **common,
                },
            },
        ],
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(json.dumps(pipeline), encoding="utf-8")  # JSON is YAML
    return path


def _adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter_model.safetensors")


def test_a_pipeline_killed_in_its_second_stage_ends_like_an_uninterrupted_one(
    tiny_model_dir, tmp_path
):
    reference = run_pipeline(_write_pipeline(tmp_path, tiny_model_dir, tmp_path / "reference"))
    state = json.loads((reference / STATE_FILE).read_text())["completed"]
    assert list(state) == ["pt", "sft"]
    sft_config = (reference / "sft" / "config.yaml").read_text()
    assert str(reference / "pt") in sft_config  # the second stage trained on the first

    output = tmp_path / "killed"
    pipeline = _write_pipeline(tmp_path, tiny_model_dir, output)
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaforge", "pipeline", str(pipeline)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = output / "sft" / "checkpoint-2" / CHECKPOINT_MARKER
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the second stage never reached its first checkpoint"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (output / "sft" / "summary.json").exists()  # killed mid-stage
    pt_adapter = (output / "pt" / "adapter_model.safetensors").stat().st_mtime_ns

    run_pipeline(pipeline)
    assert (output / "pt" / "adapter_model.safetensors").stat().st_mtime_ns == pt_adapter
    ours, theirs = _adapter(output / "sft"), _adapter(reference / "sft")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max() <= 1e-6, name


def test_a_finished_stage_with_changed_settings_is_refused(tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / STATE_FILE).write_text(json.dumps({"completed": {"pt": "0123456789abcdef"}}))
    pipeline = _write_pipeline(tmp_path, tiny_model_dir, output)
    with pytest.raises(ConfigError, match="stage 'pt' finished with other settings"):
        run_pipeline(pipeline, dry_run=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("output_dir: x\nstages:\n  - name: a\n    bake: {}\n", r":3: stage 'a' needs exactly one"),
        (
            "output_dir: x\nstages:\n  - name: a\n    train: {model: '@b'}\n",
            r":3: '@b' names no earlier stage",
        ),
        (
            "output_dir: x\nstages:\n  - name: a\n    train:\n      lerning_rate: 1\n",
            r"p\.yaml:5: unknown key 'lerning_rate'",
        ),
        (
            "output_dir: x\nstages:\n  - name: a\n    train:\n      output_dir: y\n",
            r":5: stage 'a': key 'output_dir' is set by the pipeline",
        ),
    ],
)
def test_pipeline_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        run_pipeline(path)


def test_extend_then_pretrain_the_new_token_rows(tiny_model_dir, tmp_path):
    corpus = Path(__file__).parent / "models" / "fixtures" / "zh_corpus.txt"
    pipeline = tmp_path / "zh.yaml"
    pipeline.write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path / "zh"),
                "stages": [
                    {
                        "name": "extend",
                        "tokenizer_extend": {
                            "model": str(tiny_model_dir),
                            "corpus": [str(corpus)],
                            "add": 50,
                        },
                    },
                    {
                        "name": "pt",
                        "train": {
                            "stage": "pt",
                            "model": "@extend",
                            "train_new_tokens": True,
                            "dataset": [str(corpus)],
                            "cutoff_len": 32,
                            "micro_batch_size": 2,
                            "batch_size": 2,
                            "max_steps": 2,
                            "precision": "fp32",
                        },
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    output = run_pipeline(pipeline)
    assert json.loads((output / "extend" / "config.json").read_text())["vocab_size"] == 49202
    adapter = _adapter(output / "pt")
    rows = [k for k in adapter if "trainable_tokens" in k]
    assert rows and all(adapter[k].shape[0] == 50 for k in rows)
    assert list(json.loads((output / STATE_FILE).read_text())["completed"]) == ["extend", "pt"]
