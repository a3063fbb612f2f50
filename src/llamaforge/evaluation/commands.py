"""``llamaforge eval``: a multiple-choice suite or perplexity, printed and saved.

Contract: ``--suite`` is a suite folder (:mod:`llamaforge.evaluation.suites`) or ``ppl``
(with ``--data``). The suite is read and checked before the model loads, so bad input
fails in a second with one line. ``--output DIR`` writes ``DIR/results.json``::

    {"kind": "multiple_choice", "suite": ..., "split", "shots", "prompt_style",
     "model": {"model", "adapter", "dtype"}, "metrics": {"acc", "acc_norm", "acc_macro",
     "questions", "subjects"}, "subjects": {name: {"acc", "acc_norm", "questions"}},
     "questions": [{"subject", "id", "gold", "pred", "pred_norm", "loglikelihoods"}],
     "seconds": ...}

    {"kind": "perplexity", "data": ..., "block_size", "model": {...}, "metrics":
     {"token_perplexity", "char_perplexity", "bits_per_char", "nll_per_token", "tokens",
     "characters", "documents"}, "documents": [{"source", "nll", "tokens", "characters"}],
     "seconds": ...}

so two runs can be compared subject by subject and question by question (or document by
document).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from llamaforge.config.sections import RunConfig
from llamaforge.data.registry import read_dataset, resolve_dataset
from llamaforge.errors import ConfigError
from llamaforge.evaluation.multiple_choice import DEFAULT_BATCH_SIZE, SuiteResult, evaluate_suite
from llamaforge.evaluation.perplexity import (
    DEFAULT_BLOCK_SIZE,
    PerplexityResult,
    score_texts,
    scored_texts,
)
from llamaforge.evaluation.prompts import prompt_style
from llamaforge.evaluation.suites import is_suite_folder, read_suite
from llamaforge.rundir import write_atomic

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
PERPLEXITY_SUITE = "ppl"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    suite: str
    data: str | None = None
    shots: int = 0
    split: str = "test"
    output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    limit: int | None = None
    subjects: tuple[str, ...] = ()
    prompt_style: str = "auto"
    block_size: int | None = None


def _check(options: EvalOptions) -> None:
    for name in ("shots", "batch_size", "limit", "block_size"):
        value = getattr(options, name)
        least = 0 if name == "shots" else 1
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: must be at least {least}, got {value}")
    if options.suite == PERPLEXITY_SUITE:
        if not options.data:
            raise ConfigError("--suite ppl needs --data FILE (text, JSONL or a dataset)")
    elif not is_suite_folder(Path(options.suite)):
        raise ConfigError(
            f"unknown suite '{options.suite}': not a folder with dev/ and test/ CSVs (the "
            f"MMLU / C-Eval / CMMLU layout), nor '{PERPLEXITY_SUITE}' (with --data FILE)"
        )


def _model_fields(cfg: RunConfig) -> dict[str, Any]:
    return {"model": cfg.model.model, "adapter": cfg.model.adapter, "dtype": cfg.model.dtype}


def _write_results(output: str | None, results: dict[str, Any]) -> None:
    if output:
        path = Path(output) / RESULTS_NAME
        write_atomic(path, json.dumps(results, ensure_ascii=False, indent=1) + "\n")
        logger.info("wrote %s", path)


def multiple_choice_results(result: SuiteResult, suite: str, cfg: RunConfig) -> dict[str, Any]:
    """The ``results.json`` object of a multiple-choice run (see the module docstring)."""
    return {
        "kind": "multiple_choice",
        "suite": suite,
        "split": result.split,
        "shots": result.shots,
        "prompt_style": result.style,
        "model": _model_fields(cfg),
        "metrics": result.metrics(),
        "subjects": result.subject_metrics(),
        "questions": [
            {
                "subject": q.subject,
                "id": q.id,
                "gold": q.gold,
                "pred": q.pred,
                "pred_norm": q.pred_norm,
                "loglikelihoods": list(q.loglikelihoods),
            }
            for q in result.questions
        ],
        "seconds": round(result.seconds, 3),
    }


def _summary(result: SuiteResult) -> str:
    lines = [f"{'subject':<40} {'n':>5} {'acc':>7}"]
    for name, m in result.subject_metrics().items():
        lines.append(f"{name:<40} {int(m['questions']):>5} {m['acc']:>7.4f}")
    m = result.metrics()
    lines.append(
        f"overall: acc {m['acc']:.4f}, acc_norm {m['acc_norm']:.4f}, macro acc "
        f"{m['acc_macro']:.4f} over {int(m['questions'])} questions in {int(m['subjects'])} "
        f"subjects ({result.shots}-shot, {result.style} prompt, {result.seconds:.1f} s)"
    )
    return "\n".join(lines)


def _load(cfg: RunConfig) -> tuple[Any, Any]:
    from llamaforge.models import load_model

    return load_model(cfg.model)


def _run_multiple_choice(cfg: RunConfig, options: EvalOptions) -> int:
    suite = read_suite(
        options.suite,
        options.split,
        shots=options.shots,
        subjects=options.subjects or None,
        limit=options.limit,
    )
    style = prompt_style(options.prompt_style, suite)
    model, tokenizer = _load(cfg)
    result = evaluate_suite(model, tokenizer, suite, style, batch_size=options.batch_size)
    _write_results(options.output, multiple_choice_results(result, options.suite, cfg))
    sys.stdout.write(_summary(result) + "\n")
    return 0


def perplexity_results(result: PerplexityResult, data: str, cfg: RunConfig) -> dict[str, Any]:
    """The ``results.json`` object of a perplexity run (see the module docstring)."""
    return {
        "kind": "perplexity",
        "data": data,
        "block_size": result.block_size,
        "model": _model_fields(cfg),
        "metrics": result.metrics(),
        "documents": [dataclasses.asdict(d) for d in result.documents],
        "seconds": round(result.seconds, 3),
    }


def _run_perplexity(cfg: RunConfig, options: EvalOptions, data: str) -> int:
    from llamaforge.inference.engine import template_for

    records = read_dataset(resolve_dataset(data, cfg.data, Path.cwd()))
    model, tokenizer = _load(cfg)
    texts = scored_texts(records, tokenizer, template_for(cfg))
    limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_BLOCK_SIZE
    block_size = options.block_size or min(DEFAULT_BLOCK_SIZE, limit)
    started = time.perf_counter()
    scores = score_texts(
        model,
        texts,
        block_size=block_size,
        batch_size=options.batch_size,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    result = PerplexityResult(tuple(scores), block_size, time.perf_counter() - started)
    _write_results(options.output, perplexity_results(result, data, cfg))
    m = result.metrics()
    sys.stdout.write(
        f"perplexity: {m['token_perplexity']:.4f} per token ({int(m['tokens'])} tokens), "
        f"{m['char_perplexity']:.4f} per character ({int(m['characters'])} characters, "
        f"{m['bits_per_char']:.4f} bits each) over {int(m['documents'])} texts\n"
    )
    return 0


def run_eval(cfg: RunConfig, options: EvalOptions) -> int:
    """Run ``llamaforge eval`` (see the module docstring)."""
    _check(options)
    if options.suite == PERPLEXITY_SUITE and options.data:
        return _run_perplexity(cfg, options, options.data)
    return _run_multiple_choice(cfg, options)
