"""DPO's chosen/rejected scoring with the prompt computed once: a fast path for TRL's
DPOTrainer.

TRL puts a pair in two padded rows, prompt+chosen and prompt+rejected, and on devices
without Triton (any CPU) its fused LM head (``trl.trainer.utils.add_fused_lm_head``)
projects every position of both rows onto the whole vocabulary, prompt and padding
included. :func:`share_prompt_scoring` runs one row per pair instead: the prompt, the
chosen answer, then the rejected answer, whose tokens see the prompt and themselves but
not the chosen answer (a 4D attention mask; both answers' positions continue from the
prompt). The prompt, often most of the tokens, is computed once, in the policy's forward
and backward and in the reference's forward, and there is no padding between the two
answers. Then only the scored positions go through the LM head, with TRL's own chunked
log-prob kernel, and the results are scattered back into the ``[2B, T-1]`` layout TRL's
loss reads, so TRL computes every loss and metric as before.

This replaces the ``forward`` TRL sets on the model instance (itself an instance patch).
``tests/training/test_dpo.py`` checks TRL's contract (its ``_fused_forward`` is what the
trainer installs, the output fields) and that log-probs, losses and gradients equal TRL's
own path, so an upstream change fails there. Batches it does not recognise (other layouts,
MoE router logits, scaled logits, prompts that differ between the two rows, attention
kernels that take no 4D mask) go to TRL's forward unchanged.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import Any

import torch

logger = logging.getLogger(__name__)

SCORED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
"""The per-token fields DPOTrainer reads (TRL's ``outputs`` for the policy)."""
VOCAB_CHUNK = 32768  # TRL's vocabulary tile width (_CHUNKED_LOGPROB_CHUNK_SIZE)
_SCALED_LOGITS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
_MASKED_ATTENTION = ("sdpa", "eager", "llamaforge_packed_sdpa")


def share_prompt_scoring(model: Any) -> bool:
    """Put the shared-prompt path in front of the fused forward TRL gave ``model`` (the
    causal LM itself, not a peft wrapper). False when the model is not one it handles."""
    config = model.config.get_text_config()
    if any(getattr(config, key, None) is not None for key in _SCALED_LOGITS):
        return False  # TRL scales those logits before the log-softmax; keep its path
    if config._attn_implementation not in _MASKED_ATTENTION:
        return False
    trl_forward = model.forward
    if getattr(trl_forward, "__func__", None) is type(model).forward:
        raise RuntimeError("the model has no fused LM head: build the DPOTrainer first")

    @functools.wraps(type(model).forward)  # generate() checks kwargs against the signature
    def forward(
        self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any
    ) -> Any:
        if fused_lm_head and not args and labels is not None:
            out = _score_pairs(self, labels, **kwargs)
            if out is not None:
                return out
        return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

    model.forward = types.MethodType(forward, model)
    return True


def _pair_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(prompt length, chosen row length, rejected answer length) per pair, or None when
    the batch is not ``[chosen rows; rejected rows]`` sharing each prompt, right-padded."""
    rows, width = input_ids.shape
    if rows % 2:
        return None
    pairs = rows // 2
    lengths = attention_mask.sum(1)
    scored = labels != -100
    first = torch.where(scored.any(1), scored.int().argmax(1), lengths)
    prompt, chosen_len, rejected_len = first[:pairs], lengths[:pairs], lengths[pairs:]
    in_prompt = torch.arange(width, device=input_ids.device) < prompt[:, None]
    if not torch.equal(prompt, first[pairs:]) or not torch.equal(
        input_ids[:pairs][in_prompt], input_ids[pairs:][in_prompt]
    ):
        return None
    if not torch.equal(
        attention_mask.bool(), torch.arange(width, device=input_ids.device) < lengths[:, None]
    ):
        return None  # not right-padded
    return prompt, chosen_len, rejected_len - prompt


def _score_pairs(model: Any, labels: torch.Tensor, **kwargs: Any) -> Any:
    """TRL's fused-LM-head output for a DPO batch, computed one row per pair."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput

    input_ids, attention_mask = kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None)
    kwargs.pop("use_cache", None)
    if kwargs or input_ids is None or attention_mask is None or input_ids.dim() != 2:
        return None
    layout = _pair_layout(input_ids, attention_mask, labels)
    if layout is None:
        return None
    prompt, chosen_len, rejected_len = layout  # [B] each
    pairs, width = input_ids.shape[0] // 2, input_ids.shape[1]
    device = input_ids.device
    packed_len = chosen_len + rejected_len
    length = int(packed_len.max())

    # One row per pair: prompt + chosen (as in the chosen row), then the rejected answer.
    col = torch.arange(length, device=device)[None, :]  # [1, L]
    in_chosen = col < chosen_len[:, None]
    in_rejected = ~in_chosen & (col < packed_len[:, None])
    rejected_src = (col - chosen_len[:, None] + prompt[:, None]).clamp(0, width - 1)  # [B, L]
    chosen_src = col.clamp(max=width - 1).expand(pairs, length)
    ids = torch.where(
        in_chosen,
        input_ids[:pairs].gather(1, chosen_src),
        input_ids[pairs:].gather(1, rejected_src),
    ).masked_fill(~(in_chosen | in_rejected), 0)
    positions = torch.where(in_chosen, col, torch.where(in_rejected, rejected_src, 0))
    # segment: 0 prompt, 1 chosen answer, 2 rejected answer, 3 padding
    segment = torch.where(
        col < prompt[:, None],
        0,
        torch.where(in_chosen, 1, torch.where(in_rejected, 2, 3)),
    )
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal & (
        (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0)
    )  # [B, L, L]: an answer sees the prompt and itself; padding sees nothing real after it
    mask: torch.Tensor = allowed[:, None]
    if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    hidden = model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state  # [B, L, H]

    # Back to TRL's layout: row q, shifted position t predicts input_ids[q, t + 1].
    shift_scored = labels[:, 1:] != -100  # [2B, T-1]
    t = torch.arange(width - 1, device=device)[None, :]
    row = torch.arange(2 * pairs, device=device)[:, None]
    p, lc = prompt.repeat(2)[:, None], chosen_len.repeat(2)[:, None]
    # The rejected answer's first token is predicted from the last prompt token, shared.
    packed_col = torch.where((row >= pairs) & (t >= p), lc + t - p, t)
    flat = (row % pairs) * length + packed_col
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat[shift_scored])
    head = model.get_output_embeddings()
    fields = ChunkedLogProbFunction.apply(
        selected,
        head.weight,
        head.bias,
        labels[:, 1:][shift_scored],
        1.0,
        VOCAB_CHUNK,
        None,
        1.0,
        SCORED_OUTPUTS,
    )
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(shift_scored.shape).masked_scatter(shift_scored, x)
        for x in fields
    )
    assert log_probs is not None  # always computed
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / shift_scored.sum().clamp(min=1),
        log_probs=log_probs,
        entropy=entropy,
        log_sum_sq_probs=log_sum_sq,
        mean_logits=mean_logits,
        is_top1=is_top1,
        label_mask=shift_scored,
    )
