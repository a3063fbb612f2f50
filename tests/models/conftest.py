"""Fixtures for model-loading tests: an empty llamaforge cache root per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """An empty llamaforge cache root for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMAFORGE_CACHE", str(root))
    return root
