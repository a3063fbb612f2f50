"""Stage dpo: TRL's DPOTrainer fed our template's texts (token ids checked against SFT's),
each pref_loss raising the held-out margin on a tiny model, the LoRA reference as the
adapter disabled, full fine-tuning with a frozen copy or precomputed reference log-probs,
the shared-prompt scoring equal to TRL's own, and exact resume after SIGKILL."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_helpers import read_log, real_preference_config, tiny_config

from llamaforge.config import load_run_config
from llamaforge.data.formats import Message, Preference
from llamaforge.data.templates import get_template
from llamaforge.data.tokenization import encode_answer
from llamaforge.errors import ConfigError
from llamaforge.methods import run_training
from llamaforge.rundir import CHECKPOINT_MARKER
from llamaforge.training.preference import check_tokenization, pair_rows
from llamaforge.training.preference_scoring import SCORED_OUTPUTS, share_prompt_scoring

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "examples" / "quickstart" / "train_pairs.json"
HELD_OUT = ROOT / "examples" / "quickstart" / "held_out_pairs.json"


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """24 of the project's pairs: with val_set_size=8, 16 train and 8 held out (seeded)."""
    rows = json.loads(PAIRS.read_text())[:24]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows))
    return path


def dpo_config(model_dir: Path, data: Path, out: Path, **values: object):
    defaults = {"stage": "dpo", "val_set_size": 8, "max_steps": 8, "eval_steps": 8}
    return tiny_config(model_dir, data, out, **{**defaults, **values})


def margins(run_dir: Path) -> list[float]:
    return [r["eval_rewards/margins"] for r in read_log(run_dir) if "eval_rewards/margins" in r]


@pytest.mark.parametrize(
    "loss, extra",
    [("sigmoid", {}), ("ipo", {}), ("hinge", {}), ("robust", {"label_smoothing": 0.1})],
)
def test_each_loss_raises_the_held_out_margin_with_lora(
    loss, extra, tiny_model_dir, pairs_file, tmp_path, capture_attach
):
    run_dir = run_training(
        dpo_config(tiny_model_dir, pairs_file, tmp_path / "run", pref_loss=loss, **extra)
    )
    log = read_log(run_dir)
    before, after = margins(run_dir)[0], margins(run_dir)[-1]
    assert before == 0.0  # step 0: the policy is the reference (LoRA B = 0)
    assert after > 0.05, log
    accuracy = [r["eval_rewards/accuracies"] for r in log if "eval_rewards/accuracies" in r]
    assert accuracy[-1] >= 0.75
    assert all("rewards/margins" in r and "rewards/chosen" in r for r in log if "loss" in r)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_metrics"]["eval_rewards/margins"] == after
    # Only the adapter trained; the reference was the base with the adapter disabled (no
    # second adapter named "ref", no second copy of the weights).
    changed = capture_attach.changed()
    assert changed and changed <= capture_attach.trainable
    assert all("lora_" in name for name in changed)
    assert list(capture_attach.model.peft_config) == ["default"]
    assert (run_dir / "adapter_model.safetensors").is_file()


def test_sft_weight_adds_the_chosen_answers_nll(tiny_model_dir, pairs_file, tmp_path):
    """RPO: before training the policy is the reference, so DPO's loss is ln 2 exactly and
    the rest of the loss is sft_weight × the chosen answers' mean token NLL — about
    ln(vocabulary) for a random model (TRL's "sft" term, fed by the shared-prompt scoring)."""
    weight = 0.5
    cfg = dpo_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, sft_weight=weight)
    first = next(r for r in read_log(run_training(cfg)) if "eval_loss" in r)
    nll = (first["eval_loss"] - math.log(2)) / weight
    assert abs(nll - math.log(49152)) < 0.5, first


@pytest.mark.parametrize("precompute", [False, True])
def test_full_fine_tuning_uses_a_frozen_reference_or_precomputed_log_probs(
    precompute, tiny_model_dir, pairs_file, tmp_path
):
    cfg = dpo_config(
        tiny_model_dir,
        pairs_file,
        tmp_path / "run",
        finetuning="full",
        learning_rate=1e-3,
        precompute_ref_log_probs=precompute,
    )
    run_dir = run_training(cfg)
    assert abs(margins(run_dir)[0]) < 1e-4 and margins(run_dir)[-1] > 0.05


def test_refuses_options_trl_would_ignore_or_break(tiny_model_dir, pairs_file, tmp_path):
    def load(**values: object) -> None:
        dpo_config(tiny_model_dir, pairs_file, tmp_path / "x", **values)

    with pytest.raises(ConfigError, match="label_smoothing': pref_loss sigmoid ignores it"):
        load(label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"label_smoothing': must be in \[0, 0.5\)"):
        load(pref_loss="robust", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="pref_loss': 'kto_pair' is not one of"):
        load(pref_loss="kto_pair")
    with pytest.raises(ConfigError, match="'beta': must be > 0"):
        load(beta=0)
    with pytest.raises(ConfigError, match="'sft_weight': must be >= 0"):
        load(sft_weight=-1)
    with pytest.raises(ConfigError, match="group_by_length"):
        load(group_by_length=True)
    with pytest.raises(ConfigError, match="belongs to stage 'dpo', not 'sft'"):
        load_run_config(None, ["beta=0.2"])


def _pref(prompt: str, chosen: str, rejected: str) -> Preference:
    return Preference((Message("user", prompt),), chosen, rejected, "pairs.json: record 1")


def test_trl_token_ids_are_ours_one_bos_one_end_of_turn(smollm2_tokenizer, tiny_llama, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = smollm2_tokenizer
    template = get_template("chat")
    records = [_pref("Subtract 2 from 9.", "Answer: 7\n-- llamaforge", "The answer is 7")]
    rows = pair_rows(records, tok, template, adds_specials=True)
    args = DPOConfig(str(tmp_path), bf16=False, use_cpu=True, report_to="none")
    trainer = DPOTrainer(
        tiny_llama,
        ref_model=copy.deepcopy(tiny_llama),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    prompt, chosen = encode_answer(records[0].prompt, records[0].chosen, tok, template)
    assert row["prompt_ids"] == prompt and row["chosen_ids"] == chosen
    full = row["prompt_ids"] + row["chosen_ids"]
    assert full.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant
    assert full[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert (
        row["chosen_ids"][-1] == tok.eos_token_id and row["chosen_ids"].count(tok.eos_token_id) == 1
    )
    assert tok.decode(row["chosen_ids"]) == "Answer: 7\n-- llamaforge<|im_end|>"
    check_tokenization(trainer.train_dataset, records, tok, template)  # passes

    # A template whose end-of-turn marker is not EOS: TRL would append EOS after it.
    llama3 = get_template("llama3")
    rows = pair_rows(records, tok, llama3, adds_specials=True)
    trainer = DPOTrainer(
        copy.deepcopy(tiny_llama),
        ref_model=copy.deepcopy(tiny_llama),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    with pytest.raises(
        ConfigError, match=r"pairs\.json: record 1: TRL tokenizes the chosen answer"
    ):
        check_tokenization(trainer.train_dataset, records, tok, llama3)


def test_shared_prompt_scoring_equals_trls_fused_head(tiny_llama):
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    theirs, ours = tiny_llama.train(), copy.deepcopy(tiny_llama).train()
    for model in (theirs, ours):
        add_fused_lm_head(model, outputs=SCORED_OUTPUTS)
    # TRL's contract this path stands in for: its fused forward on the instance.
    assert ours.forward.__func__.__code__.co_name == "_fused_forward"
    assert share_prompt_scoring(ours)
    examples = [  # different prompt and answer lengths: padding in both layouts
        {"prompt_ids": [1, 5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
        {"prompt_ids": [1, 5], "chosen_ids": [20, 21, 22, 23, 24], "rejected_ids": [30]},
        {"prompt_ids": [3, 4, 5, 6, 7, 8], "chosen_ids": [2], "rejected_ids": [9, 2]},
    ]
    batch = DataCollatorForPreference(pad_token_id=2)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outs = [
        m(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            fused_lm_head=True,
        )
        for m in (theirs, ours)
    ]
    for field in ("log_probs", "entropy", "mean_logits", "is_top1", "loss", "label_mask"):
        a, b = getattr(outs[0], field), getattr(outs[1], field)
        assert a.shape == b.shape == (outs[0].log_probs.shape if a.dim() else ())
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5)
    (outs[0].log_probs.sum() + outs[0].entropy.sum()).backward()
    (outs[1].log_probs.sum() + outs[1].entropy.sum()).backward()
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    # Anything that is not a pair batch goes to TRL's path; generation is untouched.
    single = ours(input_ids=batch["input_ids"][:1], labels=labels[:1], fused_lm_head=True)
    torch.testing.assert_close(
        single.log_probs, outs[0].log_probs[:1].detach(), atol=1e-5, rtol=1e-5
    )
    assert ours(input_ids=batch["input_ids"][:1]).logits.shape[-1] == ours.config.vocab_size


def test_sigkilled_dpo_run_resumes_exactly(tiny_model_dir, pairs_file, tmp_path):
    steps = 16

    def command(run_dir: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llamaforge",
            "train",
            "stage=dpo",
            f"model={tiny_model_dir}",
            f"dataset={pairs_file}",
            f"output_dir={run_dir}",
            "precision=fp32",
            "batch_size=4",
            "micro_batch_size=2",  # gradient accumulation 2
            "logging_steps=1",
            "learning_rate=5e-3",
            f"max_steps={steps}",
            "save_steps=4",
            *extra,
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_dir, killed_dir = tmp_path / "a", tmp_path / "b"
    reference = subprocess.Popen(
        command(reference_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    victim = subprocess.Popen(
        command(killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        marker = killed_dir / "checkpoint-4" / CHECKPOINT_MARKER
        deadline = time.monotonic() + 300
        while not marker.is_file():
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint-4 in time"
            time.sleep(0.05)
        victim.kill()  # SIGKILL: no handler, no final save
        victim.communicate()
        assert not (killed_dir / "summary.json").exists()
        resumed = subprocess.run(
            command(killed_dir, "resume_from_checkpoint=auto"),
            capture_output=True,
            text=True,
            env=env,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, err = reference.communicate(timeout=600)
        assert reference.returncode == 0, err[-3000:]
    finally:
        for process in (reference, victim):
            if process.poll() is None:
                process.kill()
                process.communicate()
    expected, got = read_log(reference_dir), read_log(killed_dir)
    assert [r["step"] for r in got] == list(range(1, steps + 1)) == [r["step"] for r in expected]
    for a, b in zip(expected, got, strict=True):  # 12 steps after the checkpoint
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert abs(a["rewards/margins"] - b["rewards/margins"]) <= 1e-5, (a, b)
    assert expected[-1]["loss"] < expected[0]["loss"]


@pytest.mark.slow
def test_real_model_dpo_steps_raise_the_held_out_margin(tmp_path, smollm2_cached):
    run_dir = run_training(real_preference_config("dpo", PAIRS, HELD_OUT, tmp_path))
    before, after = margins(run_dir)
    assert before == 0.0 and after > 0.1
    log = read_log(run_dir)
    assert [r["eval_rewards/accuracies"] for r in log if "eval_rewards/accuracies" in r][-1] >= 0.75
