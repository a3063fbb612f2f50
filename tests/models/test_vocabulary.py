"""Vocabulary extension on the bundled byte-level BPE: new tokens are merges ranked after the
old ones (old ids and old encodings unchanged, decoding lossless, Chinese much shorter), and
new embedding rows start as the mean of the rows of the old tokens they replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from llamaforge.errors import ModelError
from llamaforge.export.extend import read_corpus
from llamaforge.models.vocabulary import learn_vocabulary, resize_embeddings, tokens_per_char

FIXTURES = Path(__file__).parent / "fixtures"
ROUND_TRIP = [
    "北京是中国的首都，也是一座有三千多年历史的城市。",  # Chinese the corpus never had
    "The quick brown fox jumps over the lazy dog; isn't it 3:45 pm?",
    "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)  # 平均\n",
    "Emoji 😀👍🏽🇫🇷 👨‍👩‍👧 and ünïcödé — naïve café, 日本語 한국어.",
    "混合 text: 我们用 Python 写代码，then run `pytest -q`。",
]
ENGLISH = [
    "Continued pretraining on raw text teaches a model a new language.",
    "LoRA adapters are small: rank 8 on q_proj and v_proj is about 0.3 % of the weights.",
    "import torch\nx = torch.zeros(2, 3)\nprint(x.shape)  # torch.Size([2, 3])\n",
    "Emoji 🎉🙂 and numbers 1234567890, URLs https://example.com/a?b=c.",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_corpus([FIXTURES / "zh_corpus.txt"])


@pytest.fixture(scope="module")
def heldout() -> list[str]:
    return read_corpus([FIXTURES / "zh_heldout.txt"])


@pytest.fixture(scope="module")
def extension(smollm2_tokenizer, corpus):
    return learn_vocabulary(smollm2_tokenizer.backend_tokenizer, corpus, 200, show_progress=False)


def test_unseen_chinese_needs_40_percent_fewer_tokens(smollm2_tokenizer, corpus, heldout):
    old = smollm2_tokenizer.backend_tokenizer
    assert not set(heldout) & set(corpus)
    extended = learn_vocabulary(old, corpus, 600, show_progress=False)
    before, after = tokens_per_char(old, heldout), tokens_per_char(extended.tokenizer, heldout)
    assert before > 1.7  # the bundled tokenizer spends ~2 byte tokens on most Chinese chars
    assert after <= 0.6 * before, (before, after)


def test_new_tokens_are_merges_after_the_old_ones(smollm2_tokenizer, extension):
    old = json.loads(smollm2_tokenizer.backend_tokenizer.to_str())
    new = json.loads(extension.tokenizer.to_str())
    assert extension.first_id == 49152 and len(extension.tokens) == 200
    assert new["model"]["merges"][: len(old["model"]["merges"])] == old["model"]["merges"]
    assert len(new["model"]["merges"]) == len(old["model"]["merges"]) + extension.merges
    # Every old id keeps its token; the new ones are plain vocabulary entries, not added
    # tokens (which would be matched before pre-tokenization).
    vocab = new["model"]["vocab"]
    assert {t: vocab[t] for t in old["model"]["vocab"]} == old["model"]["vocab"]
    assert [vocab[t] for t in extension.tokens] == list(range(49152, 49352))
    assert new["added_tokens"] == old["added_tokens"]
    # Each new token is the text of the old tokens it replaces.
    for token, pieces in zip(extension.tokens, extension.pieces, strict=True):
        assert "".join(smollm2_tokenizer.convert_ids_to_tokens(list(pieces))) == token


def test_round_trip_is_lossless_and_english_ids_are_unchanged(smollm2_tokenizer, extension):
    old, new = smollm2_tokenizer.backend_tokenizer, extension.tokenizer
    for text in ROUND_TRIP:
        ids = new.encode(text, add_special_tokens=False).ids
        assert new.decode(ids) == text
    chinese = new.encode(ROUND_TRIP[0], add_special_tokens=False).ids
    assert any(i >= extension.first_id for i in chinese)
    for text in ENGLISH:
        assert (
            new.encode(text, add_special_tokens=False).ids
            == old.encode(text, add_special_tokens=False).ids
        )


def _toy_byte_level_bpe() -> Tokenizer:
    """A ByteLevel BPE whose segmentation of "abc" is [a, bc] while "abc" is a token."""
    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "bc": 4, "ab": 5, "abc": 6}
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_a_merge_into_an_old_token_is_left_out():
    old = _toy_byte_level_bpe()
    assert old.encode("abc").tokens == ["a", "bc"]
    extension = learn_vocabulary(old, ["abc"] * 5 + ["dd"] * 3, 1, show_progress=False)
    # (a, bc) is the most frequent pair but would re-segment "abc"; (d, d) is learned instead.
    assert extension.dropped == 1 and extension.tokens == ("dd",)
    assert extension.tokenizer.encode("abc").ids == [0, 4]
    assert extension.tokenizer.encode("dd").ids == [7]


def test_fewer_tokens_when_the_corpus_runs_out(caplog):
    extension = learn_vocabulary(_toy_byte_level_bpe(), ["dd"] * 3, 50, show_progress=False)
    assert extension.tokens == ("dd",)
    assert "learned 1 of 50 tokens" in caplog.text


def test_only_byte_level_bpe_is_supported():
    metaspace = Tokenizer(models.BPE({"▁a": 0, "a": 1, "▁": 2}, [("▁", "a")]))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(ModelError, match=r"without ByteLevel.*Supported: byte-level BPE"):
        learn_vocabulary(metaspace, ["a a"], 10, show_progress=False)
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ModelError, match=r"its model is WordPiece, not BPE"):
        learn_vocabulary(wordpiece, ["a"], 10, show_progress=False)
    with pytest.raises(ModelError, match=r"must be positive, got 0"):
        learn_vocabulary(_toy_byte_level_bpe(), ["abc"], 0, show_progress=False)


def _tiny(vocab_size: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_the_mean_of_the_pieces(tied):
    model = _tiny(100, tied)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    pieces = [(3, 4), (10, 11, 12), (99, 0)]
    assert resize_embeddings(model, 100, pieces) == 103
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert model.config.vocab_size == 103 and embed.shape == head.shape == (103, 16)
    assert torch.equal(embed[:100], embed_before) and torch.equal(head[:100], head_before)
    for row, p in enumerate(pieces, start=100):
        assert torch.allclose(embed[row], embed_before[list(p)].mean(0))
        assert torch.allclose(head[row], head_before[list(p)].mean(0))
    assert (head is embed) == tied


def test_padding_rows_past_the_tokenizer_are_reused():
    model = _tiny(64, tied=True)  # a checkpoint padded past its 60-token tokenizer
    before = model.get_input_embeddings().weight.detach().clone()
    assert resize_embeddings(model, 60, [(1, 2), (3, 4)]) == 64
    weight = model.get_input_embeddings().weight
    assert torch.allclose(weight[61], before[[3, 4]].mean(0))
    assert torch.equal(weight[62:], before[62:]) and torch.equal(weight[:60], before[:60])
    with pytest.raises(ModelError, match="does not belong to this model"):
        resize_embeddings(model, 65, [(1, 2)])
