"""Perplexity: every text token scored once with the context the windows promise, answers
only for conversations, per token and per character; the command's results.json."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llamaforge.cli import main
from llamaforge.data.formats import Conversation, Message, TextDocument
from llamaforge.data.tokenization import IGNORE_INDEX, tokenize_conversation
from llamaforge.evaluation.perplexity import PerplexityResult, score_texts, scored_texts

TEXT = (
    "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。 "
    "Perplexity counts how surprised a model is by each token it reads."
)


@torch.no_grad()
def token_nll(model, context: list[int], token: int) -> float:
    logits = model(torch.tensor([context]), logits_to_keep=1).logits[0, -1]
    return -logits.log_softmax(-1)[token].item()


def test_each_token_is_scored_once_with_its_window_context(make_tiny_llama, smollm2_tokenizer):
    model = make_tiny_llama(initializer_range=0.3)
    texts = scored_texts([TextDocument(TEXT, "doc")], smollm2_tokenizer, "chat")
    (text,) = texts
    eos = smollm2_tokenizer.eos_token_id
    ids = smollm2_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert text.ids == (eos, *ids)  # SmolLM2 adds no BOS: EOS starts the document
    assert text.characters == len(TEXT)
    block, stride = 8, 4
    (score,) = score_texts(model, texts, block_size=block, batch_size=3, show_progress=False)
    assert score.tokens == len(ids)
    expected = 0.0
    for i in range(1, len(text.ids)):
        # the first window that holds token i with context begins at k * stride
        k = next(k for k in range(len(text.ids)) if min(k * stride + block, len(text.ids)) > i)
        expected += token_nll(model, list(text.ids[k * stride : i]), text.ids[i])
    assert score.nll == pytest.approx(expected, rel=1e-5)
    # one window over everything: the plain full-context NLL
    (whole,) = score_texts(model, texts, block_size=1024, show_progress=False)
    logits = model(torch.tensor([text.ids])).logits[0, :-1]
    full = torch.nn.functional.cross_entropy(logits, torch.tensor(text.ids[1:]), reduction="sum")
    assert whole.nll == pytest.approx(full.item(), rel=1e-5)
    result = PerplexityResult((whole,), 1024, 0.0)
    metrics = result.metrics()
    assert metrics["token_perplexity"] == pytest.approx(math.exp(full.item() / len(ids)))
    assert metrics["char_perplexity"] == pytest.approx(math.exp(full.item() / len(TEXT)))
    assert metrics["bits_per_char"] == pytest.approx(full.item() / len(TEXT) / math.log(2))


def test_conversations_score_their_answers(make_tiny_llama, smollm2_tokenizer):
    model = make_tiny_llama(initializer_range=0.3)
    conv = Conversation(
        (Message("user", "Name a colour."), Message("assistant", "Blue, like the sky.")), "c"
    )
    (text,) = scored_texts([conv], smollm2_tokenizer, "chat")
    example = tokenize_conversation(conv, smollm2_tokenizer, "chat", cutoff_len=4096)
    labels = example["labels"]
    trained = [i for i in range(1, len(labels)) if labels[i] != IGNORE_INDEX]
    assert text.ids == tuple(example["input_ids"]) and text.characters == len("Blue, like the sky.")
    (score,) = score_texts(model, [text], show_progress=False)
    assert score.tokens == len(trained)
    expected = sum(token_nll(model, list(text.ids[:i]), text.ids[i]) for i in trained)
    assert score.nll == pytest.approx(expected, rel=1e-5)


def test_perplexity_command(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "notes.txt"
    data.write_text(f"{TEXT}\n\nA second document, separated by a blank line.\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["--suite", "ppl", "--data", str(data), "--block-size", "16", "--output", str(out)]
    assert main(["eval", "--model", str(tiny_model_dir), *args]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["kind"] == "perplexity" and results["block_size"] == 16
    documents = results["documents"]
    assert [d["source"] for d in documents] == [f"{data}:1", f"{data}:3"]
    assert [d["characters"] for d in documents] == [len(TEXT), 45]
    metrics = results["metrics"]
    nll = sum(d["nll"] for d in documents)
    assert metrics["tokens"] == sum(d["tokens"] for d in documents)
    assert metrics["token_perplexity"] == pytest.approx(math.exp(nll / metrics["tokens"]))
    assert metrics["char_perplexity"] == pytest.approx(math.exp(nll / (len(TEXT) + 45)))
    assert f"{metrics['token_perplexity']:.4f} per token" in capsys.readouterr().out
