"""The web UI's Gradio-free back ends and its file routes (no browser needed)."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from llamaforge.config import GenerationConfig, load_run_config
from llamaforge.errors import ConfigError
from llamaforge.webui.chat import NO_ADAPTER, ChatBackend, find_runs, text_of
from llamaforge.webui.data import report_to_html
from llamaforge.webui.export import export_command, run_export
from llamaforge.webui.train import TrainingJob, build_overrides, read_run_log

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
TINY_RUN = ["max_steps=6", "logging_steps=1", "micro_batch_size=2", "batch_size=2", "cutoff_len=64"]


# ---------------------------------------------------------------------------- train


def test_build_overrides_keeps_set_values_and_extra_lines():
    values = {
        "model": "smollm2-135m",
        "dataset": "[a.json, b.json]",
        "template": "",
        "dataset_dir": None,
        "learning_rate": 1e-4,
        "num_epochs": 2.0,
        "max_steps": -1.0,
        "train_on_inputs": True,
    }
    extra = "# comment\n\nwarmup_steps=5\n lora_r=4 \n"
    assert build_overrides(values, extra) == [
        "model=smollm2-135m",
        "dataset=[a.json, b.json]",
        "learning_rate=0.0001",
        "num_epochs=2.0",
        "max_steps=-1",
        "train_on_inputs=true",
        "warmup_steps=5",
        "lora_r=4",
    ]
    cfg = load_run_config(None, build_overrides(values, extra))
    assert cfg.data.dataset == ("a.json", "b.json")
    assert cfg.training.num_epochs == 2.0 and cfg.training.max_steps == -1
    assert cfg.finetuning.lora_r == 4


def test_build_overrides_rejects_a_line_without_equals():
    with pytest.raises(ConfigError, match="line 2: 'warmup' is not key=value"):
        build_overrides({}, "lora_r=4\nwarmup\n")


def test_read_run_log_skips_a_partly_written_line(tmp_path):
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25, "eval_loss": 2.75}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo'
    (tmp_path / "trainer_log.jsonl").write_text(text)
    assert read_run_log(tmp_path) == rows
    assert read_run_log(tmp_path / "missing") == []


def test_start_validates_like_the_cli_and_starts_nothing(tmp_path):
    job = TrainingJob(tmp_path / "runs")
    with pytest.raises(ConfigError, match="learning_rat"):
        job.start(["learning_rat=1e-4"])
    with pytest.raises(ConfigError, match="micro_batch_size"):
        job.start(["micro_batch_size=0"])
    assert job.poll().state == "idle"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_training_job_writes_the_cli_run_directory(tiny_model_dir, tmp_path):
    job = TrainingJob(tmp_path / "runs")
    dataset = FIXTURES / "tiny_alpaca.json"
    run_dir = job.start([f"model={tiny_model_dir}", f"dataset=[{dataset}]", *TINY_RUN])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("webui-")
    with pytest.raises(ConfigError, match="already going"):
        job.start([f"model={tiny_model_dir}", f"dataset=[{dataset}]"])
    deadline = time.monotonic() + 300
    while job.poll().state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = job.poll()
    assert status.state == "finished", status.console
    assert [row["step"] for row in status.log] == [1, 2, 3, 4, 5, 6]
    assert status.last_loss == (6, status.log[-1]["loss"])
    for name in ("config.yaml", "trainer_log.jsonl", "summary.json", "adapter_config.json"):
        assert (run_dir / name).is_file(), name
    assert "run saved to" in status.console
    assert "\r" not in status.console
    assert not any(p.suffix == ".log" for p in run_dir.iterdir())  # console log kept outside
    assert find_runs(tmp_path / "runs") == [str(run_dir)]


@pytest.mark.slow
def test_stop_interrupts_training_with_a_checkpoint(tiny_model_dir, tmp_path):
    job = TrainingJob(tmp_path / "runs")
    dataset = FIXTURES / "tiny_alpaca.json"
    output = f"output_dir={tmp_path / 'stopped'}"
    run_dir = job.start(
        [f"model={tiny_model_dir}", f"dataset=[{dataset}]", *TINY_RUN, "max_steps=100000", output]
    )
    assert run_dir == tmp_path / "stopped"
    deadline = time.monotonic() + 300
    while not job.poll().log:  # training has really started
        assert time.monotonic() < deadline and job.poll().state == "running", job.poll().console
        time.sleep(0.2)
    job.stop()
    status = job.poll()
    assert status.state == "stopped"
    assert status.returncode == 130, status.console
    assert len(status.log) < 100000
    assert any(p.name.startswith("checkpoint-") for p in run_dir.iterdir())


# ---------------------------------------------------------------------------- data, export


def test_report_to_html_escapes_and_marks_trained_tokens():
    report = "<b>user</b> says \033[32mPa&ris<|im_end|>\033[0m\n"
    assert report_to_html(report) == (
        '<pre class="llamaforge-preview">&lt;b&gt;user&lt;/b&gt; says '
        '<mark class="trained">Pa&amp;ris&lt;|im_end|&gt;</mark>\n</pre>'
    )


def test_data_preview_html_marks_the_answers(smollm2_tokenizer, monkeypatch):
    from llamaforge.webui import data

    monkeypatch.setitem(data._tokenizers, "smollm2-135m", smollm2_tokenizer)
    cfg = load_run_config(
        None, (), model="smollm2-135m", dataset=[str(FIXTURES / "tiny_alpaca.json")]
    )
    page = data.preview_html(cfg, num_examples=2)
    assert page.count('<mark class="trained">') == 2
    assert '<mark class="trained">Paris.&lt;|im_end|&gt;</mark>' in page
    assert "\033" not in page


def test_export_command_lines():
    assert export_command("merge", "runs/a", "out") == [
        sys.executable,
        "-m",
        "llamaforge",
        "export",
        "merge",
        "--model",
        "runs/a",
        "--output",
        "out",
    ]
    assert export_command("gguf", "runs/a", "a.gguf", gguf_type="q8_0", overwrite=True)[-4:] == [
        "a.gguf",
        "--type",
        "q8_0",
        "--overwrite",
    ]
    for bad, match in (
        (("zip", "runs/a", "o"), "unknown export 'zip'"),
        (("merge", " ", "o"), "needs a model"),
        (("merge", "runs/a", ""), "needs an output"),
    ):
        with pytest.raises(ConfigError, match=match):
            export_command(*bad)
    with pytest.raises(ConfigError, match="unknown GGUF type"):
        export_command("gguf", "m", "o.gguf", gguf_type="q3")


def test_run_export_streams_the_log_and_reports_failure(tmp_path):
    command = export_command("merge", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    outputs = list(run_export(command))
    assert outputs[0].startswith("$ llamaforge export merge --model")
    assert outputs[-1].endswith("export failed (exit code 2)")
    assert "nowhere" in outputs[-1] and "Traceback" not in outputs[-1]


# ---------------------------------------------------------------------------- chat


def test_text_of_gradio_contents():
    assert text_of("hi") == "hi"
    assert text_of([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert text_of(None) == ""


def test_chat_backend_streams_and_cancels(chatty_model_dir):
    cfg = load_run_config(None, (), model=str(chatty_model_dir))
    backend = ChatBackend(cfg)
    try:
        assert backend.load(str(chatty_model_dir), NO_ADAPTER) == f"loaded {chatty_model_dir}"
        engine = backend.pool.served[backend.pool.default].engine
        gen = GenerationConfig(temperature=0, max_new_tokens=12)
        history = [{"role": "user", "content": "Hello"}]
        states = [h[-1]["content"] for h in backend.reply(history, gen)]
        expected = engine.generate(["Hello"], gen)[0].text
        assert states[-1] == expected
        assert len(states) > 3 and all(expected.startswith(s) for s in states)
        # Closing the stream (the Stop button) cancels the generation.
        long = GenerationConfig(temperature=0, max_new_tokens=200)
        stream = backend.reply(history, long)
        next(stream)
        stream.close()
        deadline = time.monotonic() + 10
        while backend.scheduler.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert backend.scheduler.recent[-1].outcome == "cancelled"
        with pytest.raises(ConfigError, match="temperature"):
            next(backend.reply(history, GenerationConfig(temperature=-1)))
    finally:
        backend.close()


# ---------------------------------------------------------------------------- file routes


def raw_get(port: int, path: str) -> int:
    """Status of GET ``path`` sent byte for byte (HTTP clients normalise ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_ui_file_routes_refuse_traversal(chatty_model_dir, tmp_path):
    pytest.importorskip("gradio")
    from llamaforge.webui.app import build_app, launch

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    cfg = load_run_config(None, (), model=str(chatty_model_dir))
    app = build_app(cfg, runs_dir=tmp_path / "runs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(app, host="127.0.0.1", port=port, block=False)
    try:
        assert raw_get(port, "/") == 200
        for probe in (
            "/gradio_api/file=/etc/passwd",
            f"/gradio_api/file={secret}",
            "/gradio_api/file=../../../../etc/passwd",
            "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/gradio_api/file=pyproject.toml",
            f"/gradio_api/file={Path(__file__).resolve()}",
            "/assets/..%2f..%2f..%2fetc%2fpasswd",
        ):
            assert raw_get(port, probe) == 403, probe
    finally:
        app.close()
