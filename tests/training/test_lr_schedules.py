"""Learning-rate schedules and warmup do what their keys say: the rate logged for every
step of a tiny run equals the schedule's formula, written out here (not transformers').

The rate logged for step s (1-based) is the one that step's optimizer update used, i.e.
the schedule at s - 1 completed steps: warmup starts from 0, and the first step after
warmup runs at the peak.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from training_helpers import read_log, tiny_config

from llamaforge.config import load_run_config
from llamaforge.errors import ConfigError
from llamaforge.methods import run_training

PEAK = 1e-2
STEPS = 10
LR_END = 1e-7  # transformers' polynomial default: it decays to this, not to 0


def warmup_then(decay: Callable[[float], float], warmup: int) -> Callable[[int], float]:
    """Factor of the peak after `k` completed steps: linear warmup, then decay(progress)."""

    def factor(k: int) -> float:
        if k < warmup:
            return k / warmup
        return decay((k - warmup) / (STEPS - warmup))

    return factor


def restarts(cycles: int) -> Callable[[float], float]:
    return lambda p: 0.5 * (1 + math.cos(math.pi * ((cycles * p) % 1.0)))


SCHEDULES = {
    # id: (config values, factor of the peak after k completed steps)
    "linear+warmup_steps": (
        {"lr_scheduler_type": "linear", "warmup_steps": 3},
        warmup_then(lambda p: 1 - p, 3),
    ),
    "cosine+warmup_ratio": (  # ratio 0.25 of 10 steps: ceil(2.5) = 3 warmup steps
        {"lr_scheduler_type": "cosine", "warmup_ratio": 0.25},
        warmup_then(lambda p: 0.5 * (1 + math.cos(math.pi * p)), 3),
    ),
    "constant": ({"lr_scheduler_type": "constant"}, lambda k: 1.0),
    "constant_with_warmup": (
        {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 4},
        warmup_then(lambda p: 1.0, 4),
    ),
    "polynomial": (
        {"lr_scheduler_type": "polynomial", "warmup_steps": 2},
        warmup_then(lambda p: (1 - LR_END / PEAK) * (1 - p) + LR_END / PEAK, 2),
    ),
    "cosine_with_restarts": (  # 1 warmup step, then 3 cycles of 3 steps
        {"lr_scheduler_type": "cosine_with_restarts", "warmup_steps": 1, "lr_scheduler_cycles": 3},
        warmup_then(restarts(3), 1),
    ),
}


def logged_rates(cfg_values: dict, tiny_model_dir, overfit_data, tmp_path) -> list[float]:
    cfg = tiny_config(
        tiny_model_dir,
        overfit_data,
        tmp_path / "run",
        max_steps=STEPS,
        learning_rate=PEAK,
        save_steps=1000,  # no checkpoint per epoch (= per step here): faster
        **cfg_values,
    )
    log = [r for r in read_log(run_training(cfg)) if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    return [r["learning_rate"] for r in log]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_logged_learning_rate_follows_the_schedule(name, tiny_model_dir, overfit_data, tmp_path):
    values, factor = SCHEDULES[name]
    rates = logged_rates(values, tiny_model_dir, overfit_data, tmp_path)
    expected = [PEAK * factor(step - 1) for step in range(1, STEPS + 1)]
    assert rates == pytest.approx(expected, rel=1e-6, abs=1e-12), name

    warmup = values.get("warmup_steps") or math.ceil(values.get("warmup_ratio", 0) * STEPS)
    if warmup:  # rises linearly from 0 to the peak
        ramp = rates[: warmup + 1]
        assert ramp[0] == 0 and ramp[-1] == pytest.approx(PEAK)
        assert [b - a for a, b in itertools.pairwise(ramp)] == pytest.approx(
            [PEAK / warmup] * warmup
        )
    if name == "cosine_with_restarts":
        # Back at the peak at the start of every cycle (steps 2, 5, 8), falling in between.
        assert [rates[i] for i in (1, 4, 7)] == pytest.approx([PEAK] * 3)
        for start in (1, 4, 7):
            cycle = rates[start : start + 3]
            assert all(b < a for a, b in itertools.pairwise(cycle)), cycle


@pytest.mark.parametrize(
    "scheduler", ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
)
def test_cycles_are_refused_for_schedulers_without_cycles(scheduler):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, [f"lr_scheduler_type={scheduler}", "lr_scheduler_cycles=2"])
    message = str(info.value)
    assert "lr_scheduler_cycles" in message and "cosine_with_restarts" in message
    assert scheduler in message


def test_constant_schedule_refuses_warmup():
    # transformers' constant schedule ignores warmup without a word.
    for warmup in ("warmup_steps=5", "warmup_ratio=0.1"):
        with pytest.raises(ConfigError, match="constant_with_warmup") as info:
            load_run_config(None, ["lr_scheduler_type=constant", warmup])
        assert warmup.split("=")[0] in str(info.value)


def test_cycles_must_be_positive():
    with pytest.raises(ConfigError, match="lr_scheduler_cycles"):
        load_run_config(None, ["lr_scheduler_type=cosine_with_restarts", "lr_scheduler_cycles=0"])
    # The default (1) goes with every scheduler.
    assert load_run_config(None, ["lr_scheduler_type=linear"]).training.lr_scheduler_cycles == 1
