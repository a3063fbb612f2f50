"""CLI entry points: run directories as --model, summaries logged, user errors raised."""

from __future__ import annotations

import logging

import pytest

from llamaforge.errors import ExportError
from llamaforge.export.commands import run_export_merge


def test_merge_command_takes_a_run_directory(tiny_model_dir, make_adapter, tmp_path, caplog):
    run = make_adapter(tiny_model_dir, name="run")
    (run / "config.yaml").write_text(f"model:\n  model: {tiny_model_dir}\n")
    with caplog.at_level(logging.INFO, logger="llamaforge.export"):
        assert run_export_merge(str(run), None, str(tmp_path / "out")) == 0
    text = caplog.text
    assert f"into {tiny_model_dir}: " in text and "tensors changed" in text
    assert "verified: reloaded without peft, max |Δlogit| = " in text
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_merge_command_without_adapter_converts(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="llamaforge.export"):
        assert run_export_merge(str(tiny_model_dir), None, str(tmp_path / "copy")) == 0
    assert "max |Δlogit| = 0 " in caplog.text


def test_merge_command_errors_are_export_errors(tmp_path):
    with pytest.raises(ExportError, match="needs --model"):
        run_export_merge(None, None, str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"no config\.json"):
        run_export_merge(str(tmp_path / "empty"), None, str(tmp_path / "x"))
