"""Fixtures for model-loading tests: the tiny random Llama saved as an HF directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_model_dir(tiny_llama, smollm2_tokenizer, tmp_path) -> Path:
    """tiny_llama + the real tokenizer written as a plain HF model directory."""
    path = tmp_path / "base"
    tiny_llama.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """An empty llamaforge cache root for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMAFORGE_CACHE", str(root))
    return root
