"""Stage ppo end to end on a tiny model: the run directory (adapter, value head, logs,
held-out rewards before and after), options refused with a clear message, and a run
SIGKILLed mid-rollout that resumes to the same logged losses and rewards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import read_log, tiny_config

from llamaforge.errors import ConfigError
from llamaforge.methods import run_training
from llamaforge.rundir import CHECKPOINT_MARKER

PROMPTS = [
    {"instruction": f"Name a colour, number {i}.", "input": "", "output": ""} for i in range(8)
]
OPTIONS = {
    "stage": "ppo",
    "rewards": {"length": 1.0},
    "length_band": [2, 4],
    "max_completion_length": 6,
    "rollout_size": 2,
    "num_generations": 2,
    "ppo_epochs": 2,
    "batch_size": 2,
    "micro_batch_size": 2,
    "lora_dropout": 0.0,
    "learning_rate": 1e-2,
}


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


def test_ppo_run_directory(tiny_model_dir, prompts_file, tmp_path):
    held_out = tmp_path / "held_out.json"
    held_out.write_text(json.dumps(PROMPTS[:3]))
    cfg = tiny_config(
        tiny_model_dir, prompts_file, tmp_path / "run", max_steps=4, held_out=[str(held_out)],
        **OPTIONS,
    )  # fmt: skip
    run = run_training(cfg)
    assert (run / "adapter_model.safetensors").is_file() and (
        run / "value_head.safetensors"
    ).is_file()
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"ppo/score", "ppo/kl", "ppo/entropy", "ppo/clip_fraction", "ppo/value_loss",
            "ppo/explained_variance", "ppo/response_length"} <= log[0].keys()  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["held_out"]["records"] == 3
    assert 0.0 <= summary["held_out"]["reward_before"] <= 1.0
    answers = [json.loads(x) for x in (run / "held_out_answers.jsonl").read_text().splitlines()]
    assert (
        len(answers) == 3
        and {"before", "after", "before_reward", "after_reward"} <= answers[0].keys()
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rollout_size": 3, "num_generations": 1}, "multiple of batch_size"),
        ({"ppo_epochs": 0}, "'ppo_epochs': must be >= 1"),
        ({"lam": 1.5}, "'lam': must be in [0, 1]"),
        ({"kl_target": 0.0}, "'kl_target': must be > 0"),
        ({"lora_dropout": 0.1}, "lora_dropout"),
        ({"finetuning": "full"}, "reference"),
    ],
)
def test_refused_options(tiny_model_dir, prompts_file, tmp_path, values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_config(tiny_model_dir, prompts_file, tmp_path / "run", **{**OPTIONS, **values})


def test_sigkilled_ppo_run_resumes_exactly(tiny_model_dir, prompts_file, tmp_path):
    steps = 12  # 4 steps per rollout batch; checkpoint 6 is inside the second

    def command(run_dir: Path, *extra: str) -> list[str]:
        options = [f"{k}={json.dumps(v)}" for k, v in OPTIONS.items()]
        return [
            sys.executable, "-m", "llamaforge", "train", *options,
            f"model={tiny_model_dir}", f"dataset={prompts_file}", f"output_dir={run_dir}",
            "precision=fp32", "logging_steps=1", f"max_steps={steps}", "save_steps=6", *extra,
        ]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_dir, killed_dir = tmp_path / "a", tmp_path / "b"
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True, "env": env}
    reference = subprocess.Popen(command(reference_dir), **pipes)
    victim = subprocess.Popen(command(killed_dir), **pipes)
    try:
        marker = killed_dir / "checkpoint-6" / CHECKPOINT_MARKER
        deadline = time.monotonic() + 300
        while not marker.is_file():
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint-6 in time"
            time.sleep(0.05)
        victim.kill()  # SIGKILL: no handler, no final save
        victim.communicate()
        assert not (killed_dir / "summary.json").exists()
        resumed = subprocess.run(
            command(killed_dir, "resume_from_checkpoint=auto"),
            capture_output=True,
            text=True,
            env=env,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, err = reference.communicate(timeout=600)
        assert reference.returncode == 0, err[-3000:]
    finally:
        for process in (reference, victim):
            if process.poll() is None:
                process.kill()
                process.communicate()
    expected, got = read_log(reference_dir), read_log(killed_dir)
    assert [r["step"] for r in got] == list(range(1, steps + 1)) == [r["step"] for r in expected]
    for a, b in zip(expected[6:], got[6:], strict=True):  # 6 steps after the checkpoint
        compared = {k for k in a if k.startswith(("loss", "ppo/"))}
        assert compared == {k for k in b if k.startswith(("loss", "ppo/"))}, a.keys() ^ b.keys()
        wrong = {
            k: (a[k], b[k]) for k in a if k.startswith(("loss", "ppo/")) and abs(a[k] - b[k]) > 1e-6
        }
        assert not wrong, (a["step"], wrong)
    assert "ppo/score" in expected[8]  # step 9 made the third rollout batch
