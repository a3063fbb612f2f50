"""`llamaforge tokenizer extend`: the written directory is a model every command loads
(generate, train stage=pt), its old logits are the base's, and bad input fails first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamaforge.cli import main
from llamaforge.config import load_run_config
from llamaforge.config.sections import ModelConfig
from llamaforge.errors import DataError, ExportError, ModelError
from llamaforge.export.extend import extend_model, read_corpus
from llamaforge.models import load_model, load_tokenizer

FIXTURES = Path(__file__).parents[1] / "models" / "fixtures"
CORPUS = FIXTURES / "zh_corpus.txt"
HELDOUT = FIXTURES / "zh_heldout.txt"
ENGLISH = "The capital of France is Paris, and the capital of Italy is Rome."


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_command_writes_a_model_that_generates_and_keeps_old_logits(
    tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "extended"
    argv = ["tokenizer", "extend", "--model", str(tiny_model_dir), "--corpus", str(CORPUS)]
    assert main([*argv, "--add", "200", "--output", str(out), "--heldout", str(HELDOUT)]) == 0
    summary = capsys.readouterr().out
    assert "added 200 tokens (ids 49152..49351); vocab_size 49352, embeddings tied" in summary
    assert "corpus" in summary and "held-out" in summary and "tokens/char before" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 49352 and config["tie_word_embeddings"] is True
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape[0] == 49352
    assert "lm_head.weight" not in weights  # tied: re-tied on load

    base, old_tokenizer = load_model(ModelConfig(model=str(tiny_model_dir)))
    model, tokenizer = load_model(ModelConfig(model=str(out)))
    assert len(tokenizer) == 49352 and tokenizer.chat_template == old_tokenizer.chat_template
    ids = tokenizer(ENGLISH)["input_ids"]
    assert ids == old_tokenizer(ENGLISH)["input_ids"]
    assert torch.allclose(_logits(model, ids)[:, :49152], _logits(base, ids), atol=1e-5)
    chinese = "我们每天早上去公园散步，锻炼身体。"
    new_ids = tokenizer(chinese)["input_ids"]
    assert max(new_ids) >= 49152 and tokenizer.decode(new_ids) == chinese

    prompt = ["generate", "--model", str(out), "--prompt", "你好", "--max-new-tokens", "3"]
    assert main([*prompt, "--temperature", "0"]) == 0  # a random model: any text will do


def test_untied_lm_head_gets_its_own_mean_rows(smollm2_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamaforge.models.vocabulary import learn_vocabulary

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    untied = LlamaForCausalLM(config).eval()
    base = tmp_path / "untied"
    untied.save_pretrained(base)
    smollm2_tokenizer.save_pretrained(base)
    report = extend_model(str(base), [CORPUS], 50, tmp_path / "out", show_progress=False)
    assert not report.tied_embeddings and report.vocab_size == 49152 + 50
    weights = load_file(tmp_path / "out" / "model.safetensors")
    head, embed = weights["lm_head.weight"], weights["model.embed_tokens.weight"]
    assert torch.equal(head[:49152], untied.lm_head.weight.detach())
    # Learning is deterministic: the same corpus gives the same tokens and pieces again.
    extension = learn_vocabulary(
        smollm2_tokenizer.backend_tokenizer, read_corpus([CORPUS]), 50, show_progress=False
    )
    for row, pieces in enumerate(extension.pieces, start=49152):
        expected_head = untied.lm_head.weight.detach()[list(pieces)].mean(0)
        expected_embed = untied.model.embed_tokens.weight.detach()[list(pieces)].mean(0)
        assert torch.allclose(head[row], expected_head) and torch.allclose(
            embed[row], expected_embed
        )
    assert not torch.equal(head[49152:], embed[49152:])


def test_pt_trains_a_step_on_the_extended_model(tiny_model_dir, tmp_path):
    from llamaforge.methods import run_training

    out = tmp_path / "extended"
    extend_model(str(tiny_model_dir), [CORPUS], 100, out, show_progress=False)
    data = tmp_path / "pt.txt"
    data.write_text(HELDOUT.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = load_run_config(
        None,
        (),
        model=str(out),
        stage="pt",
        train_embeddings=True,  # LoRA + the (new) embedding rows: the recipe after extending
        dataset=[str(data)],
        output_dir=str(tmp_path / "run"),
        precision="fp32",
        cutoff_len=32,
        batch_size=2,
        micro_batch_size=2,
        max_steps=1,
        logging_steps=1,
    )
    run_dir = run_training(cfg)
    log = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1]
    adapter = load_file(run_dir / "adapter_model.safetensors")
    assert adapter["base_model.model.model.embed_tokens.weight"].shape == (49252, 32)
    assert adapter["base_model.model.lm_head.weight"].shape == (49252, 32)


def test_pt_trains_only_the_new_token_rows_and_merges(tiny_model_dir, tmp_path):
    from llamaforge.errors import ConfigError
    from llamaforge.export.merge import merge_adapter
    from llamaforge.methods import run_training

    out = tmp_path / "extended"
    report = extend_model(str(tiny_model_dir), [CORPUS], 100, out, show_progress=False)
    data = tmp_path / "pt.txt"
    data.write_text(CORPUS.read_text(encoding="utf-8"), encoding="utf-8")
    values = {
        "stage": "pt",
        "train_new_tokens": True,
        "dataset": [str(data)],
        "precision": "fp32",
        "cutoff_len": 32,
        "batch_size": 2,
        "micro_batch_size": 2,
        "max_steps": 3,
        "learning_rate": 5e-2,
    }
    with pytest.raises(ConfigError, match=r"has no vocabulary_extension\.json"):
        run_training(load_run_config(None, (), **values, model=str(tiny_model_dir)))
    run_dir = run_training(
        load_run_config(None, (), **values, model=str(out), output_dir=str(tmp_path / "run"))
    )
    adapter = load_file(run_dir / "adapter_model.safetensors")
    rows = [k for k in adapter if "trainable_tokens" in k]
    assert rows and all(adapter[k].shape == (100, 32) for k in rows), rows  # the 100 new rows
    assert not any(k.endswith("embed_tokens.weight") for k in adapter)  # no full copy

    merged = tmp_path / "merged"
    merge_adapter(None, run_dir, merged)  # verified against base + adapter
    before = load_file(out / "model.safetensors")["model.embed_tokens.weight"]
    after = load_file(merged / "model.safetensors")["model.embed_tokens.weight"]
    first = report.first_id
    assert torch.equal(after[:first], before[:first])  # old tokens keep their embeddings
    assert not torch.allclose(after[first:], before[first:])  # new ones learned


def test_bad_input_fails_before_the_model_loads(tmp_path, capsys):
    # The model path does not exist either: the corpus and --add are checked first.
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        extend_model("no/such/model", [tmp_path / "missing.txt"], 10, tmp_path / "out")
    with pytest.raises(ExportError, match="--add must be a positive number"):
        extend_model("no/such/model", [CORPUS], 0, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        extend_model("no/such/model", [CORPUS], 10, tmp_path / "taken")
    argv = ["tokenizer", "extend", "--model", "x", "--corpus", str(tmp_path / "missing.txt")]
    assert main([*argv, "--add", "5", "--output", str(tmp_path / "o")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_a_sentencepiece_style_tokenizer_is_refused_before_the_weights_load(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE({"▁a": 0, "a": 1, "▁": 2, "<unk>": 3}, [("▁", "a")]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    model_dir = tmp_path / "spm"
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(model_dir)
    (model_dir / "config.json").write_text('{"model_type": "llama"}')  # no weights at all
    with pytest.raises(ModelError, match=r"Metaspace, without ByteLevel.*Supported: byte-level"):
        extend_model(str(model_dir), [CORPUS], 10, tmp_path / "out")


@pytest.fixture(scope="module")
def extended_real(smollm2_cache, tmp_path_factory):
    """The bundled model extended by 600 tokens learned from the Chinese fixture corpus."""
    out = tmp_path_factory.mktemp("extended") / "smollm2-zh"
    return extend_model("smollm2-135m", [CORPUS], 600, out, heldout=[HELDOUT]), out


@pytest.mark.slow
def test_the_bundled_model_extended_for_chinese(extended_real):
    """The real SmolLM2 tokenizer and model: held-out Chinese ≥ 40 % fewer tokens per char,
    English ids and old-vocabulary logits unchanged, and the written model still answers."""
    report, out = extended_real
    before, after = report.tokens_per_char["held-out"]
    assert after <= 0.6 * before, report.summary()
    assert report.vocab_size == 49152 + 600 and report.tied_embeddings
    assert report.max_abs_logit_diff < 1e-4  # saved model vs original, old vocabulary
    model, tokenizer = load_model(ModelConfig(model=str(out)))
    assert tokenizer(ENGLISH)["input_ids"] == load_tokenizer("smollm2-135m")(ENGLISH)["input_ids"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    answer = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt.shape[1] :])


@pytest.mark.slow
def test_the_extended_models_gguf_runs_in_llama_cpp_like_transformers(
    llama_cpp, extended_real, tmp_path
):
    """llama.cpp (the optional wheel) reads the extended vocabulary and merges from our GGUF:
    Chinese and English text to the same ids as transformers, the same greedy tokens."""
    from llamaforge.export.gguf import export_gguf

    _, out = extended_real
    path = tmp_path / "smollm2-zh.gguf"
    export_gguf(out, path, type="f32", verify=False, modelfile=False)
    model, tokenizer = load_model(ModelConfig(model=str(out)))
    chinese = HELDOUT.read_text(encoding="utf-8").split("\n")[0]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        for text in ("请用一句话介绍一下长城。", "What is the capital of France?")
    ]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    try:
        for text in (chinese, ENGLISH, *prompts):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert any(i >= 49152 for i in tokenizer(chinese)["input_ids"])  # new tokens in use
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                expected = model.generate(
                    torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=2
                )[0, len(ids) :].tolist()
            theirs = []
            for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                theirs.append(token)
                if len(theirs) == len(expected) or token == llm.token_eos():
                    break
            assert theirs == expected, (tokenizer.decode(theirs), tokenizer.decode(expected))
    finally:
        llm.close()
