"""The training stages: one dict, ``STAGES``, from the name ``training.stage`` takes.

Each entry names the stage's own options section (a frozen dataclass whose keys only that
stage accepts; the section in YAML carries the stage's name) and the function that runs it,
as ``module:function``, imported only when that stage runs so that reading a config never
imports torch. Adding a stage = one ``methods/<stage>.py`` + one options class + one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamaforge.config.sections import (
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    ORPOConfig,
    PPOConfig,
    PretrainConfig,
    RewardModelConfig,
    RLOOConfig,
    SFTConfig,
    SimPOConfig,
)


@dataclass(frozen=True)
class Stage:
    summary: str
    options: type
    """The stage's options section; its YAML section is named after the stage."""
    entry: str
    """``module:function`` taking a RunConfig and returning the run directory."""


STAGES: dict[str, Stage] = {
    "sft": Stage(
        "supervised fine-tuning on instructions or chats",
        SFTConfig,
        "llamaforge.methods.sft:run_sft",
    ),
    "pt": Stage(
        "continued pretraining on raw text (documents joined with EOS, cut into blocks)",
        PretrainConfig,
        "llamaforge.methods.pt:run_pt",
    ),
    "rm": Stage(
        "reward model: a one-output score head trained on preference pairs (pairwise loss)",
        RewardModelConfig,
        "llamaforge.methods.rm:run_rm",
    ),
    "dpo": Stage(
        "direct preference optimisation on chosen/rejected pairs (sigmoid, ipo, hinge, robust)",
        DPOConfig,
        "llamaforge.methods.dpo:run_dpo",
    ),
    "kto": Stage(
        "KTO on answers labelled desirable or not (or on pairs, split into two answers)",
        KTOConfig,
        "llamaforge.methods.kto:run_kto",
    ),
    "orpo": Stage(
        "ORPO on pairs: NLL on the chosen answer plus an odds-ratio term, no reference model",
        ORPOConfig,
        "llamaforge.methods.orpo:run_orpo",
    ),
    "simpo": Stage(
        "SimPO on pairs: length-normalised rewards with a target margin, no reference model",
        SimPOConfig,
        "llamaforge.methods.simpo:run_simpo",
    ),
    "grpo": Stage(
        "GRPO: completions sampled per prompt, scored by rewards, each against its group's mean",
        GRPOConfig,
        "llamaforge.methods.grpo:run_grpo",
    ),
    "rloo": Stage(
        "RLOO: completions sampled per prompt, each scored against the mean of the others",
        RLOOConfig,
        "llamaforge.methods.rloo:run_rloo",
    ),
    "ppo": Stage(
        "PPO (RLHF): sampled answers scored by rewards (e.g. a reward model), clipped updates "
        "with a value head, GAE and a KL penalty to the starting model",
        PPOConfig,
        "llamaforge.methods.ppo:run_ppo",
    ),
}
