"""Stages grpo and rloo on a tiny model: the rewards TRL logs are the ones our functions
gave, the policy gradient raises the log-probability of rewarded completions against
unrewarded ones, only the adapter trains, rollouts sample with dropout off, the held-out
accuracy is scored before and after, a failing user reward stops the run with its name
(nothing written before is lost, and the run resumes), and SIGKILL + resume gives the same
logged rewards, losses and gradient norms as a run that never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import read_log, tiny_config

from llamaforge.errors import ConfigError
from llamaforge.methods import run_training
from llamaforge.rundir import CHECKPOINT_MARKER

ROOT = Path(__file__).resolve().parents[2]
ARITH = ROOT / "examples" / "arith"

# A reward a random model's samples vary on: the first completion token's id is even.
# Every call is recorded (prompt, completion ids, rewards) for the test to read back.
FIRST_EVEN = """
import os
CALLS = []  # (prompts, completion ids, rewards) per call
TEXTS = []  # (completions, messages) per call

def first_even(prompts, completions, completion_ids, trainer_state, **kwargs):
    fail_at = int(os.environ.get("FAIL_AT_STEP", "0"))
    if trainer_state.global_step + 1 == fail_at:
        raise RuntimeError("the grader is down")
    rewards = [float(ids[0] % 2 == 0) for ids in completion_ids]
    CALLS.append((list(prompts), [list(ids) for ids in completion_ids], rewards))
    TEXTS.append((list(completions), list(kwargs["messages"])))
    return rewards[:-1] if os.environ.get("SHORT_AT_STEP") == str(trainer_state.global_step + 1) else rewards
"""


@pytest.fixture
def problems(tmp_path: Path) -> tuple[Path, Path]:
    train = json.loads((ARITH / "train.json").read_text(encoding="utf-8"))[:8]
    held = json.loads((ARITH / "held_out.json").read_text(encoding="utf-8"))[:4]
    (tmp_path / "train.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "held.json").write_text(json.dumps(held, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "first_even_rewards.py").write_text(FIRST_EVEN, encoding="utf-8")
    sys.modules.pop("first_even_rewards", None)  # each test imports its own copy
    return tmp_path / "train.json", tmp_path / "held.json"


def online_config(model_dir: Path, problems: tuple[Path, Path], out: Path, **values: Any):
    defaults: dict[str, Any] = {
        "stage": "grpo",
        "batch_size": 8,
        "micro_batch_size": 4,  # two micro-batches: one generation serves two of them
        "num_generations": 4,
        "max_completion_length": 6,
        "cutoff_len": 256,
        "rewards": {"exact_answer": 1.0, "first_even_rewards:first_even": 1.0},
        "held_out": [str(problems[1])],
        "max_steps": 4,
        "learning_rate": 1e-1,
    }
    cfg = tiny_config(model_dir, problems[0], out, **{**defaults, **values})
    # The user's module is found next to the config file: make the data dir the config's.
    import dataclasses

    return dataclasses.replace(cfg, source=str(problems[0].parent / "run.yaml"))


def sequence_logp(model: Any, prompt_ids: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).sum().item()


def test_grpo_raises_rewarded_completions_and_logs_our_rewards(
    tiny_model_dir, problems, tmp_path, capture_attach, smollm2_tokenizer
):
    # Full fine-tuning: on a random 2-layer model the lm_head rows are what can move the
    # probability of one sampled token clearly (LoRA-only training: the other tests).
    cfg = online_config(
        tiny_model_dir,
        problems,
        tmp_path / "run",
        batch_size=16,
        micro_batch_size=8,
        finetuning="full",
        learning_rate=3e-3,
    )
    run_dir = run_training(cfg)
    calls = sys.modules["first_even_rewards"].CALLS  # imported from next to the config
    assert len(calls) == 4 and all(len(ids) == 16 for _, ids, _ in calls)  # a call per step
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for record, (_, _, rewards) in zip(log, calls, strict=True):
        mean = sum(rewards) / len(rewards)
        assert record["rewards/first_even_rewards:first_even/mean"] == pytest.approx(mean)
        assert record["rewards/exact_answer/mean"] == 0.0  # a random model solves nothing
        assert record["reward"] == pytest.approx(mean)  # weights 1 + 1
        assert record["grad_norm"] > 0 and record["completions/mean_length"] <= 6
    # Each prompt's group of 4 sits together, as TRL groups them.
    prompts = calls[0][0]
    assert all(prompts[i] == prompts[i - i % 4] for i in range(16))
    assert len(set(prompts)) == 4

    # The policy gradient: completions rewarded 1 gained log-probability relative to those
    # rewarded 0, against the model training started from.
    from transformers import AutoModelForCausalLM

    model = capture_attach.model.eval()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    gains: dict[float, list[float]] = {0.0: [], 1.0: []}
    for prompt_texts, completions, rewards in calls:
        for text, completion, reward in zip(prompt_texts, completions, rewards, strict=True):
            prompt_ids = smollm2_tokenizer(text)["input_ids"]
            gain = sequence_logp(model, prompt_ids, completion)
            gains[reward].append(gain - sequence_logp(start, prompt_ids, completion))
    mean_gain = {r: sum(g) / len(g) for r, g in gains.items()}
    assert mean_gain[1.0] > mean_gain[0.0] + 0.4, mean_gain
    pairs = [(a, b) for a in gains[1.0] for b in gains[0.0]]
    assert sum(a > b for a, b in pairs) / len(pairs) > 0.7  # most, not a few outliers

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["held_out"] == {"records": 4, "accuracy_before": 0.0, "accuracy_after": 0.0}
    answers = [json.loads(line) for line in (run_dir / "held_out_answers.jsonl").open()]
    assert len(answers) == 4 and {"before", "after", "reference"} <= set(answers[0])
    assert "rewards/first_even_rewards:first_even/mean" in summary["final_metrics"]
    assert (run_dir / "model.safetensors").is_file()


def test_a_failing_user_reward_stops_the_run_naming_it_and_the_run_resumes(
    tiny_model_dir, problems, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    cfg = online_config(tiny_model_dir, problems, out, save_steps=2, held_out=[])
    monkeypatch.setenv("FAIL_AT_STEP", "3")
    with pytest.raises(ConfigError) as err:
        run_training(cfg)
    assert str(err.value).startswith(
        "reward 'first_even_rewards:first_even' raised RuntimeError: the grader is down at step 3;"
    )
    assert "resume_from_checkpoint=auto" in str(err.value)
    # Nothing written before is lost: config, metadata, the log of steps 1-2, checkpoint-2.
    assert [r["step"] for r in read_log(out)] == [1, 2]
    assert (out / "checkpoint-2" / CHECKPOINT_MARKER).is_file()
    assert (out / "config.yaml").is_file() and (out / "run_metadata.json").is_file()
    assert not (out / "summary.json").exists()

    monkeypatch.delenv("FAIL_AT_STEP")
    monkeypatch.setenv("SHORT_AT_STEP", "3")
    resume = online_config(
        tiny_model_dir, problems, out, save_steps=2, held_out=[], resume_from_checkpoint="auto"
    )
    with pytest.raises(ConfigError, match=r"returned 7 values for 8 completions at step 3"):
        run_training(resume)
    monkeypatch.delenv("SHORT_AT_STEP")
    run_training(resume)
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["global_step"] == 4


def test_engine_rollouts_sample_with_dropout_off(tiny_llama, smollm2_tokenizer):
    from llamaforge.adapters.attach import attach_adapter
    from llamaforge.config.sections import FinetuningConfig, GenerationConfig
    from llamaforge.data import Message
    from llamaforge.inference.engine import GenerationEngine
    from llamaforge.methods.online import EngineRollouts, Prompt

    model = attach_adapter(tiny_llama, FinetuningConfig(lora_dropout=0.9, lora_r=4))
    with torch.no_grad():  # a non-zero adapter, so its dropout would change the logits
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.train()
    engine = GenerationEngine(model, smollm2_tokenizer)
    messages = (Message("user", "What is 2 + 3?"),)
    text = engine.format_prompt(messages)
    gen = GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=0, do_sample=True)
    rollouts = EngineRollouts(engine, {text: Prompt(messages, engine.encode(messages))}, gen)
    torch.manual_seed(3)
    out = rollouts([text] * 4, trainer=None)
    assert model.training  # training mode again afterwards
    assert out["prompt_ids"] == [engine.encode(messages)] * 4 and out["logprobs"] is None
    model.eval()
    torch.manual_seed(3)
    expected = [list(r.token_ids) for r in engine.generate([messages] * 4, gen)]
    assert out["completion_ids"] == expected  # what the eval-mode model samples
    model.train()
    torch.manual_seed(3)
    with torch.inference_mode():
        in_train_mode = [list(r.token_ids) for r in engine.generate([messages] * 4, gen)]
    assert in_train_mode != expected  # dropout would have changed them


def test_rloo_trains_the_adapter_on_our_rewards(tiny_model_dir, problems, tmp_path, capture_attach):
    cfg = online_config(
        tiny_model_dir, problems, tmp_path / "run", stage="rloo", lora_dropout=0.0, max_steps=2
    )
    run_dir = run_training(cfg)
    calls = sys.modules["first_even_rewards"].CALLS
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [1, 2] and len(calls) == 2
    for record, (_, _, rewards) in zip(log, calls, strict=True):
        assert record["rewards/first_even_rewards:first_even/mean"] == pytest.approx(
            sum(rewards) / len(rewards)
        )
        assert "kl" in record  # beta 0.05: the KL to the reference is in the reward
    changed = capture_attach.changed()
    assert changed and all("lora_" in name for name in changed)
    assert list(capture_attach.model.peft_config) == ["default"]
    assert json.loads((run_dir / "summary.json").read_text())["held_out"]["records"] == 4


def test_sigkilled_grpo_run_resumes_exactly(tiny_model_dir, problems, tmp_path):
    steps = 9
    train = problems[0]
    config = tmp_path / "grpo.yaml"  # the reward module sits next to it
    config.write_text(
        "stage: grpo\n"
        f"model: {tiny_model_dir}\n"
        f"dataset: {train}\n"
        "precision: fp32\n"
        "batch_size: 8\n"
        "micro_batch_size: 4\n"
        "logging_steps: 1\n"
        "learning_rate: 5.0e-2\n"
        "lr_scheduler_type: constant\n"
        "lora_dropout: 0.1\n"  # dropout in the training passes: their RNG is restored too
        f"max_steps: {steps}\n"
        "save_steps: 3\n"
        "cutoff_len: 256\n"
        "grpo:\n"
        "  num_generations: 4\n"
        "  max_completion_length: 6\n"
        "  rewards: {first_even_rewards:first_even: 1.0}\n"
    )

    def command(run_dir: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llamaforge",
            "train",
            str(config),
            f"output_dir={run_dir}",
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
        marker = killed_dir / "checkpoint-3" / CHECKPOINT_MARKER
        deadline = time.monotonic() + 400
        while not marker.is_file():
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint-3 in time"
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
    key = "rewards/first_even_rewards:first_even/mean"
    for a, b in zip(expected, got, strict=True):  # 6 steps after the checkpoint
        for name in (key, "reward", "loss", "grad_norm", "entropy"):
            assert abs(a[name] - b[name]) <= 1e-6, (name, a, b)
    # The rewards vary from step to step (sampled, not constant) and the policy moved.
    assert len({r[key] for r in expected}) > 2 and all(r["grad_norm"] > 0 for r in expected)


def test_a_reward_model_run_scores_completions_as_llamaforge_score_does(
    tiny_model_dir, problems, tmp_path, capture_attach
):
    from llamaforge.config import load_run_config
    from llamaforge.data import Preference
    from llamaforge.evaluation.reward_scores import score_pairs
    from llamaforge.models import load_model
    from llamaforge.rewards.model import RewardModelScore, as_message

    pairs = json.loads((ROOT / "examples" / "quickstart" / "train_pairs.json").read_text())[:8]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    rm_dir = run_training(
        tiny_config(
            tiny_model_dir, tmp_path / "pairs.json", tmp_path / "rm", stage="rm", max_steps=2
        )
    )
    capture_attach.before.clear()  # what the GRPO run attaches is what is checked
    capture_attach.trainable.clear()
    cfg = online_config(
        tiny_model_dir,
        problems,
        tmp_path / "run",
        max_steps=1,
        held_out=[],
        rewards={str(rm_dir): 1.0, "first_even_rewards:first_even": 0.0},
        beta=0.04,
    )
    run_dir = run_training(cfg)
    (record,) = read_log(run_dir)
    # LoRA: only the adapter trained; the KL reference is the adapter disabled (TRL's
    # "ref" adapter copy deleted).
    changed = capture_attach.changed()
    assert changed and all("lora_" in name for name in changed)
    assert list(capture_attach.model.peft_config) == ["default"] and "kl" in record
    ((completions, messages),) = sys.modules["first_even_rewards"].TEXTS
    scores = RewardModelScore("rm", rm_dir)(completions=completions, messages=messages)
    assert record[f"rewards/{rm_dir}/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    assert record["reward"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)  # weight 0
    assert len(set(scores)) > 1  # a score per completion, not one constant

    # The same numbers `llamaforge score` gives for these answers.
    model, tokenizer = load_model(load_run_config(None, model=str(rm_dir)).model, head="score")
    records = [
        Preference(tuple(as_message(m) for m in turns), c, c)
        for turns, c in zip(messages, completions, strict=True)
    ]
    expected = score_pairs(model, tokenizer, records, load_run_config(None, model=str(rm_dir)))
    assert scores == pytest.approx(expected.chosen, abs=1e-6)
