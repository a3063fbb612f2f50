"""Fixtures for inference tests: engines on the tiny random Llama and on the real model.

The real SmolLM2-135M engine is session-scoped (loaded once, ~25 s: dequantize + cache),
through the session's own GGUF cache (``smollm2_cache`` in tests/conftest.py).
"""

from __future__ import annotations

import pytest

from llamaforge.inference import GenerationEngine


@pytest.fixture(scope="session")
def chatty_llama(make_tiny_llama):
    """Like tiny_llama but with larger random weights: greedy decoding produces varied
    tokens instead of repeating one, so padding or stopping bugs change the output."""
    return make_tiny_llama(initializer_range=0.3)


@pytest.fixture
def tiny_engine(chatty_llama, smollm2_tokenizer) -> GenerationEngine:
    return GenerationEngine(chatty_llama, smollm2_tokenizer)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_cache) -> GenerationEngine:
    """The bundled model loaded through the GGUF cache (built by this load)."""
    from llamaforge.config import load_run_config

    return GenerationEngine.from_config(load_run_config(None, (), model="smollm2-135m"))
