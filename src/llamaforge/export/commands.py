"""`llamaforge export merge|gguf|quantize`: argument-level entry points for the CLI.

Each function runs one export, logs a short summary (what was written, the verification
figures) and returns the exit code 0; user errors propagate as ``ExportError`` for the CLI
to print. ``model`` may be a run directory (then its adapter is used and its config names
the base), so ``llamaforge export gguf --model runs/sft-1 --output out.gguf`` is enough.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llamaforge.errors import ExportError
from llamaforge.export.sources import is_adapter_dir

logger = logging.getLogger(__name__)


def _split_run_dir(model: str | None, adapter: str | None) -> tuple[str | None, str | None]:
    """``--model RUN_DIR`` without ``--adapter`` means: the run's base plus the run's adapter."""
    if adapter is None and model is not None and is_adapter_dir(model):
        return None, model
    return model, adapter


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def run_export_merge(
    model: str | None,
    adapter: str | None,
    output: str,
    *,
    shard_size: str = "2GB",
    overwrite: bool = False,
    verify: bool = True,
) -> int:
    """Merge an adapter into its base (or, with no adapter, convert the base, e.g. a GGUF,
    to an HF safetensors directory)."""
    from llamaforge.export.merge import convert_model, merge_adapter

    model, adapter = _split_run_dir(model, adapter)
    if adapter is None:
        if model is None:
            raise ExportError("export merge needs --model (and --adapter, or a run directory)")
        report = convert_model(
            model, output, shard_size=shard_size, verify=verify, overwrite=overwrite
        )
    else:
        report = merge_adapter(
            model, adapter, output, shard_size=shard_size, verify=verify, overwrite=overwrite
        )
        logger.info(
            "merged %s into %s: %d tensors changed, ||ΔW||/||W|| = %.2e",
            adapter,
            report.base,
            report.changed_tensors,
            report.relative_delta,
        )
    logger.info("wrote %s: %s", report.output_dir, ", ".join(report.files))
    if report.max_abs_logit_diff is not None:
        logger.info(
            "verified: reloaded without peft, max |Δlogit| = %.3g over %d positions",
            report.max_abs_logit_diff,
            report.positions_checked,
        )
    return 0


def run_export_gguf(
    model: str,
    output: str,
    type: str = "f16",
    adapter: str | None = None,
    *,
    system: str | None = None,
    modelfile: bool = True,
    overwrite: bool = False,
    verify: bool = True,
) -> int:
    """Write a verified GGUF (+ Ollama Modelfile) from a model, run dir or base + adapter."""
    from llamaforge.export.gguf import export_gguf

    # export_gguf itself reads a run directory given as the model
    report = export_gguf(
        model,
        output,
        type=type,
        adapter=adapter,
        system=system,
        modelfile=modelfile,
        overwrite=overwrite,
        verify=verify,
    )
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.tensor_types.items()))
    logger.info(
        "wrote %s (%s, %d tensors: %s)",
        output,
        _size(report.size_bytes),
        report.tensor_count,
        kinds,
    )
    if report.max_abs_logit_diff is not None and report.top1_agreement is not None:
        logger.info(
            "verified through transformers' GGUF loader: max |Δlogit| = %.3g, top-1 "
            "agreement %.1f%% over %d positions, tokenizer %s",
            report.max_abs_logit_diff,
            100 * report.top1_agreement,
            report.positions_checked,
            "identical" if report.tokenizer_match else "DIFFERS on some prompts",
        )
    if report.modelfile is not None:
        logger.info("wrote %s: ollama create NAME -f %s", report.modelfile, report.modelfile)
    return 0


def run_export_quantize(
    model: str,
    output: str,
    bits: int = 4,
    adapter: str | None = None,
    *,
    overwrite: bool = False,
    verify: bool = True,
) -> int:
    """Save a bitsandbytes 4/8-bit checkpoint (reloads quantized with plain transformers)."""
    from llamaforge.export.quantize import quantize_bnb

    report = quantize_bnb(
        model, output, bits=bits, adapter=adapter, overwrite=overwrite, verify=verify
    )
    logger.info("wrote %s (%d-bit, weights %s)", Path(output), bits, _size(report.size_bytes))
    if report.top1_agreement is not None:
        logger.info(
            "verified: max |Δlogit| = %.3g, top-1 agreement %.1f%% over %d positions",
            report.max_abs_logit_diff,
            100 * report.top1_agreement,
            report.positions_checked,
        )
    return 0


EXPORTERS = {
    "merge": run_export_merge,
    "gguf": run_export_gguf,
    "quantize": run_export_quantize,
}
"""``llamaforge export <name>`` → entry point."""
