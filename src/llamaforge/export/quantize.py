"""Quantized HF checkpoints beyond GGUF: bitsandbytes 4-bit (NF4 + double quant) and 8-bit.

Contract of :func:`quantize_bnb`: the source (HF directory, ``.gguf``, ``smollm2-135m``, or
a run/adapter directory — merged first) is loaded through transformers with a
``BitsAndBytesConfig`` and written with ``save_pretrained`` (``quantization_config`` in
config.json, so plain ``from_pretrained`` reloads it quantized) plus the tokenizer, into a
hidden staging directory renamed to the output only after the reloaded model's logits
were compared with the float32 source (top-1 agreement >= ``MIN_TOP1[bits]``).

Measured here (bitsandbytes 0.50.2, CPU): both modes save and reload bit-identically.
Two CPU quirks shape the code: the first CPU forward of a 4-bit layer repacks its weight
in place, so the model is saved *before* any forward; and 4-bit layers with fewer than 64
input features fail at the first forward (bnb's CPU absmax reshape), reported as an
ExportError.

GPTQ / AWQ are not offered, because none of their maintained libraries runs on this
CPU-only setup without breaking the pinned stack (checked with ``pip install --dry-run``,
November 2026): gptqmodel 7.7.0 pulls torch 2.14.1 with CUDA 13 libraries (replacing the
CPU torch); llmcompressor 0.14.0.1 downgrades transformers 5.24 → 5.17; autoawq 0.2.9 is
an sdist needing triton/CUDA kernels (and is archived upstream); auto-gptq 0.7.1 ships a
CUDA-built extension and transformers 5 only integrates gptqmodel. Revisit on a GPU
machine with gptqmodel (transformers' ``GPTQConfig``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamaforge.errors import ExportError
from llamaforge.export.merge import (
    fixed_prompts,
    merge_in_memory,
    prompt_logits,
)
from llamaforge.export.sources import is_adapter_dir, load_base
from llamaforge.export.writing import check_output_dir, save_hf_model, staged_dir
from llamaforge.models import to_quantization_config

logger = logging.getLogger(__name__)

BNB_BITS = (4, 8)
MIN_TOP1 = {8: 0.90, 4: 0.75}
"""Top-1 agreement with the float32 source that a quantized save must keep."""


@dataclass(frozen=True)
class QuantizeReport:
    output_dir: Path
    bits: int
    files: tuple[str, ...]
    size_bytes: int
    max_abs_logit_diff: float | None
    top1_agreement: float | None
    positions_checked: int
    merged_adapter: Path | None


def _float_source(spec: str, adapter: str | Path | None, scratch: Path) -> tuple[Path, Any, Any]:
    """(HF directory with float32 weights, source model, tokenizer)."""
    if adapter is None and is_adapter_dir(spec):
        merged = merge_in_memory(None, spec)  # a run directory: its recorded base + adapter
    elif adapter is not None:
        merged = merge_in_memory(spec, adapter)
    else:
        model, tokenizer = load_base(spec)
        if (Path(spec) / "config.json").is_file():
            return Path(spec), model, tokenizer  # already an HF directory of floats
        merged = None
    if merged is not None:
        model, tokenizer = merged.model, merged.tokenizer
    # bitsandbytes quantizes while loading, so the source must be on disk first.
    save_hf_model(model, tokenizer, scratch)
    return scratch, model, tokenizer


def quantize_bnb(
    model_dir_or_run_dir: str | Path,
    output_dir: str | Path,
    *,
    bits: int = 4,
    adapter: str | Path | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> QuantizeReport:
    """Save a bitsandbytes-quantized copy of a model (or of base + LoRA, merged)."""
    from transformers import AutoModelForCausalLM

    if bits not in BNB_BITS:
        raise ExportError(f"bits={bits}: bitsandbytes saves 4 or 8 bit weights; pass 4 or 8")
    output = Path(output_dir)
    check_output_dir(output, overwrite=overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    with tempfile.TemporaryDirectory(prefix=".quantize-src-", dir=output.parent) as scratch:
        source_dir, source, tokenizer = _float_source(
            str(model_dir_or_run_dir), adapter, Path(scratch)
        )
        prompts = fixed_prompts(tokenizer, max_len=source.config.max_position_embeddings)
        reference = prompt_logits(source, prompts) if verify else []
        del source
        with staged_dir(output, overwrite=overwrite) as staging:
            logger.info("quantizing %s to %d-bit with bitsandbytes", model_dir_or_run_dir, bits)
            quantized = AutoModelForCausalLM.from_pretrained(
                str(source_dir),
                quantization_config=to_quantization_config(bits, compute_dtype=torch.float32),
                device_map=device_map,
                dtype=torch.float32,
            )
            quantized.save_pretrained(str(staging))  # before any forward: see module doc
            tokenizer.save_pretrained(str(staging))
            del quantized
            diff = top1 = None
            if verify:
                diff, top1 = _verify(staging, prompts, reference, bits, device_map)
    files = tuple(sorted(p.name for p in output.iterdir()))
    return QuantizeReport(
        output_dir=output,
        bits=bits,
        files=files,
        size_bytes=sum(p.stat().st_size for p in output.glob("*.safetensors")),
        max_abs_logit_diff=diff,
        top1_agreement=top1,
        positions_checked=sum(len(p) for p in prompts),
        merged_adapter=Path(adapter)
        if adapter
        else (Path(model_dir_or_run_dir) if is_adapter_dir(model_dir_or_run_dir) else None),
    )


def _verify(
    directory: Path, prompts: list, reference: list, bits: int, device_map: dict
) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(directory), device_map=device_map).eval()
    try:
        logits = prompt_logits(reloaded, prompts)
    except RuntimeError as e:
        raise ExportError(
            f"the {bits}-bit model does not run here ({str(e).splitlines()[0]}); on some CPUs "
            "bitsandbytes 4-bit fails on layers with < 64 input features — use --bits 8"
        ) from None
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, logits, strict=True))
    agree = sum(
        int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, logits, strict=True)
    )
    top1 = agree / sum(len(p) for p in prompts)
    if top1 < MIN_TOP1[bits]:
        raise ExportError(
            f"verification failed: the {bits}-bit model agrees with the source on only "
            f"{top1:.1%} of top-1 tokens (needs {MIN_TOP1[bits]:.0%}); nothing was written"
        )
    logger.info(
        "verified %d-bit: max |Δlogit| = %.3g, top-1 agreement %.1f%%", bits, diff, 100 * top1
    )
    return diff, top1
