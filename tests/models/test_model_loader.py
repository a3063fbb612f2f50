"""Model specs → ResolvedModel; load_model on local HF dirs (tiny Llama); errors; GGUF cache."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llamaforge.config import ModelConfig
from llamaforge.errors import ModelError
from llamaforge.models import (
    gguf_cache,
    load_model,
    load_tokenizer,
    resolve_model,
    run_dir_template,
)
from llamaforge.models.loader import SMOLLM2_GGUF, apply_rope_scaling, to_quantization_config

IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 28120, 30]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


# --- resolving specs -------------------------------------------------------------------


def test_alias_resolves_to_bundled_gguf():
    resolved = resolve_model("smollm2-135m")
    assert resolved.kind == "alias"
    assert resolved.gguf_file == SMOLLM2_GGUF
    assert resolved.gguf_path.is_file()
    assert resolved.adapter is None


def test_gguf_file_and_dir_with_one_gguf(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    by_file = resolve_model(str(gguf))
    by_dir = resolve_model(str(tmp_path))
    assert (by_file.kind, by_file.path, by_file.gguf_file) == ("gguf", tmp_path, "m.gguf")
    assert (by_dir.kind, by_dir.gguf_file) == ("gguf", "m.gguf")


def test_hf_dir(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert (resolved.kind, resolved.path, resolved.gguf_file) == ("dir", tiny_model_dir, None)


def test_run_dir_names_base_and_adapter(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x/none"}))
    # config.yaml (what training saves) wins over adapter_config.json's base name
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"model": str(tiny_model_dir)}, "data": {"template": "alpaca"}})
    )
    resolved = resolve_model(str(run))
    assert (resolved.kind, resolved.path, resolved.adapter) == ("dir", tiny_model_dir, run)
    assert run_dir_template(run) == "alpaca"
    assert run_dir_template(tiny_model_dir) is None


def test_missing_path_is_one_line_model_error(tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelError, match="model path not found") as info:
        resolve_model(str(missing))
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def _use_hub_cache(monkeypatch, path: Path) -> None:
    from huggingface_hub import constants

    # huggingface_hub reads these env vars at import time; patch the values it uses.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))


def test_uncached_hub_id(tmp_path, monkeypatch):
    _use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(ModelError) as info:
        resolve_model("llamaforge-test/no-such-model-3f9a1c")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "huggingface-cli download llamaforge-test/no-such-model-3f9a1c" in message
    assert "\n" not in message


def test_cached_hub_id_resolves_to_snapshot(tmp_path, monkeypatch):
    # The HF cache layout: models--org--name/{refs/main, snapshots/<commit>/...}
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    _use_hub_cache(monkeypatch, hub)
    resolved = resolve_model("org/tiny")
    assert resolved.kind == "hub"
    assert resolved.path == snapshot


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a \.gguf model"):
        resolve_model(str(path))


def test_empty_dir(tmp_path):
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model(str(tmp_path))


def test_truncated_gguf_is_model_error(tmp_path, cache_root):
    source = resolve_model("smollm2-135m").gguf_path
    truncated = tmp_path / "truncated.gguf"
    with source.open("rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    with pytest.raises(ModelError, match="truncated") as info:
        load_model(ModelConfig(model=str(truncated)))
    assert str(truncated) in str(info.value)
    assert "\n" not in str(info.value)
    assert not any((cache_root / "gguf").glob("[0-9a-f]*")), "no cache entry for a bad file"


def test_not_gguf_magic(tmp_path, cache_root):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelError, match="is not a GGUF file") as info:
        load_model(ModelConfig(model=str(bad)))
    assert str(bad) in str(info.value)


# --- loading HF directories -----------------------------------------------------------


def test_load_hf_dir_matches_in_memory_model(tiny_llama, tiny_model_dir):
    model, tokenizer = load_model(ModelConfig(model=str(tiny_model_dir)))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU
    assert torch.equal(logits(model), logits(tiny_llama))
    assert tokenizer.pad_token_id == 2  # the tokenizer's own pad (<|im_end|>) is kept


def test_dtype_and_attention(tiny_model_dir):
    model, _ = load_model(
        ModelConfig(model=str(tiny_model_dir), dtype="bfloat16", attn_implementation="eager")
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


def test_for_training_turns_cache_off(tiny_model_dir):
    model, _ = load_model(ModelConfig(model=str(tiny_model_dir)), for_training=True)
    assert model.config.use_cache is False


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 2.0},
        {"type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    ],
)
def test_rope_scaling_is_passed_through(tiny_llama, tiny_model_dir, scaling):
    model, _ = load_model(ModelConfig(model=str(tiny_model_dir), rope_scaling=scaling))
    params = model.config.rope_parameters
    assert params["rope_type"] == scaling.get("rope_type", scaling.get("type"))
    assert params["factor"] == scaling["factor"]
    assert params["rope_theta"] == tiny_llama.config.rope_parameters["rope_theta"]
    if params["rope_type"] == "linear":
        # positions are divided by 2: the model now computes something else
        assert not torch.allclose(logits(model), logits(tiny_llama))


def test_bad_rope_scaling(tiny_model_dir):
    with pytest.raises(ModelError, match="rope_type 'ntk' is not one of"):
        load_model(ModelConfig(model=str(tiny_model_dir), rope_scaling={"type": "ntk"}))
    with pytest.raises(ModelError, match="needs a 'factor'"):
        load_model(ModelConfig(model=str(tiny_model_dir), rope_scaling={"rope_type": "linear"}))


@pytest.mark.parametrize("rope_type", ["yarn", "llama3"])
def test_yarn_and_llama3_say_their_extended_context(tiny_llama, rope_type):
    config = tiny_llama.config.__class__.from_dict(tiny_llama.config.to_dict())
    original = config.max_position_embeddings
    scaling = {"rope_type": rope_type, "factor": 4.0}
    if rope_type == "llama3":
        scaling |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    frequencies = ROPE_INIT_FUNCTIONS[rope_type]
    apply_rope_scaling(config, scaling)  # transformers 5 warned: original must be < max
    assert config.rope_parameters["original_max_position_embeddings"] == original
    assert config.max_position_embeddings == 4 * original
    # the frequencies follow the factor, not the stated context; applying twice is a no-op
    inv_freq, attention_factor = frequencies(config, "cpu")
    apply_rope_scaling(config, scaling)
    assert config.max_position_embeddings == 4 * original
    again, again_factor = frequencies(config, "cpu")
    assert torch.equal(inv_freq, again) and attention_factor == again_factor


def test_apply_rope_scaling_keeps_theta(tiny_llama):
    config = tiny_llama.config.__class__.from_dict(tiny_llama.config.to_dict())
    apply_rope_scaling(config, {"rope_type": "linear", "factor": 3.0})
    assert config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 3.0}


def test_quantization_config():
    assert to_quantization_config(None) is None
    four = to_quantization_config(4)
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant is True
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert to_quantization_config(8).load_in_8bit


def test_quantization_without_bitsandbytes(monkeypatch, tiny_model_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ModelError, match=r"needs bitsandbytes: pip install 'llamaforge\[qlora\]'"):
        load_model(ModelConfig(model=str(tiny_model_dir), quantization_bit=4))


def _to_bin_dir(tiny_model_dir: Path, tmp_path: Path, state: object) -> Path:
    path = tmp_path / "bin_model"
    path.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "model.safetensors":
            (path / item.name).write_bytes(item.read_bytes())
    torch.save(state, path / "pytorch_model.bin")
    return path


def test_bin_weights_load_as_tensors(tiny_llama, tiny_model_dir, tmp_path):
    path = _to_bin_dir(tiny_model_dir, tmp_path, tiny_llama.state_dict())
    model, _ = load_model(ModelConfig(model=str(path)))
    assert torch.equal(logits(model), logits(tiny_llama))


class _Payload:
    """A pickle that would run code on load (here: create a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bin_with_code_is_refused(tiny_llama, tiny_model_dir, tmp_path):
    marker = tmp_path / "pwned"
    state = dict(tiny_llama.state_dict())
    state["payload"] = _Payload(marker)
    path = _to_bin_dir(tiny_model_dir, tmp_path, state)
    with pytest.raises(ModelError, match="refusing to unpickle"):
        load_model(ModelConfig(model=str(path)))
    assert not marker.exists()


def test_remote_code_needs_trust(tiny_model_dir, tmp_path):
    path = tmp_path / "custom"
    path.mkdir()
    for item in tiny_model_dir.iterdir():
        (path / item.name).write_bytes(item.read_bytes())
    marker = tmp_path / "remote_code_ran"
    (path / "custom_config.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
    )
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_config.CustomConfig"}
    config["model_type"] = "custom-llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError):
        load_model(ModelConfig(model=str(path)))
    assert not marker.exists()


def test_pad_token_falls_back_to_unk(smollm2_tokenizer, tmp_path):
    smollm2_tokenizer.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 0


# --- adapters -------------------------------------------------------------------------


def _lora(base, seed=1):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peft initialises B to 0; random B makes the adapter matter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return peft_model.eval()


def test_adapter_loads_to_identical_logits(tiny_llama, tiny_model_dir, tmp_path):
    base_logits = logits(tiny_llama)
    peft_model = _lora(tiny_llama)
    expected = logits(peft_model)
    assert not torch.allclose(expected, base_logits)
    peft_model.save_pretrained(tmp_path / "adapter")

    model, _ = load_model(ModelConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "adapter")))
    assert torch.equal(logits(model), expected)
    assert not any(p.requires_grad for p in model.parameters())

    trainable, _ = load_model(
        ModelConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "adapter")),
        for_training=True,
    )
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


def test_run_dir_as_model(tiny_llama, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    peft_model = _lora(tiny_llama)
    expected = logits(peft_model)
    peft_model.save_pretrained(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"model": str(tiny_model_dir)}}))
    model, tokenizer = load_model(ModelConfig(model=str(run)))
    assert torch.equal(logits(model), expected)
    assert len(tokenizer) == 49152


def test_adapter_for_another_base_is_model_error(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    _lora(other).save_pretrained(tmp_path / "other_adapter")
    with pytest.raises(ModelError, match="does not fit the base model") as info:
        load_model(ModelConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "other_adapter")))
    assert "\n" not in str(info.value)


def test_adapter_dir_without_config(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no adapter_config\.json"):
        load_model(ModelConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "empty")))


# --- GGUF cache bookkeeping (the full round trip is in tests/inference, on the real model) --


def test_sha_index_skips_rehash_until_file_changes(tmp_path, cache_root, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    sha = gguf_cache.file_sha256(path)
    assert sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    index = json.loads((cache_root / "gguf" / "index.json").read_text())
    assert index[str(path.resolve())]["sha256"] == sha

    calls = []
    real = gguf_cache.hashlib.sha256
    monkeypatch.setattr(gguf_cache.hashlib, "sha256", lambda: calls.append(1) or real())
    assert gguf_cache.file_sha256(path) == sha
    assert calls == []
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 1))
    assert gguf_cache.file_sha256(path) != sha
    assert calls == [1]


def _tiny_gguf(path: Path) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_failed_build_leaves_no_cache_entry(tmp_path, cache_root, monkeypatch):
    gguf = _tiny_gguf(tmp_path / "tiny.gguf")

    def crash(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(gguf_cache, "_write_dequantized", crash)
    with pytest.raises(RuntimeError, match="killed"):
        gguf_cache.cached_gguf_dir(gguf)
    assert sorted(p.name for p in (cache_root / "gguf").iterdir()) == ["index.json"]


def test_complete_build_is_renamed_into_place(tmp_path, cache_root, monkeypatch):
    gguf = _tiny_gguf(tmp_path / "tiny.gguf")

    def build(source: Path, out: Path) -> None:
        for name in gguf_cache.CACHE_FILES:
            (out / name).write_text(name)

    monkeypatch.setattr(gguf_cache, "_write_dequantized", build)
    directory = gguf_cache.cached_gguf_dir(gguf)
    assert directory == cache_root / "gguf" / gguf_cache.file_sha256(gguf)
    assert sorted(p.name for p in directory.iterdir()) == sorted(gguf_cache.CACHE_FILES)
    assert [p.name for p in (cache_root / "gguf").iterdir() if p.name.startswith(".")] == []
    # a second call is a cache hit: the builder is not called again
    monkeypatch.setattr(gguf_cache, "_write_dequantized", pickle.loads)
    assert gguf_cache.cached_gguf_dir(gguf) == directory
