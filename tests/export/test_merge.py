"""merge_adapter on tiny random Llamas: logits, files, tying, vocab growth, refusals, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llamaforge.errors import ExportError
from llamaforge.export.merge import convert_model, logit_tolerance, max_logit_diff, merge_adapter

IDS = [[1, 504, 3458, 282, 4649, 314, 2, 17, 30, 49151], [28, 15, 9000, 40000, 12]]


def _logits(model, ids=IDS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row])).logits[0] for row in ids]


def _base_plus_adapter(base_dir: Path, adapter_dir: Path, ids=IDS) -> list[torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if base.get_input_embeddings().num_embeddings < max(max(r) for r in ids) + 1:
        base.resize_token_embeddings(max(max(r) for r in ids) + 1, mean_resizing=False)
    return _logits(PeftModel.from_pretrained(base, adapter_dir).eval(), ids)


def _reloaded(out: Path, ids=IDS) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)


def _tolerance(expected: list[torch.Tensor], out: Path) -> float:
    """The merge check's own fp32 bound for these logits and this model's depth."""
    from transformers import AutoConfig

    return logit_tolerance(expected, AutoConfig.from_pretrained(out))


def _keys(out: Path) -> set[str]:
    keys = set()
    for shard in out.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            keys |= set(f.keys())
    return keys


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": "all-linear"},
        {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "use_dora": True},
    ],
    ids=["qv", "all-linear", "dora"],
)
def test_merged_logits_match_base_plus_adapter(tiny_model_dir, make_adapter, tmp_path, lora):
    adapter = make_adapter(tiny_model_dir, **lora)
    out = tmp_path / "merged"
    report = merge_adapter(str(tiny_model_dir), adapter, out)

    assert report.max_abs_logit_diff is not None and report.logit_tolerance is not None
    assert report.max_abs_logit_diff <= report.logit_tolerance
    assert report.relative_delta > 1e-3 and report.changed_tensors >= 4
    expected = _base_plus_adapter(tiny_model_dir, adapter)
    got = _reloaded(out)
    assert max_logit_diff(expected, got) <= _tolerance(expected, out)
    # and the adapter really changes the model (the check above is not trivially true)
    base = _reloaded(tiny_model_dir)
    assert max_logit_diff(base, got) > 1e-3

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in _keys(out)
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= set(report.files)
    assert not any("lora" in k for k in _keys(out))


def test_tied_embeddings_untied_when_lora_touches_lm_head(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir, target_modules=["q_proj", "lm_head", "embed_tokens"])
    out = tmp_path / "merged"
    report = merge_adapter(str(tiny_model_dir), adapter, out)

    assert report.tied_embeddings is False
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= _keys(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not torch.equal(
            f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
        )
    expected = _base_plus_adapter(tiny_model_dir, adapter)
    assert max_logit_diff(expected, _reloaded(out)) <= _tolerance(expected, out)


def test_extended_vocabulary_with_modules_to_save(
    tiny_llama, smollm2_tokenizer, tmp_path, lora_randomizer
):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    tiny_llama.save_pretrained(base_dir)
    smollm2_tokenizer.save_pretrained(base_dir)
    tokenizer = type(smollm2_tokenizer).from_pretrained(base_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>", "<|result|>"]})
    assert len(tokenizer) == 49154
    model = type(tiny_llama).from_pretrained(base_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]
        ),
    )
    lora_randomizer(peft_model)
    with torch.no_grad():  # the trained copies differ from the base rows
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.02)
    adapter = tmp_path / "run"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)

    out = tmp_path / "merged"
    report = merge_adapter(str(base_dir), adapter, out)
    assert report.vocab_size == 49154
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 49154
    ids = [[1, 49152, 49153, 504, 2], IDS[0]]
    expected = _base_plus_adapter(base_dir, adapter, ids)
    got = _reloaded(out, ids)
    assert got[0].shape == (5, 49154)
    assert max_logit_diff(expected, got) <= _tolerance(expected, out)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|result|>") == 49153


def test_merged_model_loads_without_peft(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir)
    out = tmp_path / "merged"
    merge_adapter(str(tiny_model_dir), adapter, out)
    expected = _reloaded(out)[0][-1, :5].tolist()
    code = f"""
import sys
sys.modules["peft"] = None  # any `import peft` now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32).eval()
t = AutoTokenizer.from_pretrained({str(out)!r})
assert t.chat_template and "<|im_start|>" in t.chat_template
with torch.no_grad():
    print(m(input_ids=torch.tensor([{IDS[0]}])).logits[0, -1, :5].tolist())
assert "peft" not in [k for k, v in sys.modules.items() if v is not None]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(expected, abs=1e-5)


def test_sharded_output_has_index_and_reloads(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir)
    out = tmp_path / "merged"
    report = merge_adapter(str(tiny_model_dir), adapter, out, shard_size="2MB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2  # 49152 x 32 fp32 embeddings alone are 6.3 MB
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert report.max_abs_logit_diff <= report.logit_tolerance


def test_run_directory_names_its_base(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir, name="run")
    (adapter / "config.yaml").write_text(
        f"model:\n  model: {tiny_model_dir}\ndata:\n  template: chat\n"
    )
    report = merge_adapter(None, adapter, tmp_path / "merged")
    assert report.base == str(tiny_model_dir)
    assert report.max_abs_logit_diff <= report.logit_tolerance


def test_tolerance_scales_with_depth_and_logit_size():
    from transformers import LlamaConfig

    from llamaforge.export.merge import FP32_EPS, RTOL_PER_STAGE

    # SmolLM2-135M: 30 layers, max |logit| 38.7 on the fixed prompts. The old absolute 1e-4
    # refused a real 6-step all-linear LoRA run there at max |Δlogit| = 1.11e-4.
    real = logit_tolerance([torch.tensor([[-38.7, 3.0]])], LlamaConfig(num_hidden_layers=30))
    assert real == pytest.approx(RTOL_PER_STAGE * FP32_EPS * 32 * 38.7)
    assert real > 5 * 1.11e-4
    assert real < 1.3e-3  # one of its 210 tensors with 90 % of its delta: >= 1.3e-3
    tiny = logit_tolerance([torch.tensor([[0.5, -1.0]])], LlamaConfig(num_hidden_layers=2))
    # Shallow models get the floor: a good 2-layer merge showed 29 eps × max |logit|.
    assert tiny == pytest.approx(RTOL_PER_STAGE * FP32_EPS * 32 * 1.0)
    assert tiny > 29 * FP32_EPS * 1.0


@pytest.mark.parametrize("kept", [0.0, 0.9], ids=["delta-dropped", "delta-x0.9"])
def test_slightly_wrong_merge_is_refused(tiny_model_dir, make_adapter, tmp_path, monkeypatch, kept):
    """One merged tensor keeps only ``kept`` of its LoRA delta: refused, nothing written."""
    import llamaforge.export.merge as merge_module

    name = "model.layers.1.self_attn.v_proj.weight"
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        base_weight = f.get_tensor(name)
    real_merge = merge_module.merge_in_memory

    def corrupted(*args, **kwargs):
        merged = real_merge(*args, **kwargs)
        weight = merged.model.get_parameter(name)
        with torch.no_grad():
            weight.copy_(base_weight + kept * (weight - base_weight))
        return merged

    monkeypatch.setattr(merge_module, "merge_in_memory", corrupted)
    adapter = make_adapter(tiny_model_dir)
    out = tmp_path / "exports" / "merged"
    with pytest.raises(ExportError, match=r"verification failed.*of max \|logit\|") as error:
        merge_adapter(str(tiny_model_dir), adapter, out)
    print(f"\n{kept} x the delta of {name}: {error.value}")
    assert list(out.parent.iterdir()) == []


def test_zero_adapter_is_refused_before_writing(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir, randomize=False)
    out = tmp_path / "merged"
    with pytest.raises(ExportError, match="every LoRA B matrix is zero"):
        merge_adapter(str(tiny_model_dir), adapter, out)
    assert not out.exists()


def test_zero_dora_adapter_is_refused_by_weight_delta(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir, randomize=False, use_dora=True)
    out = tmp_path / "merged"
    with pytest.raises(ExportError, match=r"\|\|ΔW\|\|/\|\|W\|\| = .*zero adapter"):
        merge_adapter(str(tiny_model_dir), adapter, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_empty_adapter_file_is_refused(tiny_model_dir, make_adapter, tmp_path):
    from safetensors.torch import save_file

    adapter = make_adapter(tiny_model_dir)
    save_file({}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="holds no tensors"):
        merge_adapter(str(tiny_model_dir), adapter, tmp_path / "merged")


def test_interrupted_write_leaves_nothing_that_looks_complete(
    tiny_model_dir, make_adapter, tmp_path, monkeypatch
):
    import llamaforge.export.writing as writing_module

    adapter = make_adapter(tiny_model_dir)
    out_parent = tmp_path / "exports"
    out_parent.mkdir()

    def write_half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(writing_module, "save_file", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge_adapter(str(tiny_model_dir), adapter, out_parent / "merged")
    assert list(out_parent.iterdir()) == []


def test_existing_output_is_not_overwritten(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        merge_adapter(str(tiny_model_dir), adapter, out)
    merge_adapter(str(tiny_model_dir), adapter, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_config", "no adapter_config.json"),
        ("truncated_adapter", "adapter_model.safetensors: not a readable safetensors file"),
        ("truncated_base", "model.safetensors: not a readable safetensors file"),
        ("not_gguf", "not a GGUF file"),
        ("missing_base", "not found"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny_model_dir, make_adapter, tmp_path, breakage, message):
    adapter = make_adapter(tiny_model_dir)
    base = str(tiny_model_dir)
    if breakage == "no_config":
        (adapter / "adapter_config.json").unlink()
    elif breakage == "truncated_adapter":
        data = (adapter / "adapter_model.safetensors").read_bytes()
        (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif breakage == "truncated_base":
        data = (tiny_model_dir / "model.safetensors").read_bytes()
        (tiny_model_dir / "model.safetensors").write_bytes(data[:1000])
    elif breakage == "not_gguf":
        base = str(tmp_path / "model.gguf")
        Path(base).write_bytes(b"PK\x03\x04 this is a zip")
    elif breakage == "missing_base":
        base = str(tmp_path / "nowhere")
    with pytest.raises(ExportError, match=message):
        merge_adapter(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_adapter_for_another_base_is_refused(tiny_model_dir, make_adapter, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(other)
    adapter = make_adapter(other)
    with pytest.raises(ExportError, match=r"adapter does not fit the base model.*--model"):
        merge_adapter(str(tiny_model_dir), adapter, tmp_path / "merged")


def test_convert_model_writes_base_unchanged(tiny_model_dir, tmp_path):
    out = tmp_path / "converted"
    report = convert_model(str(tiny_model_dir), out)
    assert report.max_abs_logit_diff == 0.0
    assert all(
        torch.equal(a, b) for a, b in zip(_reloaded(tiny_model_dir), _reloaded(out), strict=True)
    )


def test_written_files_have_ordinary_permissions(tiny_model_dir, make_adapter, tmp_path):
    import os
    import stat

    from llamaforge.export.merge import merge_adapter

    adapter = make_adapter(tiny_model_dir)
    out = tmp_path / "merged"
    merge_adapter(str(tiny_model_dir), adapter, out)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 0o700
    for item in out.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) == 0o666 & ~mask, item.name
