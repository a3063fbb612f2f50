"""The rule rewards, the user's `module:function` rewards (found next to the config, values
checked, failures named), and their weighted sum."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llamaforge.errors import ConfigError
from llamaforge.rewards import build_rewards, weighted_rewards
from llamaforge.rewards.rules import FormatReward, LengthReward, band_score, exact_answer

COMPLETIONS = ["3 + 4 = 7. The answer is 7.", "It is 8.", "答案是 7。"]
ANSWERS = ["The answer is 7.", "The answer is 7.", "3 + 4 = 7。答案是 7。"]


def test_exact_answer_format_and_length_rewards() -> None:
    assert exact_answer(completions=COMPLETIONS, answer=ANSWERS) == [1.0, 0.0, 1.0]
    assert FormatReward()(completions=COMPLETIONS) == [1.0, 0.0, 1.0]
    assert FormatReward(r"^\d")(completions=COMPLETIONS) == [1.0, 0.0, 0.0]
    ids = [[1] * n for n in (0, 5, 10, 20, 30, 40, 60)]
    assert LengthReward(10, 20)(completion_ids=ids) == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert band_score(15, 0, 20) == 1.0 and band_score(0, 0, 20) == 1.0


def write_module(directory: Path, name: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(body, encoding="utf-8")


def test_user_function_next_to_the_config_weighted_with_rules(tmp_path: Path) -> None:
    write_module(
        tmp_path,
        "brevity_rewards",
        "def brevity(completions, answer, **kwargs):\n"
        "    return [None if c.startswith('It') else -len(c) / 10 for c in completions]\n",
    )
    rewards = build_rewards(
        {"exact_answer": 1.0, "brevity_rewards:brevity": 0.5, "format": 0.25},
        base_dir=tmp_path,
    )
    assert [(r.name, r.weight) for r in rewards] == [
        ("exact_answer", 1.0),
        ("brevity_rewards:brevity", 0.5),
        ("format", 0.25),
    ]
    assert rewards[1].function.__name__ == "brevity_rewards:brevity"  # TRL logs this name
    totals, values = weighted_rewards(rewards, COMPLETIONS, answer=ANSWERS)
    assert values["brevity_rewards:brevity"] == [-2.7, None, -0.6]
    expected = [1 + 0.5 * -2.7 + 0.25, 0.0, 1 + 0.5 * -0.6 + 0.25]
    assert totals == pytest.approx(expected)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "def f(completions, **kw):\n    raise KeyError('answer_text')\n",
            "reward 'bad_rewards:f' raised KeyError: 'answer_text' at step 4; fix it",
        ),
        (
            "def f(completions, **kw):\n    return [1.0]\n",
            "reward 'bad_rewards:f' returned 1 values for 3 completions at step 4",
        ),
        (
            "def f(completions, **kw):\n    return 1.0\n",
            "reward 'bad_rewards:f' returned float at step 4, not a list of 3 numbers",
        ),
        (
            "def f(completions, **kw):\n    return [1.0, 'good', 0.0]\n",
            "reward 'bad_rewards:f' returned 'good' for completion 2 at step 4",
        ),
        (
            "def f(completions, **kw):\n    return [1.0, float('inf'), 0.0]\n",
            "reward 'bad_rewards:f' returned inf for completion 2 at step 4",
        ),
    ],
)
def test_a_failing_user_function_is_named_with_the_step(
    tmp_path: Path, body: str, message: str
) -> None:
    module_dir = tmp_path / f"case{abs(hash(body))}"
    write_module(module_dir, "bad_rewards", body)
    import sys

    sys.modules.pop("bad_rewards", None)  # each case has its own file
    (reward,) = build_rewards({"bad_rewards:f": 1.0}, base_dir=module_dir)
    state = SimpleNamespace(global_step=3)
    with pytest.raises(ConfigError, match="resume_from_checkpoint=auto") as err:
        reward.function(completions=COMPLETIONS, answer=ANSWERS, trainer_state=state)
    assert str(err.value).startswith(message), str(err.value)


def test_reward_names_that_cannot_be_built_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"no module 'nowhere_rewards' is installed or as .*nowhere_rewards\.py"
    ):
        build_rewards({"nowhere_rewards:f": 1.0}, base_dir=tmp_path)
    write_module(tmp_path, "some_rewards", "x = 1\n")
    with pytest.raises(ConfigError, match=r"some_rewards\.py has no function 'f'"):
        build_rewards({"some_rewards:f": 1.0}, base_dir=tmp_path)
    write_module(tmp_path, "broken_rewards", "import not_a_module_anywhere\n")
    with pytest.raises(
        ConfigError, match=r"importing .*broken_rewards\.py raised ModuleNotFoundError"
    ):
        build_rewards({"broken_rewards:f": 1.0}, base_dir=tmp_path)
    with pytest.raises(
        ConfigError, match=r"'runs/none' is not a built-in reward .* does not exist"
    ):
        build_rewards({"runs/none": 1.0}, base_dir=tmp_path)
    (tmp_path / "sft_run").mkdir()
    (tmp_path / "sft_run" / "config.yaml").write_text("training: {stage: sft}\n")
    with pytest.raises(ConfigError, match=r"has no config\.yaml of stage rm"):
        build_rewards({"sft_run": 1.0}, base_dir=tmp_path)
