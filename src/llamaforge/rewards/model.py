"""A reward model's score of each completion: the run directory of a ``stage: rm`` run.

Each (prompt, completion) is built exactly as the reward stage built its training pairs
and as ``llamaforge score`` builds what it scores (:func:`llamaforge.data.preference.
encode_pairs` with the run's template, the answer up to its end-of-turn marker, cut to the
run's ``cutoff_len``) and scored at its last token
(:func:`llamaforge.evaluation.reward_scores.score_sequences`), padded with the run's own
pad token, which its data never holds (methods/rm.py). The prompt is the record's
``messages`` column (the conversation before the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamaforge import rundir
from llamaforge.config.sections import ModelConfig
from llamaforge.data import Message, Preference, get_template
from llamaforge.data.preference import check_free_of, cut_pair, encode_pairs
from llamaforge.errors import ConfigError
from llamaforge.evaluation.reward_scores import score_sequences
from llamaforge.models import load_model, run_dir_template

logger = logging.getLogger(__name__)

DEFAULT_CUTOFF = 1024


def is_reward_model_run(path: Path) -> bool:
    """Whether ``path`` is the run directory of a ``stage: rm`` run."""
    saved = rundir.read_run_config(path) if path.is_dir() else {}
    return rundir.run_config_value(saved, "training", "stage") == "rm"


class RewardModelScore:
    """The score a ``stage: rm`` run gives each completion (see the module docstring)."""

    def __init__(self, name: str, run_dir: Path, *, dtype: str = "auto") -> None:
        if not is_reward_model_run(run_dir):
            raise ConfigError(
                f"key 'rewards': '{name}' is not a built-in reward (exact_answer, format, "
                "length), a module:function or the run directory of a stage rm run "
                f"({run_dir} {'has no config.yaml of stage rm' if run_dir.is_dir() else 'does not exist'})"
            )
        self.__name__ = name
        saved = rundir.read_run_config(run_dir)
        self.template = get_template(
            run_dir_template(run_dir) or "chat",
            rundir.run_config_value(saved, "data", "templates_dir"),
        )
        self.cutoff_len = int(
            rundir.run_config_value(saved, "data", "cutoff_len") or DEFAULT_CUTOFF
        )
        self.add_eos_token = rundir.run_config_value(saved, "data", "add_eos_token") is not False
        self.model, self.tokenizer = load_model(
            ModelConfig(model=str(run_dir), dtype=dtype), head="score"
        )
        self.model.requires_grad_(False)
        logger.info("reward model %s (pads with %r)", run_dir, self.tokenizer.pad_token)

    def __call__(
        self, completions: Sequence[str], messages: Sequence[Sequence[Any]], **_: Any
    ) -> list[float]:
        pairs = [
            Preference(tuple(as_message(m) for m in prompt), c, c, f"completion {i + 1}")
            for i, (prompt, c) in enumerate(zip(messages, completions, strict=True))
        ]
        encoded = encode_pairs(pairs, self.tokenizer, self.template, self.add_eos_token)
        sequences = [cut_pair(pair, self.cutoff_len)[0] for pair in encoded]
        check_free_of(self.tokenizer.pad_token_id, sequences, [p.source for p in pairs])
        return score_sequences(self.model, sequences, self.tokenizer.pad_token_id)


def as_message(turn: Any) -> Message:
    """A dataset's ``{role, content, input}`` turn (or a Message) as a Message."""
    if isinstance(turn, Message):
        return turn
    return Message(turn["role"], turn["content"], turn.get("input") or "")
