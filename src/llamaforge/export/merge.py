"""Verified LoRA/DoRA merge into a standalone Hugging Face model directory.

Contract of :func:`merge_adapter`:

- the adapter is checked first (config, readable weights, at least one tensor, a non-zero
  weight delta); a zero or empty adapter raises ``ExportError`` before anything is written;
- the base is loaded in float32 (an HF directory, a ``.gguf`` file or ``smollm2-135m``), its
  vocabulary resized when the adapter was trained with extra tokens, and its tied
  embeddings untied when the adapter changes ``embed_tokens`` or ``lm_head``;
- peft's ``merge_and_unload`` folds the adapter in; the result is written as size-sharded
  safetensors + ``config.json`` (with ``architectures``, without ``quantization_config``)
  + ``generation_config.json`` + the tokenizer (with its chat template), into a hidden
  staging directory that is renamed to ``output_dir`` only after verification: the model
  reloaded from disk with plain transformers (no peft) must give the same logits as
  base+adapter on a fixed prompt set within :func:`logit_tolerance` (fp32 epsilon × depth ×
  logit scale, see ``RTOL_PER_STAGE``). An interrupted or failed export leaves no directory
  under the output name.

:func:`convert_model` does the same without an adapter (GGUF → safetensors, for example).
GGUF-loaded models refuse ``save_pretrained``, so weights are always written with
safetensors directly, never through ``save_pretrained``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamaforge.errors import ExportError, ModelError
from llamaforge.export.sources import (
    AdapterFiles,
    adapter_vocab_size,
    load_base,
    load_tokenizer_dir,
    read_adapter,
    run_rope_scaling,
    touched_modules,
)
from llamaforge.export.writing import check_output_dir, is_tied, save_hf_model, staged_dir

logger = logging.getLogger(__name__)

FP32_EPS = float(torch.finfo(torch.float32).eps)  # 1.19e-7
RTOL_PER_STAGE = 4.0
"""Allowed max |Δlogit| per fp32 rounding stage, in units of ``FP32_EPS × max |logit|``.

The merged model computes ``(W + s·BA)·x`` where base+adapter computes ``W·x + s·B(A·x)``:
the same function rounded differently. Each decoder block adds a rounding error of order
eps × |activation| to the residual stream, the final norm and lm_head add theirs, and the
logits inherit it relative to their own magnitude. So the bound is

    tolerance = RTOL_PER_STAGE × FP32_EPS × max(num_hidden_layers + 2, 32) × max |reference logit|

(+2: embedding/final norm and the lm_head projection). The scale is taken from the
base+adapter logits, never from the model under test, so a broken merge cannot widen it.

Measured (this machine, fp32 CPU) on SmolLM2-135M (30 layers, max |logit| ≈ 38 on the fixed
prompts), real all-linear LoRA runs of `llamaforge train` (r 8, lr 1e-3, 6 steps, 16 Alpaca
records): max |Δlogit| 9.5e-5, 9.6e-5, 9.9e-5 (micro-batch 4, three seeds) and 1.11e-4
(default batch 16: the old absolute 1e-4 refused it, as it refused a user's run at 1.01e-4);
the first of them with B ×3: 1.07e-4 — rounding noise, barely growing with the adapter's
size. That is 20-24 eps × max |logit|, ≈ 0.7 per stage; the model cut to its first 2 / 8 /
15 layers: 4.6 / 9.1 / 7.3; a 2-layer hidden-32 test Llama: 2.3-3.7. The bound is 4 × 32 =
128 eps × max |logit| ≈ 5.8e-4 for the 30-layer model (16 for the 2-layer one): 5-6x above
every good merge of the full model (3.5-9x cut, 4-7x tiny). Genuine errors on the first run:
dropping the delta of any single one of its 210 merged tensors gives ≥ 1.3e-2 (median
9.0e-2), and keeping 90 % of one tensor's delta gives ≥ 1.3e-3 (median 9.0e-3): all above
the bound.
"""
MIN_RELATIVE_DELTA = 1e-7
"""||ΔW|| / ||W|| over the touched weights below this is treated as a zero adapter: fp32
rounding of a DoRA re-normalisation alone stays below it, one real training step does not."""
PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is",
    "def add(a, b):\n    return a + b\n\nprint(add(2,",
    "春天来了，花儿开了，小鸟在树上唱歌。",
)
CHAT_PROMPT = "Explain in one sentence what a LoRA adapter is."


@dataclass(frozen=True)
class MergeReport:
    output_dir: Path
    base: str
    adapter_dir: Path | None
    files: tuple[str, ...]
    vocab_size: int
    tied_embeddings: bool
    changed_tensors: int
    relative_delta: float
    """||ΔW|| / ||W|| over the weights the adapter touches (0 for a plain conversion)."""
    max_abs_logit_diff: float | None
    """Max |Δlogit| between base+adapter and the merged model reloaded from disk."""
    positions_checked: int
    relative_logit_diff: float | None = None
    """``max_abs_logit_diff / max |logit|`` of base+adapter (compare with
    ``RTOL_PER_STAGE × FP32_EPS × (layers + 2)``)."""
    logit_tolerance: float | None = None
    """The bound ``max_abs_logit_diff`` was checked against (:func:`logit_tolerance`)."""


@dataclass
class MergedModel:
    """A merged model in memory with the logits it must reproduce."""

    model: Any
    tokenizer: Any
    base: str
    prompts: list[list[int]]
    reference: list[torch.Tensor]
    """Logits of base+adapter (unmerged) for each prompt: [T, V] each."""
    changed_tensors: int
    relative_delta: float


def _untie(model: Any) -> None:
    """Give lm_head its own copy of the embedding matrix so each can get its own delta."""
    out = model.get_output_embeddings()
    out.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    text_config.tie_word_embeddings = False


def fixed_prompts(tokenizer: Any, *, first_new_id: int | None = None, max_len: int = 512) -> list:
    """Token ids of the verification prompts: plain text, code, Chinese, one chat-templated
    turn, and (after a vocabulary resize) a prompt made of the new tokens."""
    prompts = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in PROMPTS]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": CHAT_PROMPT}], tokenize=False, add_generation_prompt=True
        )
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    if first_new_id is not None and len(tokenizer) > first_new_id:
        new_ids = list(range(first_new_id, min(len(tokenizer), first_new_id + 16)))
        prompts.append(prompts[0][:4] + new_ids + prompts[0][4:8])
    return [list(p)[:max_len] for p in prompts if p]


@torch.no_grad()
def prompt_logits(model: Any, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Logits [T, V] per prompt, one unpadded forward each (no padding-mask effects)."""
    return [
        model(input_ids=torch.tensor([list(p)], device=model.device), use_cache=False)
        .logits[0]
        .float()
        .cpu()
        for p in prompts
    ]


def max_logit_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def logit_scale(logits: Sequence[torch.Tensor]) -> float:
    """max |logit| over every checked position and vocabulary entry."""
    return max((float(x.abs().max()) for x in logits if x.numel()), default=0.0)


MIN_ROUNDING_STAGES = 32
"""Floor of :func:`rounding_stages`. Shallow models are not proportionally more exact: a
good merge of the 2-layer, hidden-64 model of the web UI test showed 29 eps × max |logit|
(the rounding of wide matmuls dominates there, not depth), so small models are judged
like SmolLM2's 30 layers. A genuinely wrong merge is still orders of magnitude above."""


def rounding_stages(config: Any) -> int:
    """fp32 rounding stages between input ids and logits: the decoder blocks + 2, at least
    ``MIN_ROUNDING_STAGES``."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text_config, "num_hidden_layers", 1) or 1)
    return max(layers + 2, MIN_ROUNDING_STAGES)


def logit_tolerance(reference: Sequence[torch.Tensor], config: Any) -> float:
    """Max |Δlogit| an exact merge may show from fp32 rounding alone (see RTOL_PER_STAGE)."""
    return RTOL_PER_STAGE * FP32_EPS * rounding_stages(config) * logit_scale(reference)


@dataclass(frozen=True)
class LogitCheck:
    max_abs_diff: float
    relative_diff: float
    """max_abs_diff / max |reference logit| (0 when the logits are all zero)."""
    tolerance: float


def _load_base(base: Any, tokenizer: Any, head: str, adapter_dir: Path) -> tuple[Any, Any, str]:
    if base is None or isinstance(base, str | os.PathLike):
        # RoPE scaling shapes the rotary embedding when the model is built: the base must be
        # loaded with the run's, or base + adapter and the merged model would disagree.
        model, base_tokenizer = load_base(
            str(base), head=head, rope_scaling=run_rope_scaling(adapter_dir)
        )
        return model, tokenizer or base_tokenizer, str(base)
    if tokenizer is None:
        raise ExportError("a base model object was given without a tokenizer; pass tokenizer=")
    return base.eval(), tokenizer, getattr(base, "name_or_path", "") or type(base).__name__


def _snapshot(model: Any, modules: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the weights the adapter can change: only those, not the whole model."""
    snapshot = {}
    for path in modules:
        try:
            weight = model.get_submodule(path).weight
        except AttributeError:
            continue  # a name the base does not have: the key check reports it
        snapshot[f"{path}.weight"] = weight.detach().clone()
    return snapshot


def _attach(model: Any, adapter: AdapterFiles, base_name: str) -> Any:
    from peft import get_peft_model_state_dict

    from llamaforge.adapters import load_adapter

    fix = f"pass the base model this adapter was trained on with --model (now '{base_name}')"
    try:
        peft_model = load_adapter(model, adapter.directory, fix=fix)
    except ModelError as e:
        raise ExportError(str(e)) from None
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=True))
    unused = sorted(set(adapter.shapes) - expected)
    if unused:
        raise ExportError(
            f"{adapter.directory}: {len(unused)} adapter tensors have no place in the base "
            f"model (e.g. {unused[0]}); {fix}"
        )
    return peft_model.eval()


def merge_in_memory(base: Any, adapter_dir: str | Path, *, tokenizer: Any = None) -> MergedModel:
    """Load base + adapter, record reference logits, merge. A model object passed as ``base``
    is modified in place."""
    adapter = read_adapter(adapter_dir)
    if adapter.zero_lora_b:
        raise ExportError(
            f"{adapter.directory}: every LoRA B matrix is zero, so the adapter changes nothing "
            "(untrained or a failed save); retrain or pick another checkpoint"
        )
    if base is None:
        if adapter.base_spec is None:
            raise ExportError(
                f"{adapter.directory}: no base model recorded (config.yaml / "
                "adapter_config.json); pass --model"
            )
        base = adapter.base_spec
    # A reward model's adapter (peft task SEQ_CLS) goes on the one-output score head.
    head = "score" if adapter.config.get("task_type") == "SEQ_CLS" else "causal_lm"
    model, base_tokenizer, base_name = _load_base(base, tokenizer, head, adapter.directory)
    if tokenizer is None and adapter.has_tokenizer:
        # The run's tokenizer is the one training used (added tokens, chat template).
        base_tokenizer = load_tokenizer_dir(adapter.directory)
    if head == "score":  # the score is read before the pad id: keep the run's (config.json)
        model.config.pad_token_id = base_tokenizer.pad_token_id

    base_vocab = model.get_input_embeddings().num_embeddings
    vocab = adapter_vocab_size(adapter)
    if vocab is not None and vocab != base_vocab:
        logger.info("resizing the base vocabulary %d → %d to match the adapter", base_vocab, vocab)
        model.resize_token_embeddings(vocab, mean_resizing=False)
    modules = touched_modules(adapter)
    if is_tied(model) and any(p.endswith(("lm_head", "embed_tokens")) for p in modules):
        logger.info("the adapter changes tied embeddings: writing embed_tokens and lm_head apart")
        _untie(model)
    snapshot = _snapshot(model, modules)

    peft_model = _attach(model, adapter, base_name)
    first_new = base_vocab if vocab is not None and vocab > base_vocab else None
    prompts = fixed_prompts(
        base_tokenizer,
        first_new_id=first_new,
        max_len=getattr(model.config, "max_position_embeddings", 512),
    )
    reference = prompt_logits(peft_model, prompts)
    merged = peft_model.merge_and_unload(safe_merge=True)

    changed, delta_sq, base_sq = 0, 0.0, 0.0
    for name, before in snapshot.items():
        after = merged.get_parameter(name).detach()
        diff = float((after - before).float().norm()) ** 2
        changed += diff > 0
        delta_sq += diff
        base_sq += float(before.float().norm()) ** 2
    relative = (delta_sq / base_sq) ** 0.5 if base_sq else 0.0
    if relative < MIN_RELATIVE_DELTA:
        raise ExportError(
            f"{adapter.directory}: merging changes the weights by ||ΔW||/||W|| = {relative:.2e} "
            "(a zero adapter); nothing was written — retrain or pick another checkpoint"
        )
    logger.info("merged: %d tensors changed, ||ΔW||/||W|| = %.3e", changed, relative)
    return MergedModel(
        merged.eval(), base_tokenizer, base_name, prompts, reference, changed, relative
    )


def check_logits(reference: Sequence[torch.Tensor], model: Any, prompts: list) -> LogitCheck:
    """Compare ``model``'s logits on ``prompts`` with ``reference``; ExportError past the
    fp32 rounding bound of :func:`logit_tolerance`."""
    diff = max_logit_diff(reference, prompt_logits(model, prompts))
    scale = logit_scale(reference)
    check = LogitCheck(
        diff, diff / scale if scale else 0.0, logit_tolerance(reference, model.config)
    )
    if diff > check.tolerance:
        raise ExportError(
            f"verification failed: the merged model read back from disk differs from "
            f"base+adapter by max |Δlogit| = {diff:.3g} ({check.relative_diff:.3g} of max "
            f"|logit| {scale:.3g}) > {check.tolerance:.3g} (fp32 rounding bound "
            f"{RTOL_PER_STAGE:g} × eps × {rounding_stages(model.config)} stages × max |logit|); "
            "nothing was written (report this as a bug, with the adapter_config.json)"
        )
    return check


def _reload_and_compare(directory: Path, merged: MergedModel) -> LogitCheck:
    import transformers
    from transformers import AutoTokenizer

    seq_cls = type(merged.model).__name__.endswith("ForSequenceClassification")
    auto = getattr(
        transformers, f"AutoModelFor{'SequenceClassification' if seq_cls else 'CausalLM'}"
    )
    reloaded = auto.from_pretrained(str(directory), dtype=torch.float32).eval()
    check = check_logits(merged.reference, reloaded, merged.prompts)
    had_template = bool(getattr(merged.tokenizer, "chat_template", None))
    if had_template and not AutoTokenizer.from_pretrained(str(directory)).chat_template:
        raise ExportError("verification failed: the saved tokenizer lost its chat template")
    return check


def _write_verified(
    merged: MergedModel,
    output: Path,
    adapter_dir: Path | None,
    *,
    shard_size: str,
    verify: bool,
    overwrite: bool,
) -> MergeReport:
    with staged_dir(output, overwrite=overwrite) as staging:
        logger.info("writing %s", output)
        files = save_hf_model(merged.model, merged.tokenizer, staging, shard_size=shard_size)
        check = _reload_and_compare(staging, merged) if verify else None
    if check is not None:
        logger.info(
            "verified: max |Δlogit| = %.3g, %.3g of max |logit| (tolerance %.3g)",
            check.max_abs_diff,
            check.relative_diff,
            check.tolerance,
        )
    return MergeReport(
        output_dir=output,
        base=merged.base,
        adapter_dir=adapter_dir,
        files=tuple(files),
        vocab_size=merged.model.get_input_embeddings().num_embeddings,
        tied_embeddings=is_tied(merged.model),
        changed_tensors=merged.changed_tensors,
        relative_delta=merged.relative_delta,
        max_abs_logit_diff=None if check is None else check.max_abs_diff,
        positions_checked=sum(len(p) for p in merged.prompts),
        relative_logit_diff=None if check is None else check.relative_diff,
        logit_tolerance=None if check is None else check.tolerance,
    )


def merge_adapter(
    base_spec_or_model: Any,
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    shard_size: str = "2GB",
    verify: bool = True,
    overwrite: bool = False,
    tokenizer: Any = None,
) -> MergeReport:
    """Merge a LoRA/DoRA adapter (or a run directory's adapter) into its base and write a
    standalone HF model. ``base_spec_or_model`` None: the base recorded in the run."""
    output = Path(output_dir)
    check_output_dir(output, overwrite=overwrite)  # fail before minutes of loading
    merged = merge_in_memory(base_spec_or_model, adapter_dir, tokenizer=tokenizer)
    return _write_verified(
        merged,
        output,
        Path(adapter_dir),
        shard_size=shard_size,
        verify=verify,
        overwrite=overwrite,
    )


def convert_model(
    base_spec: str,
    output_dir: str | Path,
    *,
    shard_size: str = "2GB",
    verify: bool = True,
    overwrite: bool = False,
) -> MergeReport:
    """Write a base model (e.g. a ``.gguf``, dequantized to float32) as an HF directory."""
    output = Path(output_dir)
    check_output_dir(output, overwrite=overwrite)
    model, tokenizer = load_base(base_spec)
    prompts = fixed_prompts(
        tokenizer, max_len=getattr(model.config, "max_position_embeddings", 512)
    )
    merged = MergedModel(
        model, tokenizer, base_spec, prompts, prompt_logits(model, prompts), 0, 0.0
    )
    return _write_verified(
        merged, output, None, shard_size=shard_size, verify=verify, overwrite=overwrite
    )
