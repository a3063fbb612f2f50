"""Fixtures for the self-instruct tests: options for a quick run against the fake endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamaforge.selfinstruct import SelfInstructOptions


@pytest.fixture
def quick_options(tmp_path: Path):
    """``quick_options(url, **changes)``: a run of 20 records into tmp_path/out/data.json with
    millisecond backoffs and short timeouts."""

    def make(url: str | None, **changes: Any) -> SelfInstructOptions:
        values: dict[str, Any] = {
            "output": tmp_path / "out" / "data.json",
            "num": 20,
            "endpoint": url,
            "model": "fake-model",
            "concurrency": 2,
            "timeout_s": 5.0,
            "backoff_s": 0.001,
        }
        values.update(changes)
        return SelfInstructOptions(**values)

    return make
