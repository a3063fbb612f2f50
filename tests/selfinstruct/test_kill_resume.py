"""SIGKILL midway, then the same command again: nothing kept is lost, nothing is duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfinstruct_fakes import FakeEndpoint
from selfinstruct_helpers import check_statistics, journal_kept, recheck_records


def command(url: str, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llamaforge",
        "selfinstruct",
        "--endpoint",
        url,
        "--model",
        "fake-model",
        "--output",
        str(output),
        "--num",
        "24",
        "--max-retries",
        "2",
        "--concurrency",
        "4",
        "--retry-backoff",
        "0.001",
    ]


def test_a_sigkilled_run_resumes_without_losing_or_duplicating_records(tmp_path):
    output = tmp_path / "data.json"
    journal = tmp_path / "data.journal.jsonl"
    with FakeEndpoint(faults=True, delay_s=0.02, hang_s=0.0) as fake:
        process = subprocess.Popen(
            command(fake.url, output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if len(journal_kept(journal)) >= 8:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
        before = journal_kept(journal)
        assert 8 <= len(before) < 24 and not output.exists()  # killed before the end

        done = subprocess.run(
            command(fake.url, output), capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "24 records kept" in done.stdout

    records = json.loads(output.read_text(encoding="utf-8"))
    assert len(records) == 24
    assert records[: len(before)] == before  # every record accepted before the kill, in order
    instructions = [r["instruction"] for r in records]
    assert len(set(instructions)) == len(instructions)
    recheck_records(records)
    stats = json.loads((tmp_path / "data.stats.json").read_text())
    check_statistics(stats, records)
    assert stats["sessions"] == 2


def test_sigterm_stops_a_run_cleanly_with_its_outputs_written(tmp_path):
    output = tmp_path / "data.json"
    journal = tmp_path / "data.journal.jsonl"
    with FakeEndpoint(delay_s=0.05) as fake:
        process = subprocess.Popen(
            command(fake.url, output), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(journal_kept(journal)) < 3:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "terminated:" in stderr and "records kept of" in stdout
    records = json.loads(output.read_text(encoding="utf-8"))
    assert 3 <= len(records) < 24 and records == journal_kept(journal)
    stats = json.loads((tmp_path / "data.stats.json").read_text())
    assert stats["stopped"] == "terminated"
    check_statistics(stats, records)
