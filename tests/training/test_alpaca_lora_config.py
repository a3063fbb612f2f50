"""configs/alpaca_lora.yaml (alpaca-lora's own flat keys) runs unchanged on the bundled model;
only the run length, the data and the output directory are overridden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from training_helpers import OVERFIT_RECORDS, read_log, write_alpaca

from llamaforge.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "alpaca_lora.yaml"


@pytest.mark.slow
def test_alpaca_lora_config_runs_on_the_bundled_model(tmp_path):
    data = write_alpaca(tmp_path / "alpaca_data.json", OVERFIT_RECORDS)
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(CONFIG),
            "max_steps=2",
            f"data_path={data}",
            "batch_size=4",
            "micro_batch_size=2",
            f"output_dir={run_dir}",
        ]
    )
    assert code == 0

    adapter = json.loads((run_dir / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (8, 16, 0.05)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["model"] == "smollm2-135m"
    assert saved["data"]["template"] == "alpaca"
    assert saved["data"]["train_on_inputs"] is True and saved["data"]["add_eos_token"] is False
    assert saved["data"]["cutoff_len"] == 512
    assert saved["training"]["learning_rate"] == 1e-4
    assert saved["training"]["num_epochs"] == 3
    log = read_log(run_dir)
    # logging_steps keeps its default (10): only the first step is logged in a 2-step run.
    assert [r["step"] for r in log] == [1]
    assert 2 < log[0]["loss"] < 6  # an instruct model on alpaca prompts, not a random one
    assert log[0]["learning_rate"] == pytest.approx(1e-4)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 2
