"""PPOTrainer's mechanics on a tiny model: the schedule, one rollout per rollout batch, the
logged metrics, and a resume from a mid-rollout checkpoint that repeats the uninterrupted
run exactly (the rollout buffer, KL coefficient, score statistics and value
head travel with the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from llamaforge.config.sections import GenerationConfig
from llamaforge.data import Message
from llamaforge.inference.engine import GenerationEngine
from llamaforge.methods.ppo_trainer import PPOSettings, PPOTrainer, rollout_schedule


def test_schedule_repeats_each_rollout_batch_per_epoch_in_a_new_order():
    rows, prompts = rollout_schedule(5, 2, samples=2, ppo_epochs=3, rollouts=4, seed=0)
    assert len(prompts) == 4 and all(len(p) == 4 for p in prompts)
    for batch in prompts:
        assert batch[0] == batch[1] and batch[2] == batch[3]  # two samples of each prompt
    # rollouts 0-1 come from one pass over the 5 prompts (no repeat), 2-3 from the next
    assert len({*prompts[0], *prompts[1]}) == 4 and len({*prompts[2], *prompts[3]}) == 4
    for rollout in range(4):
        mine = [r["row"] for r in rows if r["rollout"] == rollout]
        epochs = [mine[i : i + 4] for i in range(0, 12, 4)]
        assert all(sorted(e) == [0, 1, 2, 3] for e in epochs)
    assert rows == rollout_schedule(5, 2, 2, 3, 4, seed=0)[0]
    with pytest.raises(ValueError, match="needs that many"):
        rollout_schedule(3, 4, 1, 1, 1, seed=0)


def make_trainer(make_tiny_llama, tokenizer, out: Path, max_steps: int) -> PPOTrainer:
    policy = get_peft_model(
        make_tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(1)
    value_head = torch.nn.Linear(policy.config.hidden_size, 1)
    engine = GenerationEngine(policy, tokenizer, template="chat")
    questions = [[Message("user", f"Question {i}: say a short word.")] for i in range(6)]
    prompts = [engine.encode(q) for q in questions]
    rows, rollout_prompts = rollout_schedule(6, 2, samples=2, ppo_epochs=2, rollouts=4, seed=0)
    sampling = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=1.0)

    def sample(indices):
        assert not policy.training  # no dropout while sampling
        return [
            list(r.token_ids) for r in engine.generate([questions[i] for i in indices], sampling)
        ]

    def score(indices, texts, ids):  # rewards the letter a
        assert len(indices) == len(texts) == len(ids) == 4
        return [t.count("a") / max(len(t), 1) for t in texts]

    args = TrainingArguments(
        str(out),
        use_cpu=True,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        learning_rate=5e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=3,  # step 3 is inside rollout batch 1 (steps 3-4)
        report_to="none",
        remove_unused_columns=False,
        train_sampling_strategy="sequential",
        seed=0,
    )
    settings = PPOSettings(
        temperature=1.0,
        kl_coef=0.05,
        kl_target=1.0,
        kl_horizon=100,
        gamma=1.0,
        lam=0.95,
        clip_range=0.2,
        clip_range_value=0.2,
        value_coef=0.1,
        missing_eos_penalty=0.5,
        normalize_rewards=True,
        stop_token_ids=tuple(engine.stop_token_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    return PPOTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        prompts=prompts,
        rollout_prompts=rollout_prompts,
        sample=sample,
        score=score,
        value_head=value_head,
        settings=settings,
        seed=0,
    )


def ppo_logs(trainer: PPOTrainer) -> list[dict[str, float]]:
    return [r for r in trainer.state.log_history if "loss" in r]


def test_rollouts_losses_and_an_exact_resume_mid_rollout(
    make_tiny_llama, smollm2_tokenizer, tmp_path
):
    whole = make_trainer(make_tiny_llama, smollm2_tokenizer, tmp_path / "a", max_steps=6)
    rollouts = []
    original = whole.make_rollout
    whole.make_rollout = lambda index: rollouts.append(index) or original(index)  # type: ignore[method-assign]
    whole.train()
    assert rollouts == [0, 1, 2]  # 2 prompts x 2 samples, 2 epochs of one step each
    logs = ppo_logs(whole)
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]
    first_of_batch = [logs[i] for i in (0, 2, 4)]
    for log in first_of_batch:  # rollout metrics are logged with the step that made them
        assert {"ppo/score", "ppo/kl", "ppo/response_length", "ppo/ended"} <= log.keys()
    for log in logs:
        assert {
            "ppo/policy_loss",
            "ppo/value_loss",
            "ppo/entropy",
            "ppo/clip_fraction",
        } <= log.keys()
        assert torch.isfinite(torch.tensor(log["loss"]))
    assert "ppo/score" not in logs[1]
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / "value_head.safetensors").is_file() and (
        checkpoint / "ppo_state.pt"
    ).is_file()

    resumed = make_trainer(make_tiny_llama, smollm2_tokenizer, tmp_path / "b", max_steps=6)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    again = [r for r in ppo_logs(resumed) if r["step"] > 3]  # 1-3: the checkpoint's history
    assert [r["step"] for r in again] == [4, 5, 6]
    for a, b in zip(logs[3:], again, strict=True):
        assert a.keys() == b.keys()
        wrong = {k: (a[k], b[k]) for k in a if a[k] != pytest.approx(b[k], abs=1e-6)}
        assert not wrong, (a["step"], wrong)
    assert torch.equal(whole.value_head.weight, resumed.value_head.weight)
