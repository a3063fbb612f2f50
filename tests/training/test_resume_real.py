"""Exact resume on the real model: a run killed with SIGKILL after a checkpoint and resumed
with `resume_from_checkpoint=auto` logs the same losses, step for step, as one that never
stopped, and ends with the same adapter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import read_log, write_alpaca

from llamaforge.rundir import CHECKPOINT_MARKER

CAPITALS = [
    ("France", "Paris"),
    ("Peru", "Lima"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
    ("Egypt", "Cairo"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
]
RECORDS = [{"instruction": f"Capital of {c}?", "input": "", "output": f"{k}."} for c, k in CAPITALS]
RECORDS += [
    {"instruction": f"Add {i} and {i + 3}.", "input": "", "output": f"{2 * i + 3}."}
    for i in range(8)
]
STEPS = 24


def train_command(data: Path, run_dir: Path, *extra: str) -> list[str]:
    # 16 records, 2 per step (gradient accumulation 2 × micro-batch 1): 3 epochs in 24
    # steps, so the resumed run must also restore the per-epoch shuffling; LoRA dropout
    # (default 0.05) makes it restore the RNG state too. fp32: bit-exact on CPU.
    return [
        sys.executable,
        "-m",
        "llamaforge",
        "train",
        "model=smollm2-135m",
        f"dataset={data}",
        f"output_dir={run_dir}",
        f"max_steps={STEPS}",
        "save_steps=4",
        "logging_steps=1",
        "batch_size=2",
        "micro_batch_size=1",
        "cutoff_len=64",
        "precision=fp32",
        "lora_target_modules=[q_proj,v_proj]",
        "learning_rate=1e-3",
        *extra,
    ]


def finish(process: subprocess.Popen[str]) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly(tmp_path, smollm2_cached):
    data = write_alpaca(tmp_path / "train.json", RECORDS)
    uninterrupted, killed = tmp_path / "a", tmp_path / "b"
    # The uninterrupted run goes alongside the other two, one core each: same thread
    # count everywhere, so the same floating-point sums.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(command: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )

    victim = start(train_command(data, killed))
    reference = start(train_command(data, uninterrupted))
    try:
        # Kill B right after its step-8 checkpoint is marked complete.
        marker = killed / "checkpoint-8" / CHECKPOINT_MARKER
        deadline = time.monotonic() + 500
        try:
            while not marker.is_file():
                assert victim.poll() is None, victim.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no checkpoint-8 in time"
                time.sleep(0.05)
        finally:
            victim.kill()  # SIGKILL: no handler, no final save
            victim.communicate()
        assert not (killed / "summary.json").exists()
        assert not (killed / "checkpoint-12" / CHECKPOINT_MARKER).exists()

        finish(start(train_command(data, killed, "resume_from_checkpoint=auto")))
        finish(reference)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.communicate()

    expected, resumed = read_log(uninterrupted), read_log(killed)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))
    for a, b in zip(expected, resumed, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-9)
    # The loss curve is a real one (falls), not a constant that would match trivially.
    assert expected[-1]["loss"] < expected[0]["loss"] / 2

    a = load_file(uninterrupted / "adapter_model.safetensors")
    b = load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert any(torch.count_nonzero(v) for k, v in a.items() if "lora_B" in k)
