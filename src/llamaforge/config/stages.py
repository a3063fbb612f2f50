"""The training stages: one dict, ``STAGES``, from the name ``training.stage`` takes.

Each entry names the stage's own options section (a frozen dataclass whose keys only that
stage accepts; the section in YAML carries the stage's name) and the function that runs it,
as ``module:function``, imported only when that stage runs so that reading a config never
imports torch. Adding a stage = one ``methods/<stage>.py`` + one options class + one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamaforge.config.sections import PretrainConfig, RewardModelConfig, SFTConfig


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
}
