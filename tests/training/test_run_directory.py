"""The run directory: exactly the expected files, each with the content it promises, and
saved weights that reload (plain transformers / plain peft / llamaforge) to identical logits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from training_helpers import AttachedModel, read_log, tiny_config

from llamaforge.config.loader import config_to_dict
from llamaforge.config.sections import ModelConfig
from llamaforge.data import tokenize_records
from llamaforge.data.registry import load_dataset_records
from llamaforge.methods.sft import run_sft
from llamaforge.models import load_model
from llamaforge.rundir import CHECKPOINT_MARKER

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
RUN_FILES = {
    "config.yaml",
    "run_metadata.json",
    "trainer_log.jsonl",
    "loss.png",
    "summary.json",
    # Written by the HF Trainer's save_model next to the weights (a pickle; nothing reads it).
    "training_args.bin",
}
PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
FULL_FILES = {"config.json", "generation_config.json", "model.safetensors"}
CHECKPOINT_FILES = {
    CHECKPOINT_MARKER,
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.bin",
} | TOKENIZER_FILES

PROBE = "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


def test_lora_run_directory_contents(
    tiny_model_dir, overfit_data, tmp_path, smollm2_tokenizer, capture_attach
):
    cfg = tiny_config(tiny_model_dir, overfit_data, tmp_path / "run", save_steps=3)
    run_dir = run_sft(cfg)

    names = {p.name for p in run_dir.iterdir()}
    assert names == RUN_FILES | PEFT_FILES | TOKENIZER_FILES | {"checkpoint-3", "checkpoint-6"}
    for step in (3, 6):
        checkpoint = run_dir / f"checkpoint-{step}"
        assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES | PEFT_FILES
        marker = json.loads((checkpoint / CHECKPOINT_MARKER).read_text())
        metadata = json.loads((run_dir / "run_metadata.json").read_text())
        assert marker["step"] == step
        assert marker["fingerprint"] == metadata["fingerprint"]

    # The config as resolved, the data hash, the versions.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == config_to_dict(cfg)
    assert metadata["seed"] == 42 and metadata["world_size"] == 1
    assert metadata["fingerprint"]["data_hash"] == metadata["data_hash"]
    assert {"torch", "transformers", "peft"} <= set(metadata["versions"])

    # One line per step, with the keys the web UI plots.
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all({"step", "loss", "learning_rate", "tokens_seen"} <= set(r) for r in log)
    assert all(r["learning_rate"] == pytest.approx(1e-2) for r in log)

    # Tokens trained: the whole 4-record set once per step (batch_size 4), pad tokens included
    # as the packed rows hold no padding (SmolLM2's pad id is its end-of-turn token).
    records = load_dataset_records(cfg.data)
    per_epoch = sum(
        len(ids) for ids in tokenize_records(records, smollm2_tokenizer, cfg.data)["input_ids"]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tokens_trained"] == 6 * per_epoch == log[-1]["tokens_seen"]
    assert summary["global_step"] == 6
    assert summary["first_loss"] == log[0]["loss"] and summary["final_loss"] == log[-1]["loss"]
    assert summary["wall_time_s"] > 0
    # tokens/s is timed from the train-begin callback, inside the wall time around
    # trainer.train(): at least tokens / wall (both rounded to 0.01).
    assert summary["tokens_per_s"] >= 0.95 * summary["tokens_trained"] / summary["wall_time_s"]
    assert summary["peak_memory_bytes"] > 50 * 2**20

    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert tokenizer.chat_template == smollm2_tokenizer.chat_template
    assert tokenizer(PROBE)["input_ids"] == smollm2_tokenizer(PROBE)["input_ids"]

    # The adapter loads in plain peft and through llamaforge to the trained model's logits.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    expected = logits(capture_attach.model, tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain = logits(PeftModel.from_pretrained(base, run_dir), tokenizer)
    ours, _ = load_model(ModelConfig(model=str(tiny_model_dir), adapter=str(run_dir)))
    from_run_dir, _ = load_model(ModelConfig(model=str(run_dir)))
    assert torch.equal(plain, logits(ours, tokenizer))
    assert torch.equal(plain, logits(from_run_dir, tokenizer))
    assert torch.equal(plain, expected)
    untrained = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    assert not torch.equal(plain, untrained)


def test_full_run_saves_plain_transformers_weights(
    tiny_model_dir, overfit_data, tmp_path, capture_attach: AttachedModel
):
    run_dir = run_sft(
        tiny_config(
            tiny_model_dir,
            overfit_data,
            tmp_path / "run",
            finetuning="full",
            max_steps=2,
            save_steps=2,
        )
    )
    names = {p.name for p in run_dir.iterdir()}
    assert names == RUN_FILES | FULL_FILES | TOKENIZER_FILES | {"checkpoint-2"}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(run_dir)
    assert reloaded.dtype == torch.float32
    trained = dict(capture_attach.model.named_parameters())
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, trained[name]), name
    assert torch.equal(logits(reloaded, tokenizer), logits(capture_attach.model, tokenizer))
    assert capture_attach.changed() == set(trained)
