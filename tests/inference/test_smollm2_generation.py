"""End-to-end on the real bundled SmolLM2-135M (one session-scoped load, through the cache)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from llamaforge.cli import main
from llamaforge.config import GenerationConfig
from llamaforge.data.formats import Message
from llamaforge.models import resolve_model

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(temperature=0, max_new_tokens=8)
PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "List three primary colors, separated by commas, and nothing else.",
    [
        Message("user", "My name is Ada."),
        Message("assistant", "Nice to meet you, Ada!"),
        Message("user", "What is my name?"),
    ],
]
SKY = "Explain in one sentence why the sky is blue."


def test_generate_command_answers_paris(smollm2_engine, capsys):
    capsys.readouterr()
    code = main(
        [
            "generate",
            "--model",
            "smollm2-135m",
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Paris" in out
    assert out == "The capital of France is Paris.\n"


def test_batched_greedy_equals_one_at_a_time(smollm2_engine):
    batched = smollm2_engine.generate(PROMPTS, GREEDY)
    singles = [smollm2_engine.generate([p], GREEDY)[0] for p in PROMPTS]
    assert len({r.prompt_tokens for r in batched}) == len(PROMPTS)
    for b, s in zip(batched, singles, strict=True):
        assert b.token_ids == s.token_ids
        assert b == s
    assert batched[0].text == "The capital of France is Paris."
    assert batched[0].finish_reason == "stop"  # ended by <|im_end|>
    assert batched[0].token_ids[-1] == smollm2_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "Ada" in batched[3].text


def test_stream_equals_generate(smollm2_engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=16)
    prompt = SKY
    expected = smollm2_engine.generate([prompt], gen)[0]
    stream = smollm2_engine.stream(prompt, gen)
    pieces = list(stream)
    assert len(pieces) > 5
    assert "".join(pieces) == expected.text
    assert stream.result == expected


def test_stop_string_cuts(smollm2_engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=16, stop=("Paris",))
    result = smollm2_engine.generate([PROMPTS[0]], gen)[0]
    assert result.text == "The capital of France is "
    assert result.finish_reason == "stop"
    assert "".join(smollm2_engine.stream(PROMPTS[0], gen)) == "The capital of France is "


def test_gguf_cache_is_complete_and_bit_identical(smollm2_engine, smollm2_cache):
    from transformers import AutoModelForCausalLM

    entries = [p for p in (smollm2_cache / "gguf").iterdir() if p.is_dir()]
    assert len(entries) == 1 and len(entries[0].name) == 64  # named by the sha256
    files = {p.name for p in entries[0].iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    config = json.loads((entries[0] / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(entries[0] / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # tied to embed_tokens

    resolved = resolve_model("smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(
        resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32
    )
    cached = smollm2_engine.model.state_dict()
    expected = reference.state_dict()
    assert cached.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(cached[name], tensor), name
    assert smollm2_engine.model.lm_head.weight.data_ptr() == (
        smollm2_engine.model.model.embed_tokens.weight.data_ptr()
    )
