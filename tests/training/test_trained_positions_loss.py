"""TrainedPositionsTrainer.compute_loss: packed == padded == the model's own loss, and no
example in a packed row sees another — with transformers' sdpa (block-diagonal mask) and with
our per-example packed attention (training/packing.py), which training uses."""

from __future__ import annotations

import pytest
import torch
from training_helpers import OVERFIT_RECORDS

from llamaforge.config.sections import DataConfig
from llamaforge.data import tokenize_records
from llamaforge.data.formats import read_records
from llamaforge.training.packing import packing_collator, use_packed_attention
from llamaforge.training.trainer import TrainedPositionsTrainer

RECORDS = [
    *OVERFIT_RECORDS,
    {"instruction": "Write a haiku about rain.", "input": "", "output": "Soft rain on the roof."},
]


@pytest.fixture(scope="module", params=["sdpa", "packed"])
def peaked_llama(request, make_tiny_llama):
    """A tiny random Llama with large weights: its logits are far from uniform, so one
    example attending to another changes the loss visibly (tiny_llama's barely move).
    Runs once with transformers' sdpa and once with our per-example packed attention."""
    model = make_tiny_llama(initializer_range=0.3)
    if request.param == "packed":
        assert use_packed_attention(model)
    return model


@pytest.fixture(scope="module")
def features(smollm2_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "records.json"
    import json

    path.write_text(json.dumps(RECORDS))
    records = read_records(path)
    dataset = tokenize_records(records, smollm2_tokenizer, DataConfig(), use_cache=False)
    return [dict(row) for row in dataset]


@pytest.fixture(scope="module")
def trainer(peaked_llama, tmp_path_factory):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("out")), use_cpu=True, report_to="none"
    )
    return TrainedPositionsTrainer(model=peaked_llama, args=args)


def collate(features, tokenizer, packed: bool) -> dict[str, torch.Tensor]:
    from transformers import DataCollatorForSeq2Seq

    if packed:
        return packing_collator()(features)
    return DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)(
        features
    )


def test_packed_loss_equals_padded_loss_equals_model_loss(
    trainer, peaked_llama, features, smollm2_tokenizer
):
    packed = collate(features, smollm2_tokenizer, packed=True)
    padded = collate(features, smollm2_tokenizer, packed=False)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert padded["input_ids"].shape[0] == len(RECORDS)

    with torch.no_grad():
        loss_packed = trainer.compute_loss(peaked_llama, packed).item()
        loss_padded = trainer.compute_loss(peaked_llama, padded).item()
        # The reference: transformers' own shifted cross-entropy over the full vocabulary.
        reference = peaked_llama(**padded).loss.item()
    assert loss_padded == pytest.approx(reference, rel=1e-6)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-4)

    # The same packed row under a plain causal mask (examples see each other) gives another
    # loss: the comparison above would catch a missing block-diagonal mask.
    leaky = {key: packed[key] for key in ("input_ids", "labels", "position_ids")}
    leaky["attention_mask"] = torch.ones_like(packed["input_ids"])
    with torch.no_grad():
        loss_leaky = trainer.compute_loss(peaked_llama, leaky).item()
    assert abs(loss_leaky - loss_packed) > 1e-3 * loss_packed


def test_no_example_attends_to_another_in_a_packed_row(peaked_llama, features, smollm2_tokenizer):
    packed = collate(features, smollm2_tokenizer, packed=True)
    first_len = len(features[0]["input_ids"])
    second = slice(first_len, first_len + len(features[1]["input_ids"]))
    changed = {k: v.clone() if torch.is_tensor(v) else v for k, v in packed.items()}
    # New tokens for example 1, except its BOS/<|im_start|> prefix.
    changed["input_ids"][0, 2:first_len] = torch.randint(
        100, 1000, (first_len - 2,), generator=torch.Generator().manual_seed(0)
    )
    # use_cache=False as in training: with a cache transformers' sdpa path builds no
    # block-diagonal mask (ours needs none).
    with torch.no_grad():
        before = peaked_llama(
            **{k: v for k, v in packed.items() if k != "labels"}, use_cache=False
        ).logits[0]
        after = peaked_llama(
            **{k: v for k, v in changed.items() if k != "labels"}, use_cache=False
        ).logits[0]
    assert not torch.allclose(before[:first_len], after[:first_len])
    torch.testing.assert_close(after[second], before[second], rtol=0, atol=1e-5)
    torch.testing.assert_close(after[first_len:], before[first_len:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_peft_loss_equals_the_models_own_loss(method, smollm2_tokenizer, features, tmp_path):
    """Prompt tuning prepends virtual tokens: the trained-positions mask must shift with them."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from llamaforge.adapters.attach import attach_adapter
    from llamaforge.config.sections import FinetuningConfig

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(smollm2_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.3,
            pad_token_id=smollm2_tokenizer.pad_token_id,
        )
    )
    model = attach_adapter(base, FinetuningConfig(finetuning=method, num_virtual_tokens=3))
    model.eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = TrainedPositionsTrainer(model=model, args=args)
    padded = collate(features, smollm2_tokenizer, packed=False)
    with torch.no_grad():
        ours = trainer.compute_loss(model, padded).item()
        reference = model(**padded).loss.item()
    assert ours == pytest.approx(reference, rel=1e-6)
