"""Reward model, top to bottom: preference pairs → score-head model → RewardTrainer → harness.

Built on TRL's ``RewardTrainer`` (pairwise loss ``-log σ(r_chosen - r_rejected)``, plus
``center_rewards_coefficient`` × mean r²), which logs ``accuracy`` (share of pairs with
r_chosen > r_rejected), ``margin`` (mean r_chosen - r_rejected) and the reward range, on
the validation split as ``eval_accuracy`` / ``eval_margin`` (the untrained head is
evaluated first, as the baseline). What we add, and why:

- the pairs are tokenized here like SFT conversations (data/preference.py) and cut to
  ``cutoff_len`` keeping the beginning, with a count; RewardTrainer would instead drop
  every pair longer than its ``max_length``, silently;
- the pad token: transformers reads the score at the rightmost token that is not the pad
  id, and on the bundled model pad = EOS = ``<|im_end|>``, the token every answer ends
  with, so the score would be read before it (or anywhere, after a trailing marker). The
  run pads with a special token the data never contains (``<|endoftext|>`` there), so
  the score is read at the sequence's last token, the answer's end-of-turn marker. The
  tokenizer saved in the run directory carries that pad token: load the model with
  ``pad_token_id=tokenizer.pad_token_id`` (llamaforge's loader does) to read the same
  position;
- LoRA saves the score head in full (``modules_to_save``, adapters/attach.py): TRL
  does not, and peft would initialise it again at load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from trl import RewardConfig, RewardTrainer

from llamaforge.config.sections import RewardModelConfig, RunConfig
from llamaforge.data import Preference, Record, get_template, load_dataset_records, split_validation
from llamaforge.data.preference import encode_pairs, reward_examples, score_pad_token
from llamaforge.data.tokenization import to_dataset
from llamaforge.errors import DataError
from llamaforge.models import load_model
from llamaforge.training.harness import plan_run, run_stage, trainable_model, training_arguments

logger = logging.getLogger(__name__)

REWARD_COLUMNS = ("chosen_ids", "rejected_ids", "length")


def preference_records(records: Sequence[Record]) -> list[Preference]:
    """The records, which must all be preference pairs."""
    pairs = []
    for record in records:
        if not isinstance(record, Preference):
            raise DataError(
                f"{record.source}: stage rm trains on preference pairs (prompt + chosen + "
                "rejected); this record is not one"
            )
        pairs.append(record)
    return pairs


def run_rm(cfg: RunConfig) -> Path:
    """Train a reward model according to `cfg`; returns the run directory."""
    options = cfg.stage_options(RewardModelConfig)
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    plan = plan_run(cfg, packing=False)  # one score per sequence: rows are not packed

    base_dir = Path(cfg.source).parent if cfg.source else None
    records = load_dataset_records(cfg.data, base_dir=base_dir, seed=cfg.training.seed)
    train_records, val_records = split_validation(
        preference_records(records), cfg.data.val_set_size, cfg.training.seed
    )
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True, head="score")
    train_pairs = encode_pairs(train_records, tokenizer, template, cfg.data.add_eos_token)
    val_pairs = encode_pairs(val_records, tokenizer, template, cfg.data.add_eos_token)
    sides = [p.sequence(s) for p in [*train_pairs, *val_pairs] for s in ("chosen", "rejected")]
    tokenizer.pad_token = score_pad_token(tokenizer, sides)
    model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("reward model pads with %r (id %d)", tokenizer.pad_token, tokenizer.pad_token_id)

    train_examples, truncation = reward_examples(train_pairs, cfg.data.cutoff_len)
    truncation.log("training pairs")
    val_examples, val_truncation = reward_examples(val_pairs, cfg.data.cutoff_len)
    val_truncation.log("validation pairs")
    if not train_examples:
        raise DataError("no training pair is left after cutting to cutoff_len; raise cutoff_len")

    model = trainable_model(model, cfg, plan, head="score")
    has_eval = bool(val_examples)
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(
            cfg,
            plan,
            RewardConfig,
            has_eval=has_eval,
            eval_on_start=has_eval,  # the untrained head's accuracy is the baseline
            max_length=None,  # cut above; RewardTrainer would drop longer pairs instead
            center_rewards_coefficient=options.center_rewards_coefficient,
        ),
        train_dataset=to_dataset(train_examples, REWARD_COLUMNS),
        eval_dataset=to_dataset(val_examples, REWARD_COLUMNS) if has_eval else None,
        processing_class=tokenizer,
    )
    run_stage(trainer, cfg, plan)
    return plan.run_dir
