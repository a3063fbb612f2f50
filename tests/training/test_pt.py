"""Stage pt: raw documents joined with EOS into blocks (token ids), and pretraining on
them lowers the perplexity of held-out documents."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import read_log, tiny_config

from llamaforge.data.formats import TextDocument
from llamaforge.data.pretraining import pretraining_blocks
from llamaforge.errors import DataError
from llamaforge.methods import run_training

DOCS = ["The cat sat on the mat.", "Dogs bark at night, loudly.", "一只猫在睡觉。", "x"]


def test_blocks_join_documents_with_eos_and_drop_nothing(smollm2_tokenizer):
    tok = smollm2_tokenizer
    records = [TextDocument(text) for text in DOCS]
    blocks = pretraining_blocks(records, tok, 7, show_progress=False)
    ids = [i for block in blocks["input_ids"] for i in block]
    expected: list[int] = []
    for text in DOCS:
        expected += [*tok(text, add_special_tokens=True)["input_ids"], tok.eos_token_id]
    assert ids == expected  # every document, in order, each followed by EOS
    lengths = [len(b) for b in blocks["input_ids"]]
    assert all(n == 7 for n in lengths[:-1]) and 0 < lengths[-1] <= 7
    assert blocks["labels"] == blocks["input_ids"]
    # Document boundaries inside a block are exactly the EOS positions.
    assert ids.count(tok.eos_token_id) == len(DOCS)


def test_pt_refuses_records_that_are_not_text(smollm2_tokenizer):
    from llamaforge.data.formats import Conversation, Message

    chat = Conversation((Message("user", "hi"), Message("assistant", "hello")), source="d.json:1")
    with pytest.raises(DataError, match=r"d\.json:1: stage pt trains on raw text"):
        pretraining_blocks([chat], smollm2_tokenizer, 8)


def test_pt_lowers_held_out_perplexity(tiny_model_dir, tmp_path):
    sentences = [
        f"The {a} {b} sat on the {c} and looked at the {d}."
        for a in ("small", "old", "red", "tall")
        for b in ("cat", "dog", "bird")
        for c in ("mat", "chair", "roof")
        for d in ("moon", "sea")
    ]
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    cfg = tiny_config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        stage="pt",
        finetuning="full",
        cutoff_len=64,
        val_set_size=8,
        max_steps=8,
        eval_steps=4,
        save_steps=4,
        learning_rate=1e-2,
    )
    run_dir = run_training(cfg)
    evals = [r for r in read_log(run_dir) if "eval_perplexity" in r]
    assert [r["step"] for r in evals] == [0, 4, 8]  # 0: before training
    assert evals[-1]["eval_perplexity"] < 0.5 * evals[0]["eval_perplexity"], evals
    assert evals[0]["eval_perplexity"] == pytest.approx(torch.tensor(evals[0]["eval_loss"]).exp())
    saved = json.loads((run_dir / "run_metadata.json").read_text())["plan"]
    assert saved["stage"] == "pt"


def test_pt_with_train_embeddings_trains_embeddings_and_lora(
    tiny_model_dir, tmp_path, capture_attach
):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(DOCS * 4), encoding="utf-8")
    cfg = tiny_config(
        tiny_model_dir, data, tmp_path / "run", stage="pt", train_embeddings=True, max_steps=2
    )
    run_dir = run_training(cfg)
    trained = capture_attach.trainable
    assert any("embed_tokens" in n for n in trained) and any("lora_A" in n for n in trained)
    from safetensors.torch import load_file

    saved = load_file(run_dir / "adapter_model.safetensors")
    assert any("embed_tokens" in n for n in saved)


@pytest.mark.slow
def test_pt_on_the_bundled_model(tmp_path, smollm2_cached):
    """A short real run: the bundled model pretrains on raw text and evaluates perplexity."""
    text = (
        "Continued pretraining teaches a model new text. "
        "Documents are joined with an end-of-sequence token and cut into blocks. "
    )
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}. {text}"}) + "\n" for i in range(24)))
    cfg = tiny_config(
        "smollm2-135m",
        data,
        tmp_path / "run",
        stage="pt",
        cutoff_len=64,
        val_set_size=4,
        max_steps=3,
        eval_steps=3,
        save_steps=3,
        learning_rate=1e-3,
        precision="auto",
    )
    run_dir = run_training(cfg)
    evals = [r for r in read_log(run_dir) if "eval_perplexity" in r]
    assert evals and 1 < evals[-1]["eval_perplexity"] < 100
    assert (run_dir / "adapter_model.safetensors").is_file()


def _corpus_files(tmp_path):
    """A JSON Lines file and a text file of documents (a folder dataset reads both)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    sentences = [f"Document {i}: the {w} walked to the river." for i, w in enumerate("abcdefghij")]
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    (folder / "b.txt").write_text(
        "first paragraph\nstill first\n\n\nsecond one\n", encoding="utf-8"
    )
    return folder


def test_streamed_blocks_are_the_in_memory_blocks(smollm2_tokenizer, tmp_path):
    from llamaforge.config import load_run_config
    from llamaforge.data.registry import load_dataset_records, resolve_dataset
    from llamaforge.data.streaming import StreamedBlocks, head_documents

    folder = _corpus_files(tmp_path)
    cfg = load_run_config(None, (), dataset=[str(folder)], format="text")
    records = load_dataset_records(cfg.data)
    assert [r.text for r in records][-2:] == ["first paragraph\nstill first", "second one"]
    spec = resolve_dataset(str(folder), cfg.data)
    in_memory = pretraining_blocks(records[3:], smollm2_tokenizer, 9, show_progress=False)
    streamed = list(StreamedBlocks([spec], smollm2_tokenizer, 9, skip_documents=3))
    assert [b["input_ids"] for b in streamed] == in_memory["input_ids"]
    assert [b["labels"] for b in streamed] == in_memory["labels"]
    assert [d.text for d in head_documents([spec], 3)] == [r.text for r in records[:3]]
    assert list(StreamedBlocks([spec], smollm2_tokenizer, 9, skip_documents=3)) == streamed


def test_streaming_needs_max_steps_and_a_count_of_documents(tmp_path):
    from llamaforge.config import load_run_config
    from llamaforge.errors import ConfigError

    base = {"stage": "pt", "streaming": True, "dataset": ["x.jsonl"]}
    with pytest.raises(ConfigError, match="set max_steps"):
        load_run_config(None, (), **base)
    with pytest.raises(ConfigError, match="give a count of documents"):
        load_run_config(None, (), **base, max_steps=5, val_set_size=0.1)
    assert load_run_config(None, (), **base, max_steps=5, val_set_size=2).options.streaming


def test_streaming_pt_trains_evaluates_and_resumes_exactly(tiny_model_dir, tmp_path):
    import shutil

    folder = _corpus_files(tmp_path)
    cfg = tiny_config(
        tiny_model_dir,
        folder,
        tmp_path / "run",
        stage="pt",
        streaming=True,
        format="text",
        finetuning="full",
        cutoff_len=16,
        micro_batch_size=2,
        batch_size=2,
        val_set_size=2,
        max_steps=6,  # more blocks than one pass of the stream holds: it is read again
        eval_steps=3,
        save_steps=3,
    )
    run_dir = run_training(cfg)
    log = read_log(run_dir)
    losses = {r["step"]: r["loss"] for r in log if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    evals = [r["eval_perplexity"] for r in log if "eval_perplexity" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]  # before training, step 3, step 6
    metadata = json.loads((run_dir / "run_metadata.json").read_text())
    assert len(metadata["data_hash"]) == 16  # the files' identity, not the corpus read

    # Killed after checkpoint-3: the resumed run skips the blocks it had consumed.
    shutil.rmtree(run_dir / "checkpoint-6")
    resumed = run_training(_resuming(cfg))
    again = {r["step"]: r["loss"] for r in read_log(resumed) if "loss" in r}
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(losses[step], abs=1e-6), (step, again, losses)


def _resuming(cfg):
    import dataclasses

    return dataclasses.replace(
        cfg, training=dataclasses.replace(cfg.training, resume_from_checkpoint="auto")
    )


def test_empty_documents_are_skipped_not_refused(smollm2_tokenizer, tmp_path):
    from llamaforge.data.formats import read_records

    data = tmp_path / "answers.json"  # Alpaca answers used as text: some are empty
    rows = [{"output": "第一个答案。"}, {"output": ""}, {"output": "second answer"}]
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    records = read_records(data, format="text", columns={"text": "output"})
    blocks = pretraining_blocks(records, smollm2_tokenizer, 64, show_progress=False)
    kept = [r for r in records if r.text]
    assert blocks["input_ids"] == pretraining_blocks(kept, smollm2_tokenizer, 64)["input_ids"]
    assert len(kept) == 2
