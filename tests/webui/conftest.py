"""Fixtures for the web UI tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chatty_model_dir(make_tiny_llama, smollm2_tokenizer, tmp_path_factory) -> Path:
    """A 2-layer random Llama with large weights (varied greedy tokens) as an HF dir
    (the same model as tests/serving's fixture of this name)."""
    path = tmp_path_factory.mktemp("chatty")
    make_tiny_llama(initializer_range=0.3, max_positions=256).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path
