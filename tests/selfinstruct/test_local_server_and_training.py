"""With no --endpoint a run serves the model itself (and stops it); its output trains."""

from __future__ import annotations

import json
import re
import socket

from selfinstruct_fakes import FakeEndpoint

from llamaforge.cli import main
from llamaforge.selfinstruct import run_selfinstruct


def test_without_an_endpoint_a_local_server_is_started_and_stopped(
    make_tiny_llama, smollm2_tokenizer, quick_options, tmp_path
):
    model_dir = tmp_path / "tiny"
    make_tiny_llama(max_positions=2048).save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    options = quick_options(
        None, model=str(model_dir), max_requests=2, timeout_s=120, brainstorm_tokens=16
    )
    stats = run_selfinstruct(options)

    assert (
        stats["stopped"] == "request budget spent" and stats["endpoint"] == "local llamaforge serve"
    )
    assert stats["requests"]["sent"] == 2 and stats["requests"]["errors"] == {}
    assert stats["tokens"]["completion"] > 0  # a random model, but it answered
    log = (tmp_path / "out" / "data.serve.log").read_text()
    assert f"ready: {model_dir}" in log
    port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", log).group(1))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the server is gone


def test_the_output_trains_with_llamaforge_train_unchanged(
    tiny_model_dir, quick_options, tmp_path, monkeypatch
):
    monkeypatch.setenv("LLAMAFORGE_CACHE", str(tmp_path / "cache"))
    with FakeEndpoint() as fake:
        stats = run_selfinstruct(quick_options(fake.url, num=8))
    assert stats["kept"] == 8
    data_dir = tmp_path / "out"
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            f"model={tiny_model_dir}",
            "dataset=[data]",  # the dataset_info.json entry the run wrote
            f"dataset_dir={data_dir}",
            f"output_dir={run_dir}",
            "precision=fp32",
            "max_steps=2",
            "batch_size=4",
            "micro_batch_size=4",
            "logging_steps=1",
        ]
    )
    assert code == 0
    log = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in log if "loss" in record]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 2
