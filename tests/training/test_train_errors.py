"""`llamaforge train` with bad input: exit code 2, one line naming the key or file and the
fix, and no model loaded (the loader is replaced by one that fails the test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llamaforge.cli import main


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamaforge.methods.pt as pt
    import llamaforge.methods.sft as sft

    def refuse(*args, **kwargs):
        pytest.fail("the model was loaded before the input was checked")

    monkeypatch.setattr(sft, "load_model", refuse)
    monkeypatch.setattr(pt, "load_model", refuse)


def train_error(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    code = main(["train", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def base_args(tmp_path: Path, overfit_data: Path) -> list[str]:
    return [
        f"model={tmp_path / 'never-loaded'}",
        f"dataset={overfit_data}",
        f"output_dir={tmp_path / 'run'}",
    ]


@pytest.mark.usefixtures("no_model_load")
class TestRefusedBeforeModelLoad:
    def test_unknown_template(self, tmp_path, overfit_data, capsys):
        line = train_error(capsys, *base_args(tmp_path, overfit_data), "template=alpacca")
        assert "unknown template 'alpacca'" in line and "alpaca" in line.split("alpacca")[-1]

    def test_missing_dataset_file(self, tmp_path, overfit_data, capsys):
        missing = tmp_path / "nope" / "train.json"
        line = train_error(capsys, *base_args(tmp_path, overfit_data)[::2], f"dataset={missing}")
        assert str(missing) in line and "file not found" in line

    def test_no_dataset(self, tmp_path, overfit_data, capsys):
        line = train_error(capsys, f"model={tmp_path}", f"output_dir={tmp_path / 'run'}")
        assert "key 'dataset'" in line

    @pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is fine on a GPU")
    def test_fp16_on_cpu(self, tmp_path, overfit_data, capsys):
        line = train_error(capsys, *base_args(tmp_path, overfit_data), "precision=fp16")
        assert "key 'precision'" in line and "bf16 or fp32" in line

    def test_qlora_without_bitsandbytes(self, tmp_path, overfit_data, capsys, monkeypatch):
        real = importlib.util.find_spec

        def find_spec(name, *args, **kwargs):
            return None if name == "bitsandbytes" else real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        line = train_error(capsys, *base_args(tmp_path, overfit_data), "finetuning=qlora")
        assert "bitsandbytes" in line and "pip install" in line

    def test_output_dir_holding_a_run(self, tmp_path, overfit_data, capsys):
        run = tmp_path / "run"
        run.mkdir()
        (run / "run_metadata.json").write_text("{}")
        (run / "config.yaml").write_text("learning_rate: 0.5\n")
        line = train_error(capsys, *base_args(tmp_path, overfit_data))
        assert "key 'output_dir'" in line and "resume_from_checkpoint=auto" in line
        assert (run / "config.yaml").read_text() == "learning_rate: 0.5\n"  # left alone

    def test_world_size_without_a_launcher(self, tmp_path, overfit_data, capsys, monkeypatch):
        """WORLD_SIZE=2 but no torchrun rendezvous: accelerate would crash with a traceback
        about MASTER_ADDR deep inside TrainingArguments."""
        for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("WORLD_SIZE", "2")
        line = train_error(capsys, *base_args(tmp_path, overfit_data))
        assert "WORLD_SIZE=2" in line and "torchrun --nproc_per_node 2" in line


def test_world_size_check_refuses_fewer_processes_than_launched(monkeypatch):
    """What `accelerate launch --cpu --num_processes 2` does: one process, WORLD_SIZE=2."""
    from llamaforge.errors import ConfigError
    from llamaforge.training.distributed import check_world_size

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but the trainer runs 1 process"):
        check_world_size(1)
    check_world_size(2)  # no process group here: the trainer's own count is what we got
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world_size(1)
