"""Resuming on tiny models: refused when the run changed, incomplete checkpoints ignored,
Ctrl-C/SIGTERM leaves a resumable checkpoint and exit code 130. (Exact resume on the real
model, killed with SIGKILL: test_resume_real.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import OVERFIT_RECORDS, read_log, tiny_config, write_alpaca

from llamaforge.cli import main
from llamaforge.errors import ConfigError
from llamaforge.methods.sft import run_sft
from llamaforge.rundir import CHECKPOINT_MARKER, resolve_resume


def cli_args(model_dir: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        f"model={model_dir}",
        f"dataset={data}",
        f"output_dir={run_dir}",
        "precision=fp32",
        "batch_size=4",
        "micro_batch_size=4",
        "logging_steps=1",
        "lr_scheduler_type=constant",
        "learning_rate=1e-2",
        "save_steps=2",
        *extra,
    ]


@pytest.fixture
def finished_run(tiny_model_dir, overfit_data, tmp_path) -> Path:
    """A 4-step LoRA run with checkpoints at steps 2 and 4."""
    assert main(cli_args(tiny_model_dir, overfit_data, tmp_path / "run", "max_steps=4")) == 0
    return tmp_path / "run"


def test_resume_refuses_changed_data_or_settings(
    finished_run, tiny_model_dir, overfit_data, tmp_path, capsys
):
    capsys.readouterr()
    changed = write_alpaca(
        tmp_path / "changed.json", [*OVERFIT_RECORDS[:3], {**OVERFIT_RECORDS[3], "output": "Icy."}]
    )
    for data, extra, named in [
        (changed, (), "data_hash"),  # same records but one answer, at another path
        (overfit_data, ("learning_rate=5e-3",), "learning_rate"),
        (overfit_data, ("lora_r=4",), "lora_r"),
    ]:
        args = cli_args(tiny_model_dir, data, finished_run, "max_steps=6", *extra)
        assert main([*args, "resume_from_checkpoint=auto"]) == 2
        # The check needs the tokenized data's hash, so it runs after loading (not training).
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("error: cannot resume from"), errors
        assert "checkpoint-4" in errors[0] and f"{named}:" in errors[0]
    assert [r["step"] for r in read_log(finished_run)] == [1, 2, 3, 4]  # untouched


def test_resume_continues_with_resumable_changes_and_ignores_unmarked_checkpoints(
    finished_run, tiny_model_dir, overfit_data, tmp_path
):
    reference = tmp_path / "reference"
    assert main(cli_args(tiny_model_dir, overfit_data, reference, "max_steps=6")) == 0

    # A crash while checkpoint-4 was being written leaves it without the marker; a
    # half-written checkpoint-6 directory holds no marker either.
    (finished_run / "checkpoint-4" / CHECKPOINT_MARKER).unlink()
    (finished_run / "checkpoint-6").mkdir()
    fingerprint = json.loads((finished_run / "run_metadata.json").read_text())["fingerprint"]
    assert resolve_resume(finished_run, "auto", fingerprint) == finished_run / "checkpoint-2"
    with pytest.raises(ConfigError, match="no marker file"):
        resolve_resume(finished_run, str(finished_run / "checkpoint-4"), fingerprint)

    # The same records from another path: the data is identified by content, not location.
    moved = tmp_path / "moved" / "renamed.json"
    moved.parent.mkdir()
    moved.write_bytes(overfit_data.read_bytes())
    args = cli_args(tiny_model_dir, moved, finished_run, "max_steps=6", "save_total_limit=5")
    assert main([*args, "resume_from_checkpoint=auto"]) == 0
    log = read_log(finished_run)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # steps 3-4 logged again, once
    expected = read_log(reference)
    for ours, theirs in zip(log, expected, strict=True):
        assert ours["loss"] == theirs["loss"] and ours["learning_rate"] == theirs["learning_rate"]


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_130(tiny_model_dir, overfit_data, tmp_path):
    run_dir = tmp_path / "run"
    args = cli_args(tiny_model_dir, overfit_data, run_dir, "max_steps=100000", "save_steps=1000")
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaforge", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        log = run_dir / "trainer_log.jsonl"
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("error: interrupted: checkpoint-") and "resume_from_checkpoint=auto" in last
    )
    step = int(last.split("checkpoint-")[1].split()[0])
    assert step >= 3
    marker = json.loads((run_dir / f"checkpoint-{step}" / CHECKPOINT_MARKER).read_text())
    assert marker["step"] == step
    assert not (run_dir / "summary.json").exists()  # the run did not finish

    # Resumable: continue to step + 2 (max_steps may change on resume).
    cfg = tiny_config(
        tiny_model_dir,
        overfit_data,
        run_dir,
        max_steps=step + 2,
        save_steps=1000,
        resume_from_checkpoint="auto",
    )
    run_sft(cfg)
    assert [r["step"] for r in read_log(run_dir)] == list(range(1, step + 3))
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == step + 2


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(
    tiny_model_dir, overfit_data, tmp_path, extra_callbacks, capsys
):
    from transformers import TrainerCallback

    class PressCtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # during step 3
                os.kill(os.getpid(), signal.SIGINT)

    extra_callbacks.append(PressCtrlC())
    run_dir = tmp_path / "run"
    args = cli_args(tiny_model_dir, overfit_data, run_dir, "max_steps=50", "save_steps=1000")
    assert main(args) == 130
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"error: interrupted: checkpoint-3 saved in {run_dir}")
    )
    assert (run_dir / "checkpoint-3" / CHECKPOINT_MARKER).is_file()
    assert [r["step"] for r in read_log(run_dir)] == [1, 2, 3]
    # The handler is restored: a later Ctrl-C interrupts as usual.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_without_checkpoint_starts_fresh_in_an_empty_dir(
    tiny_model_dir, overfit_data, tmp_path
):
    run_dir = run_sft(
        tiny_config(
            tiny_model_dir,
            overfit_data,
            tmp_path / "new",
            max_steps=2,
            resume_from_checkpoint="auto",
        )
    )
    assert [r["step"] for r in read_log(run_dir)] == [1, 2]


def test_a_key_added_since_the_checkpoint_resumes_at_its_default(finished_run):
    """Checkpoints written before a key existed hold no value for it: the default."""
    fingerprint = json.loads((finished_run / "run_metadata.json").read_text())["fingerprint"]
    marker = finished_run / "checkpoint-4" / CHECKPOINT_MARKER
    saved = json.loads(marker.read_text())
    del saved["fingerprint"]["lr_scheduler_cycles"]
    marker.write_text(json.dumps(saved))
    assert resolve_resume(finished_run, "auto", fingerprint) == finished_run / "checkpoint-4"
    with pytest.raises(ConfigError, match="lr_scheduler_cycles: None → 3"):
        resolve_resume(finished_run, "auto", {**fingerprint, "lr_scheduler_cycles": 3})
