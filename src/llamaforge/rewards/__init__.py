"""Rewards for online RL: rule rewards, reward-model scores, the user's own functions.

``build_rewards(options.rewards, ...)`` turns the config's ``rewards`` mapping (name →
weight) into :class:`Reward` objects, each a function in TRL's reward calling convention
(``f(prompts=, completions=, completion_ids=, **columns) -> list[float]``, see
:mod:`llamaforge.rewards.functions`) with its weight. Names:

- ``exact_answer``, ``format``, ``length``: the rule rewards (:mod:`~.rules`);
- ``module:function``: a function of the user's (:mod:`~.functions`);
- anything else: the run directory of a ``stage: rm`` run (:mod:`~.model`).

:func:`weighted_rewards` sums them for a batch (what TRL's GRPO/RLOO trainers do with
``reward_weights``; PPO uses it directly). :mod:`~.held_out` scores greedy answers to
held-out problems with the exact-answer rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamaforge.rewards.answers import answers_match, final_answer, reference_answer
from llamaforge.rewards.functions import CheckedReward, import_function
from llamaforge.rewards.model import RewardModelScore
from llamaforge.rewards.rules import FormatReward, LengthReward, exact_answer

__all__ = [
    "Reward",
    "answers_match",
    "build_rewards",
    "final_answer",
    "reference_answer",
    "weighted_rewards",
]


@dataclass(frozen=True)
class Reward:
    name: str
    """As written in the config (``exact_answer``, ``mymod:brevity``, ``runs/rm``)."""
    weight: float
    function: CheckedReward


def build_rewards(
    rewards: Mapping[str, float],
    *,
    base_dir: Path | None,
    format_pattern: str | None = None,
    length_band: Sequence[int] = (),
) -> list[Reward]:
    """The config's ``rewards`` (name → weight) as :class:`Reward` objects. ``base_dir``:
    the config file's directory (user modules not installed, and run directories not found
    from the working directory, are looked for there); raises ConfigError for a name that
    is none of the kinds."""
    built = []
    for name, weight in rewards.items():
        function: Any
        if name == "exact_answer":
            function = exact_answer
        elif name == "format":
            function = FormatReward(format_pattern)
        elif name == "length":
            function = LengthReward(*length_band)
        elif ":" in name:
            function = import_function(name, base_dir)
        else:
            path = Path(name).expanduser()  # as datasets: from here, else next to the config
            if not path.is_dir() and base_dir is not None and (base_dir / path).is_dir():
                path = base_dir / path
            function = RewardModelScore(name, path)
        built.append(Reward(name, float(weight), CheckedReward(name, function)))
    return built


def weighted_rewards(
    rewards: Sequence[Reward], completions: Sequence[str], **columns: Any
) -> tuple[list[float], dict[str, list[float | None]]]:
    """(each completion's weighted sum, each reward's values) for one batch; a reward's
    None (no opinion) counts as 0 in the sum."""
    values = {r.name: r.function(completions=completions, **columns) for r in rewards}
    totals = [
        math.fsum(r.weight * (values[r.name][i] or 0.0) for r in rewards)
        for i in range(len(completions))
    ]
    return totals, values
