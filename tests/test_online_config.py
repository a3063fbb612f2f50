"""The online RL stages' config sections (grpo, rloo): shared key names across stage
sections, rewards with weights, and every value that could not do what it says refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaforge.config import config_to_dict, load_run_config
from llamaforge.config.loader import stage_keys
from llamaforge.errors import ConfigError
from llamaforge.rundir import default_values


def test_stage_sections_share_key_names_and_the_stage_decides(tmp_path: Path) -> None:
    grpo = load_run_config(None, ["stage=grpo", "beta=0.04", "num_generations=4", "batch_size=8"])
    dpo = load_run_config(None, ["stage=dpo", "beta=0.3"])
    rloo = load_run_config(None, ["stage=rloo", "rloo.num_generations=4", "lora_dropout=0"])
    assert (grpo.options.beta, dpo.options.beta) == (0.04, 0.3)
    assert grpo.options.num_generations == 4 and rloo.options.num_generations == 4
    assert rloo.options.beta == 0.05  # each stage its own default
    assert default_values("rloo")["beta"] == 0.05 and default_values("dpo")["beta"] == 0.1
    path = tmp_path / "c.yaml"
    path.write_text("stage: sft\nbeta: 0.2\ngrpo:\n  loss_type: grpo\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value).splitlines() == [
        f"{path}:2: key 'beta' belongs to stage 'dpo', not 'sft'; set stage: dpo or remove it",
        f"{path}:4: key 'loss_type' belongs to stage 'grpo', not 'sft'; set stage: grpo or remove it",
    ]
    with pytest.raises(
        ConfigError, match=r"key 'training.beta' belongs in section 'dpo' or 'grpo' or 'rloo'"
    ):
        load_run_config(None, ["stage=grpo", "training.beta=0.1"])
    # A saved config reloads with its stage section.
    saved = config_to_dict(rloo)
    assert saved["rloo"]["num_generations"] == 4 and "grpo" not in saved


def test_a_stage_key_named_like_a_key_of_every_run_is_refused() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Clash:
        temperature: float = 1.0

    with pytest.raises(
        TypeError, match="'temperature' is defined in sections 'generation' and 'x'"
    ):
        stage_keys({"temperature": "generation"}, {"x": Clash})


def test_rewards_are_a_mapping_of_names_to_weights() -> None:
    cfg = load_run_config(
        None,
        ["stage=grpo", "rewards={exact_answer: 1, format: 0.5, 'my_rewards:short': 2}"],
    )
    assert cfg.options.rewards == {"exact_answer": 1.0, "format": 0.5, "my_rewards:short": 2.0}
    assert all(isinstance(w, float) for w in cfg.options.rewards.values())
    assert load_run_config(None, ["stage=grpo"]).options.rewards == {"exact_answer": 1.0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rewards={}"], "key 'rewards': give at least one reward"),
        (["rewards={exact_answer: many}"], "key 'rewards': expected a number, got 'many'"),
        (["rewards={'a:b:c': 1}"], "'a:b:c' is neither module:function"),
        (["format_pattern=x"], "key 'format_pattern': used by the reward 'format' only"),
        (["rewards={format: 1}", "format_pattern='('"], "key 'format_pattern': not a regular"),
        (["rewards={length: 1}"], "key 'length_band': the reward 'length' needs [min, max]"),
        (["rewards={length: 1}", "length_band=[30, 10]"], "got [30, 10]"),
        (["length_band=[1, 10]"], "key 'length_band': used by the reward 'length' only"),
        (["num_generations=1"], "key 'num_generations': must be >= 2"),
        (["num_generations=3"], "key 'batch_size': stage grpo counts completions, 3 per prompt"),
        (["max_completion_length=2000"], "leaves no room for the prompt within cutoff_len 1024"),
        (["rollout_temperature=0"], "key 'rollout_temperature': must be > 0"),
        (["rollout_top_p=0"], "key 'rollout_top_p': must be in (0, 1]"),
        (["loss_type=ppo"], "key 'loss_type': 'ppo' is not one of: dapo, grpo, dr_grpo, bnpo"),
        (["scale_rewards=std"], "key 'scale_rewards': 'std' is not one of: group, batch, none"),
        (["beta=-1"], "key 'beta': must be >= 0"),
        (["beta=0.1", "finetuning=full"], "key 'beta': with finetuning full the reference"),
        (["finetuning=prefix"], "key 'finetuning': prefix is not supported by stage grpo"),
        (["val_set_size=10"], "key 'val_set_size': stage grpo evaluates on the held_out"),
        (["temperature=0.2"], "key 'temperature': stage grpo samples its rollouts with"),
        (["max_new_tokens=64"], "key 'max_new_tokens': stage grpo samples its rollouts with"),
    ],
)
def test_grpo_values_that_could_not_work_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["stage=grpo", *overrides])
    assert message in str(err.value), str(err.value)


def test_rloo_runs_without_dropout() -> None:
    with pytest.raises(ConfigError, match="key 'lora_dropout': stage rloo trains without dropout"):
        load_run_config(None, ["stage=rloo"])  # lora_dropout defaults to 0.05
    cfg = load_run_config(None, ["stage=rloo", "lora_dropout=0", "normalize_advantages=true"])
    assert cfg.options.normalize_advantages is True
    with pytest.raises(ConfigError, match="key 'loss_type' belongs to stage 'grpo', not 'rloo'"):
        load_run_config(None, ["stage=rloo", "lora_dropout=0", "loss_type=grpo"])
