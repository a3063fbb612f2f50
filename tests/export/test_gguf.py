"""GGUF writer on a tiny random Llama: round trips through transformers' GGUF loader,
metadata, tokenizer, Modelfile, run directories, refusals and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamaforge.errors import ExportError
from llamaforge.export.gguf import export_gguf, permute_rotary

IDS = [[1, 504, 3458, 282, 4649, 314, 2, 17, 30, 49151], [28, 15, 9000, 40000, 12, 7, 7, 7]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, save_tiny_llama):
    """conftest's tiny Llama (GQA, tied) at hidden 64, shared by the whole module."""
    return save_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny")


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """type → (report, path); each type exported once per module. Only f32 is verified here
    (a transformers reload, ~20 s even for a tiny model: the 49152-token vocabulary); f16 and
    q8_0 are verified on the real model in test_real_model.py."""
    cache = {}

    def get(type_name: str):
        if type_name not in cache:
            out = tmp_path_factory.mktemp(type_name) / "tiny.gguf"
            report = export_gguf(tiny_dir, out, type=type_name, verify=type_name == "f32")
            cache[type_name] = (report, out)
        return cache[type_name]

    return get


def _logits(model, ids=IDS):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row])).logits[0] for row in ids]


def _gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def _source_model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def _compare(source, target):
    diff = max(float((a - b).abs().max()) for a, b in zip(source, target, strict=True))
    same = sum(
        int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(source, target, strict=True)
    )
    return diff, same / sum(a.shape[0] for a in source)


def test_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(48, 16)
    for n_head, n_kv in ((6, 6), (6, 2)):
        rows = weight[: 48 if n_kv == n_head else 16]
        undone = LlamaTensorProcessor(
            {"num_attention_heads": n_head, "num_key_value_heads": n_kv}
        )._reverse_permute_weights(permute_rotary(rows, n_kv).numpy(), n_head, n_kv)
        assert np.array_equal(undone, rows.numpy())
    assert not torch.equal(permute_rotary(weight, 6), weight)


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_f32_round_trip_is_exact(exported):
    # the report's figures come from reloading the file with transformers' GGUF loader;
    # test_run_directory_with_untied_lora_is_merged checks such a reload independently
    report, _ = exported("f32")
    assert report.max_abs_logit_diff < 1e-4 and report.top1_agreement == 1.0
    assert report.tensor_types == {"f32": 2 * 9 + 2}  # 9 per block + token_embd + output_norm


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_written_gguf_loads_through_llamaforge_and_trains_again(
    exported, tiny_dir, tmp_path, monkeypatch
):
    from peft import LoraConfig, get_peft_model

    from llamaforge.config.sections import ModelConfig
    from llamaforge.models import load_model

    monkeypatch.setenv("LLAMAFORGE_CACHE", str(tmp_path / "cache"))
    _, path = exported("f32")
    model, tokenizer = load_model(ModelConfig(model=str(path), dtype="float32"))
    assert tokenizer.chat_template and len(tokenizer) == 49152
    diff, top1 = _compare(_logits(_source_model(tiny_dir)), _logits(model))
    assert diff < 1e-4 and top1 == 1.0
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([IDS[0]])
    peft_model.train()
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    # B starts at zero, so only its gradient is non-zero after one backward
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert 10.0 < float(loss) < 11.5  # ~ln(49152) = 10.8 for a random model


def test_f16_tensor_types_and_size(exported):
    report, _ = exported("f16")
    assert report.tensor_types == {"f16": 15, "f32": 5}  # norms stay f32
    assert report.size_bytes < exported("f32")[0].size_bytes * 0.6


def test_q8_0_tensor_types_and_size(exported):
    report, _ = exported("q8_0")
    assert report.tensor_types == {"q8_0": 15, "f32": 5}
    assert report.size_bytes < exported("f16")[0].size_bytes * 0.75


def test_low_bit_types_keep_embeddings_at_q8_0_and_norms_at_f32():
    from llamaforge.export.gguf import tensor_type

    matrix, vector = np.zeros((8, 64), np.float32), np.zeros(64, np.float32)
    assert tensor_type("token_embd.weight", matrix, "q4_0") == "q8_0"
    assert tensor_type("output.weight", matrix, "q5_1") == "q8_0"
    assert tensor_type("blk.0.attn_q.weight", matrix, "q4_0") == "q4_0"
    assert tensor_type("blk.0.attn_norm.weight", vector, "q8_0") == "f32"
    assert tensor_type("blk.0.attn_q.weight", np.zeros((8, 48), np.float32), "q8_0") == "f16"
    assert tensor_type("blk.0.attn_q.weight", matrix, "bf16") == "bf16"


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_metadata(exported, smollm2_tokenizer):
    import gguf

    _, path = exported("f32")
    reader = gguf.GGUFReader(str(path))

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.context_length") == 512
    assert value("llama.embedding_length") == 64
    assert value("llama.block_count") == 2
    assert value("llama.feed_forward_length") == 128
    assert value("llama.attention.head_count") == 4
    assert value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.dimension_count") == 16
    assert value("llama.rope.freq_base") == 10000.0
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("llama.vocab_size") == 49152
    assert value("general.file_type") == 0
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokens[28120] == "hello"
    types = value("tokenizer.ggml.token_type")
    assert types[:17] == [3] * 17 and types[17] == 1  # control, then normal
    assert len(value("tokenizer.ggml.merges")) == 48900
    assert value("tokenizer.ggml.merges")[0] == "Ġ t"
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == smollm2_tokenizer.chat_template
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied


TEXTS = [
    "Hello world! The year 2024 had 366 days.",
    "春天来了，花儿开了。用中文回答：什么是机器学习？",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n\treturn x ** 2  # 平方",
]


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_tokenizer_round_trip(exported, smollm2_tokenizer):
    from transformers import AutoTokenizer

    report, path = exported("f32")
    assert report.tokenizer_match is True
    reread = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert reread(text)["input_ids"] == smollm2_tokenizer(text)["input_ids"], text
    assert smollm2_tokenizer(TEXTS[2])["input_ids"][0] == 1  # <|im_start|> stays one token
    assert reread.chat_template == smollm2_tokenizer.chat_template


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_modelfile(exported):
    report, path = exported("f16")
    assert report.modelfile == path.parent / "Modelfile"
    assert report.modelfile.read_text() == (
        "FROM ./tiny.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ end }}<|im_start|>assistant\n"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""\n'
    )


@pytest.mark.slow
def test_run_directory_with_untied_lora_is_merged(tiny_dir, make_adapter, tmp_path):
    import gguf
    from peft import PeftModel

    run = make_adapter(tiny_dir, name="run", target_modules=["q_proj", "k_proj", "lm_head"])
    (run / "config.yaml").write_text(f"model:\n  model: {tiny_dir}\n")
    out = tmp_path / "out" / "run.gguf"
    report = export_gguf(run, out, type="f32")
    assert report.merged_adapter == run
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert "output.weight" in names  # lm_head got its own delta: no longer tied
    expected = _logits(PeftModel.from_pretrained(_source_model(tiny_dir), run).eval())
    diff, top1 = _compare(expected, _logits(_gguf_model(out)))
    assert diff < 1e-4 and top1 == 1.0
    base_diff, _ = _compare(_logits(_source_model(tiny_dir)), _logits(_gguf_model(out)))
    assert base_diff > 1e-2  # the adapter is really in the file


def test_bad_requests(tiny_dir, tmp_path):
    with pytest.raises(ExportError, match="unknown GGUF type 'q3_k'; choose one of: f32, f16"):
        export_gguf(tiny_dir, tmp_path / "x.gguf", type="q3_k")
    with pytest.raises(ExportError, match=r"must end in \.gguf"):
        export_gguf(tiny_dir, tmp_path / "x.bin")
    (tmp_path / "there.gguf").write_bytes(b"GGUF")
    with pytest.raises(ExportError, match="already exists"):
        export_gguf(tiny_dir, tmp_path / "there.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"\x00\x01\x02\x03 not a gguf at all")
    with pytest.raises(ExportError, match=r"fake\.gguf: not a GGUF file"):
        export_gguf(fake, tmp_path / "y.gguf")


def test_non_llama_model_is_refused(smollm2_tokenizer, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    smollm2_tokenizer.save_pretrained(tmp_path / "mistral")
    with pytest.raises(ExportError, match=r"model_type 'mistral'.*Llama-architecture"):
        export_gguf(tmp_path / "mistral", tmp_path / "m.gguf")
    assert list(tmp_path.glob("*.gguf*")) == []


def test_interrupted_write_leaves_no_file(tiny_dir, tmp_path, monkeypatch):
    import gguf

    def die(self, *, progress=False):
        self.fout[0].write(b"half a tensor")  # something was written before the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", die)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_dir, tmp_path / "x.gguf", type="f32")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_rope_scaling_is_written(tiny_llama, smollm2_tokenizer, tmp_path):
    import gguf

    from llamaforge.export.gguf import write_gguf

    tiny_llama.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    write_gguf(tiny_llama, smollm2_tokenizer, tmp_path / "linear.gguf", type="f32")
    fields = gguf.GGUFReader(str(tmp_path / "linear.gguf")).fields
    assert fields["llama.rope.scaling.type"].contents() == "linear"
    assert fields["llama.rope.scaling.factor"].contents() == 2.0

    tiny_llama.config.rope_parameters = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 5e5,
    }
    write_gguf(tiny_llama, smollm2_tokenizer, tmp_path / "llama3.gguf", type="f32")
    reader = gguf.GGUFReader(str(tmp_path / "llama3.gguf"))
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    # head_dim 8 → 4 frequencies: the fastest is unscaled, the slowest scaled by the factor
    assert factors[0] == 1.0 and factors[-1] == 8.0 and len(factors) == 4


@pytest.mark.slow  # GGUF exports/reloads of a 49152-token vocabulary: 10-30 s
def test_gguf_base_converts_to_safetensors(exported, tiny_dir, tmp_path, monkeypatch):
    import json

    from llamaforge.export.merge import convert_model

    monkeypatch.setenv("LLAMAFORGE_CACHE", str(tmp_path / "cache"))
    _, path = exported("f32")
    report = convert_model(str(path), tmp_path / "hf")
    assert report.max_abs_logit_diff == 0.0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    diff, _ = _compare(_logits(_source_model(tiny_dir)), _logits(_source_model(tmp_path / "hf")))
    assert diff < 1e-5


@pytest.mark.slow  # a GGUF export of a 49152-token vocabulary
def test_a_run_trained_with_rope_scaling_keeps_it_in_inference_merge_and_gguf(
    tiny_dir, make_adapter, tmp_path
):
    import json

    import gguf

    from llamaforge.config.sections import ModelConfig
    from llamaforge.export.merge import merge_adapter
    from llamaforge.models import load_model

    run = make_adapter(tiny_dir, name="run")
    scaling = "model:\n  model: {}\n  rope_scaling: {{rope_type: linear, factor: 4.0}}\n"
    (run / "config.yaml").write_text(scaling.format(tiny_dir))
    plain, _ = load_model(ModelConfig(model=str(tiny_dir)))
    model, _ = load_model(ModelConfig(model=str(run)))  # generate / serve / chat load this way
    assert model.config.rope_parameters["rope_type"] == "linear"
    rotary = model.base_model.model.model.rotary_emb
    assert torch.allclose(rotary.inv_freq, plain.model.rotary_emb.inv_freq / 4)

    merged = tmp_path / "merged"
    merge_adapter(None, run, merged)  # verified: base + adapter and merged agree, both scaled
    saved = json.loads((merged / "config.json").read_text())["rope_parameters"]
    assert saved["rope_type"] == "linear" and saved["factor"] == 4.0

    out = tmp_path / "run.gguf"
    export_gguf(run, out, type="f32")
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["llama.rope.scaling.type"].contents() == "linear"
    assert fields["llama.rope.scaling.factor"].contents() == 4.0
