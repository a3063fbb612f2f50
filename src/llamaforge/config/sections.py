"""Typed, frozen config sections.

A run's YAML is flat (``learning_rate: 1e-4``) or grouped by section
(``training: {learning_rate: 1e-4}``); every key name is unique across sections so
that both forms, and ``key=value`` overrides on the command line, map to exactly one
field. Each field's docstring is the user documentation for that key.
Validation lives in :mod:`llamaforge.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "smollm2-135m"
    """Base model: the alias ``smollm2-135m`` (bundled), a local HF directory, a ``.gguf``
    file, or a hub id that is already in the local HF cache."""
    dtype: str = "auto"
    """Weights dtype: auto | float32 | bfloat16 | float16. ``auto`` is float32 on CPU and
    bfloat16 on GPUs that support it; when training LoRA/prefix/prompt at bf16 precision it
    is bfloat16 for the frozen base everywhere (the trained adapter stays float32)."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers: sdpa | eager | flash_attention_2."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling, e.g. ``{rope_type: linear, factor: 2.0}`` (linear, dynamic, yarn,
    llama3), merged into transformers 5's ``config.rope_parameters`` (that name is accepted
    as a key too). A run trained with it keeps it: generate, serve, merge and GGUF export of
    the run directory apply it unless a value is given."""
    trust_remote_code: bool = False
    """Run code shipped with a model directory. Off unless you trust the model."""
    quantization_bit: int | None = None
    """Load the base model quantized with bitsandbytes: 4 (NF4) or 8."""
    adapter: str | None = None
    """A LoRA adapter directory (or a run directory) to load on top of the base model."""


@dataclass(frozen=True)
class DataConfig:
    dataset: tuple[str, ...] = ()
    """Dataset file paths or registry names; several are mixed (concatenated, shuffled)."""
    dataset_dir: str | None = None
    """Directory holding ``dataset_info.json`` (registry); default: next to the config."""
    format: str | None = None
    """Force the input format: alpaca | sharegpt | openai | csv | text | preference |
    kto (KTO feedback: messages + a boolean label)."""
    columns: dict[str, str] | None = None
    """Column mapping for CSV/TSV (or renamed JSON fields), e.g. ``{prompt: question,
    response: answer}``."""
    system_prompt: str | None = None
    """System prompt added to every conversation that has none."""
    template: str | None = None
    """Prompt template (default ``chat``, or for an adapter's run directory the template it
    was trained with): ``chat`` (the tokenizer's chat template), llama2 | llama3 | chatml
    (a chat template override), or alpaca | alpaca_legacy | alpaca_short | vigogne or the
    name of a JSON file in ``templates_dir``."""
    templates_dir: str | None = None
    """Extra directory of prompt-template JSON files (alpaca-lora layout)."""
    cutoff_len: int = 1024
    """Maximum tokens per example; longer examples are truncated."""
    train_on_inputs: bool = False
    """Also train on prompt tokens (otherwise only assistant responses carry labels)."""
    add_eos_token: bool = True
    """Append the EOS token after each response so the model learns to stop. With a chat
    template its end-of-turn marker is trained and ends the answer; this only adds EOS for
    templates without one."""
    val_set_size: float = 0
    """Validation split: a count (>= 1) or a fraction (< 1) of the records."""
    max_samples: int | None = None
    """Use at most this many records from each dataset (for quick runs)."""
    group_by_length: bool = False
    """Batch records of similar length together (less padding when packing is off)."""
    packing: bool = True
    """Pack several examples into one row without cross-attention (padding-free). Stage
    dpo: each pair in one row, its prompt computed once for both answers."""


@dataclass(frozen=True)
class FinetuningConfig:
    finetuning: str = "lora"
    """What to train: lora | qlora | full | freeze | prefix | prompt."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] | str = "all-linear"
    """Modules that get LoRA: a list such as ``[q_proj, v_proj]`` or ``all-linear``."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    freeze_trainable_layers: int = 2
    """finetuning=freeze: train only the last N decoder layers."""
    freeze_trainable_modules: tuple[str, ...] = ()
    """finetuning=freeze: train only parameters whose names contain one of these."""
    num_virtual_tokens: int = 20
    """finetuning=prefix|prompt: number of virtual tokens."""


@dataclass(frozen=True)
class TrainingConfig:
    stage: str = "sft"
    """Training stage: sft (supervised fine-tuning) | pt (continued pretraining on raw text)
    | rm (reward model on preference pairs) | dpo | kto | orpo | simpo (preference
    training) | grpo | rloo (online RL: sampled answers scored by rewards). Options that
    only one stage uses live in that stage's own section (``sft:``, ``pt:``, ...)."""
    output_dir: str | None = None
    """Run directory; default ``runs/<stage>-<timestamp>``."""
    batch_size: int = 16
    """Global batch size in examples; gradient accumulation = batch_size //
    (micro_batch_size * world_size)."""
    micro_batch_size: int = 4
    """Examples per forward pass per device."""
    num_epochs: float = 3.0
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use num_epochs)."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to learning_rate (wins over warmup_ratio when > 0). Not
    with lr_scheduler_type constant (use constant_with_warmup)."""
    warmup_ratio: float = 0.0
    """Linear warmup as a fraction of all steps (rounded up)."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule after warmup: linear (down to 0) | cosine (half a cosine down
    to 0) | cosine_with_restarts (``lr_scheduler_cycles`` cosine decays, each starting again
    at learning_rate) | constant | constant_with_warmup | polynomial (linear down to 1e-7).
    The rate logged for a step is the rate that step used."""
    lr_scheduler_cycles: int = 1
    """cosine_with_restarts: how many cosine decays fit in the steps after warmup; the
    learning rate jumps back to learning_rate at the start of each (1: one decay, no
    restart). The other schedulers have no cycles and refuse a value other than 1."""
    optim: str = "adamw_torch"
    """Optimizer name understood by transformers (adamw_torch, sgd, adafactor, ...)."""
    weight_decay: float = 0.0
    """Weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seed: int = 42
    """Seed for data order, initialisation and dropout."""
    logging_steps: int = 10
    """Log loss and learning rate every N steps."""
    eval_steps: int | None = None
    """Evaluate every N steps (default: once per epoch when there is a validation split)."""
    save_steps: int | None = None
    """Save a checkpoint every N steps (default: once per epoch)."""
    save_total_limit: int | None = 3
    """Keep at most N checkpoints."""
    load_best_model_at_end: bool = False
    """Save the checkpoint with the lowest eval loss as the final model (``summary.json``
    names it as best_checkpoint; save_total_limit never deletes it). Needs a validation
    split, and checkpoints where evaluations happen: eval_steps and save_steps both unset
    (once per epoch), or save_steps a multiple of eval_steps."""
    early_stopping_patience: int | None = None
    """Stop when eval loss has not improved for N evaluations in a row."""
    resume_from_checkpoint: str | None = None
    """``auto`` (newest valid checkpoint in output_dir) or a checkpoint directory."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16. auto: bf16 autocast where the hardware supports it."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    torch_compile: bool = False
    """Compile the model with torch.compile."""
    report_to: tuple[str, ...] = ()
    """Extra loggers: tensorboard (event files under ``<output_dir>/runs/``), wandb
    (trainer_log.jsonl is always written)."""
    deepspeed: str | None = None
    """DeepSpeed config JSON passed to the trainer."""
    fsdp: str | None = None
    """FSDP options passed to the trainer, e.g. ``full_shard auto_wrap``. CUDA only: refused
    on CPU, where accelerate would silently run plain data parallelism instead."""


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    """Maximum tokens to generate."""
    temperature: float = 0.7
    """Sampling temperature; 0 means greedy."""
    top_k: int = 50
    """Sample from the k most likely tokens (0: no limit)."""
    top_p: float = 1.0
    """Nucleus sampling probability mass (0 < top_p <= 1)."""
    num_beams: int = 1
    """Beam search width (1: no beam search)."""
    repetition_penalty: float = 1.0
    """Penalty > 1 discourages repeating tokens."""
    do_sample: bool | None = None
    """Force sampling on/off; default: sample when temperature > 0 and num_beams == 1."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends when one appears (it is not included)."""
    sampling_seed: int | None = None
    """Seed for sampling (reproducible outputs); the CLI's ``--seed`` and the API's ``seed``."""


# One section per stage for the options only that stage uses; the section is named after
# the stage (config/stages.py). Giving one to another stage is an error naming its stage.


@dataclass(frozen=True)
class SFTConfig:
    neftune_noise_alpha: float | None = None
    """NEFTune: add uniform noise of this scale to embeddings while training."""
    predict_with_generate: bool = False
    """After training, generate answers for the validation split and score BLEU/ROUGE."""


@dataclass(frozen=True)
class PretrainConfig:
    train_embeddings: bool = False
    """With LoRA, also train the input embeddings and lm_head in full (peft
    ``modules_to_save``): for text in a new language or with new tokens."""
    train_new_tokens: bool = False
    """With LoRA, also train the embedding rows of the tokens ``llamaforge tokenizer extend``
    added to the model (and, tied or not, their lm_head rows), and only those (peft's
    trainable tokens): new tokens learn their meaning at a fraction of train_embeddings'
    cost. The model must be a directory that command wrote (or a run on one)."""
    streaming: bool = False
    """Read the corpus from disk as training consumes it, for corpora larger than memory
    (JSON Lines line by line, text files paragraph by paragraph). Needs ``max_steps`` (a
    stream has no length); ``val_set_size`` is then a count: the first N documents."""


@dataclass(frozen=True)
class RewardModelConfig:
    center_rewards_coefficient: float | None = None
    """Add this times the mean squared reward to the loss, so rewards stay centred on zero
    (Eisenstein et al. 2023; 0.01 is the usual value). Unset: no centring term."""


@dataclass(frozen=True)
class DPOConfig:
    pref_loss: str = "sigmoid"
    """Preference loss: sigmoid (DPO) | ipo | hinge | robust (robust DPO: ``label_smoothing``
    is the assumed share of flipped labels)."""
    beta: float = 0.1
    """How far the policy may move from the reference: higher keeps it closer (IPO's tau)."""
    label_smoothing: float = 0.0
    """pref_loss robust: the probability that a pair's preference is flipped, in [0, 0.5)."""
    precompute_ref_log_probs: bool = False
    """Score every pair with the reference once before training instead of at every step;
    with full fine-tuning this avoids a second copy of the model in memory."""
    sft_weight: float = 0.0
    """Weight of an SFT loss (the chosen answers' mean token NLL) added to the preference
    loss (RPO; LLaMA-Factory's ``pref_ftx``). DPO alone raises the chosen answer only
    relative to the rejected one, which need not change what the model generates; this
    term also makes the chosen answers likely. 0 = plain DPO."""


@dataclass(frozen=True)
class KTOConfig:
    kto_beta: float = 0.1
    """KTO's beta: how far the policy may move from the reference."""
    desirable_weight: float = 1.0
    """Weight of the loss on desirable (``label: true``) answers."""
    undesirable_weight: float = 1.0
    """Weight of the loss on undesirable (``label: false``) answers. With unbalanced data,
    keep desirable_weight × desirable count ≈ undesirable_weight × undesirable count."""


@dataclass(frozen=True)
class ORPOConfig:
    orpo_beta: float = 0.1
    """ORPO's lambda: weight of the odds-ratio term next to the chosen answers' NLL loss."""


@dataclass(frozen=True)
class SimPOConfig:
    simpo_beta: float = 2.0
    """SimPO's beta: scale of the length-normalised log-probability reward."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin (gamma) between chosen and rejected answers."""


def _exact_answer_only() -> dict[str, float]:
    return {"exact_answer": 1.0}


@dataclass(frozen=True)
class OnlineRLConfig:
    """The options of the online RL stages (grpo, rloo): rollouts, rewards, held-out set."""

    rewards: dict[str, float] = field(default_factory=_exact_answer_only)
    """Rewards and their weights, e.g. ``{exact_answer: 1.0, format: 0.2}``; a completion's
    reward is the weighted sum. ``exact_answer``: 1 when the completion's final number or
    option letter ("The answer is 42", "答案是 42", "#### 42", "(B)", else its last number)
    equals the reference answer's (the record's answer), else 0. ``format``: 1 when
    ``format_pattern`` occurs in it. ``length``: 1 inside ``length_band`` tokens (below
    it n / min, above it falling linearly to 0 at 2 × max). ``module:function``: your own function,
    called as ``f(prompts=, completions=, completion_ids=, answer=, messages=, **kwargs)``
    and returning one number per completion (a module next to the config file is found).
    Any other name: the run directory of a ``stage: rm`` run, whose score of the prompt
    and completion is the reward."""
    format_pattern: str | None = None
    """Reward ``format``: a regular expression the completion must contain (``re.search``);
    unset: an explicit final answer ("The answer is N", "答案是 N", "#### N")."""
    length_band: tuple[int, ...] = ()
    """Reward ``length``: ``[min, max]`` completion tokens that earn the full reward."""
    num_generations: int = 8
    """Completions sampled per prompt (a group). ``batch_size`` counts completions: each
    optimizer step samples batch_size / num_generations prompts."""
    max_completion_length: int = 256
    """The most tokens of a sampled completion (and of a held-out answer)."""
    rollout_temperature: float = 1.0
    """Sampling temperature of the rollouts (> 0)."""
    rollout_top_p: float = 1.0
    """Nucleus sampling mass of the rollouts (0 < top_p <= 1; 1: no limit)."""
    rollout_top_k: int = 0
    """Sample rollouts from the k most likely tokens (0: no limit)."""
    held_out: tuple[str, ...] = ()
    """Datasets (paths or registry names) of problems with reference answers, answered
    greedily before and after training and scored like ``exact_answer``: summary.json's
    ``held_out`` holds the accuracy before and after (and held_out_answers.jsonl the
    answers)."""


@dataclass(frozen=True)
class GRPOConfig(OnlineRLConfig):
    beta: float = 0.0
    """Weight of the per-token KL penalty to the reference (the base model: the adapter
    disabled); 0 skips the reference pass (TRL's default; DeepSeek-R1 used 0.001)."""
    loss_type: str = "dapo"
    """How token losses are averaged: dapo (over every completion token of the batch) |
    grpo (per completion, then over completions; favours short right answers) | dr_grpo
    (divided by max_completion_length) | bnpo (over the micro-batch's tokens)."""
    scale_rewards: str = "group"
    """Advantage = reward - its group's mean, divided by: group (the group's standard
    deviation) | batch (the batch's) | none (Dr. GRPO: no division)."""


@dataclass(frozen=True)
class RLOOConfig(OnlineRLConfig):
    beta: float = 0.05
    """Weight of the KL penalty to the reference (the base model: the adapter disabled),
    subtracted from each completion's reward (the RLOO paper's form); 0 skips the
    reference pass."""
    normalize_advantages: bool = False
    """Scale the leave-one-out advantages of each batch to unit variance."""


@dataclass(frozen=True)
class PPOConfig(OnlineRLConfig):
    num_generations: int = 1
    """Responses sampled per prompt of a rollout batch."""
    held_out: tuple[str, ...] = ()
    """Datasets (paths or registry names) of held-out prompts, answered greedily before and
    after training and scored by ``rewards``: summary.json's ``held_out`` holds the mean
    reward before and after (held_out_answers.jsonl every answer)."""
    rollout_size: int = 16
    """Prompts per rollout batch: its rollout_size × num_generations responses are scored
    together (advantages whitened over them); a multiple of batch_size."""
    ppo_epochs: int = 2
    """Passes over each rollout batch, each in a new order, one optimizer step per
    batch_size responses."""
    kl_coef: float = 0.05
    """Coefficient of the per-token KL penalty to the reference (the starting model: the
    adapter disabled); the initial value when kl_target is set."""
    kl_target: float | None = None
    """Adapt kl_coef after each rollout batch so that the KL of a response to the reference
    approaches this (Ziegler et al. 2019); unset: kl_coef stays fixed."""
    kl_horizon: int = 10000
    """How slowly the adaptive kl_coef moves: by at most 20 % per kl_horizon responses."""
    gamma: float = 1.0
    """Discount per token in GAE (1: none)."""
    lam: float = 0.95
    """GAE's lambda: 1 is Monte-Carlo returns, 0 one-step bootstrapping."""
    clip_range: float = 0.2
    """PPO's clip of the probability ratio (1 ± clip_range)."""
    clip_range_value: float = 0.2
    """How far a value may move from its rollout's value before its loss is clipped."""
    value_coef: float = 0.1
    """Weight of the value loss beside the policy loss."""
    missing_eos_penalty: float = 1.0
    """Taken off the reward of a response that reaches max_completion_length without
    ending (0: none)."""
    normalize_rewards: bool = True
    """Scale rewards by the running mean and standard deviation of all rewards so far."""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "finetuning": FinetuningConfig,
    "training": TrainingConfig,
    "generation": GenerationConfig,
}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetuning: FinetuningConfig = field(default_factory=FinetuningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    options: Any = field(default_factory=SFTConfig)
    """The options section of ``training.stage`` (an ``SFTConfig`` for sft, ...)."""
    source: str | None = None
    """The YAML file this config came from (None when built from overrides alone)."""

    def stage_options(self, kind: type[T]) -> T:
        """The stage's own options, typed: ``cfg.stage_options(SFTConfig)``."""
        if not isinstance(self.options, kind):
            raise TypeError(f"stage '{self.training.stage}' has {self.options!r}, not {kind}")
        return self.options

    @property
    def gradient_accumulation_steps(self) -> int:
        """Accumulation for one process; world size is divided in at trainer setup."""
        return max(1, self.training.batch_size // self.training.micro_batch_size)
