"""Fixtures for export tests: tiny Llamas written as HF directories, and LoRA adapters with
random (non-zero) B matrices built with peft and saved with save_pretrained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def randomize_lora(model, *, std: float = 0.05, seed: int = 1) -> None:
    """peft initialises B (and embedding B) to zero; make them random so the delta is real."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name or "lora_magnitude" in name:
                noise = torch.randn(param.shape, generator=generator) * std
                param.add_(noise) if "magnitude" in name else param.copy_(noise)


@pytest.fixture
def lora_randomizer() -> Callable[..., None]:
    return randomize_lora


@pytest.fixture
def make_adapter(tmp_path, smollm2_tokenizer) -> Callable[..., Path]:
    """Build, randomise and save a LoRA adapter on a fresh copy of the base directory."""

    def build(base_dir: Path, name: str = "adapter", *, randomize: bool = True, **lora) -> Path:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        lora.setdefault("r", 4)
        lora.setdefault("lora_alpha", 8)
        lora.setdefault("target_modules", ["q_proj", "v_proj"])
        peft_model = get_peft_model(model, LoraConfig(**lora))
        if randomize:
            randomize_lora(peft_model)
        path = tmp_path / name
        peft_model.save_pretrained(path)
        return path

    return build


@pytest.fixture(scope="session")
def save_tiny_llama(make_tiny_llama, smollm2_tokenizer) -> Callable[[Path], Path]:
    """Write tests/conftest.py's tiny Llama at hidden 64 (bitsandbytes' CPU 4-bit path needs
    ≥ 64 input features per layer) and the real tokenizer to a directory."""

    def save(path: Path) -> Path:
        make_tiny_llama(hidden_size=64).save_pretrained(path)
        smollm2_tokenizer.save_pretrained(path)
        return path

    return save
