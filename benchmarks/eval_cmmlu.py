"""Benchmark: `llamaforge eval` on CMMLU with the bundled model (../shared/data/cmmlu is
read in place, never copied: its licence keeps it out of the repo).

    python benchmarks/eval_cmmlu.py [--suite ../shared/data/cmmlu] [--parts check,fewshot,full]
                                    [--full-limit N] [--threads T] [--output DIR]

Parts (each prints its figures as soon as it has run):

- check: 20 questions (the first 5 of 4 subjects), 5-shot. The batched, prefix-cached
  letter log-likelihoods against one unpadded forward per choice over context +
  continuation (lm-evaluation-harness's tokenization): the largest difference and whether
  every predicted letter is the same.
- fewshot: 5-shot on the first 5 subjects: accuracy, seconds, questions per second.
- full: the whole test split 0-shot (11,582 questions), or the first N questions of each
  subject with --full-limit (the time for the whole split is then extrapolated from the
  tokens read). Accuracy, seconds, tokens read per second and the GFLOP/s they amount to.

The 1-minute load average is printed with each part: the machine is shared, and a loaded
machine's figures are not the code's. The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from llamaforge.config import load_run_config
from llamaforge.config.sections import ModelConfig
from llamaforge.evaluation.commands import multiple_choice_results
from llamaforge.evaluation.multiple_choice import (
    evaluate_suite,
    shared_prefix_length,
    subject_rows,
)
from llamaforge.evaluation.prompts import PROMPT_STYLES, continuation, question_text, subject_prefix
from llamaforge.evaluation.suites import LETTERS, Suite, read_suite
from llamaforge.models import load_model

ROOT = Path(__file__).resolve().parents[1]
CMMLU = ROOT.parent / "shared" / "data" / "cmmlu"
STYLE = "cmmlu"


def tokens_read(tokenizer: Any, suite: Suite) -> int:
    """Tokens the scorer feeds the model: every row after its subject's shared prefix,
    plus each prefix once."""
    total = 0
    for subject in suite.subjects:
        rows = subject_rows(tokenizer, subject, PROMPT_STYLES[STYLE], suite.subject_names)
        prefix = shared_prefix_length(rows)
        total += prefix + sum(len(r.tokens) - prefix for r in rows)
    return total


def flops_per_token(model: Any) -> float:
    """2 x the parameters a token meets in the matmuls (embedding lookup and the LM head,
    applied once per question, left out)."""
    embedding = model.get_input_embeddings().weight.numel()
    return 2.0 * (sum(p.numel() for p in model.parameters()) - embedding)


@torch.no_grad()
def direct(model: Any, tokenizer: Any, context: str) -> list[float]:
    context_ids = tokenizer(context)["input_ids"]
    values = []
    for letter in LETTERS:
        whole = tokenizer(context + continuation(letter))["input_ids"]
        target = whole[len(context_ids) :]
        hidden = model.model(torch.tensor([context_ids + target])).last_hidden_state[0]
        start = len(context_ids) - 1
        logprobs = model.lm_head(hidden[start : start + len(target)]).float().log_softmax(-1)
        values.append(sum(logprobs[j, t].item() for j, t in enumerate(target)))
    return values


def run_check(model: Any, tokenizer: Any, path: Path, batch_size: int) -> dict[str, Any]:
    names = sorted(p.stem for p in (path / "test").glob("*.csv"))[:4]
    suite = read_suite(path, shots=5, subjects=names, limit=5)
    result = evaluate_suite(model, tokenizer, suite, STYLE, batch_size=batch_size)
    by_key = {(r.subject, r.id): r for r in result.questions}
    worst, same = 0.0, 0
    for subject in suite.subjects:
        prefix = subject_prefix(subject, PROMPT_STYLES[STYLE], suite.subject_names)
        for q in subject.questions:
            expected = direct(model, tokenizer, prefix + question_text(q, PROMPT_STYLES[STYLE]))
            got = by_key[(subject.name, q.id)]
            worst = max(
                worst, *(abs(a - b) for a, b in zip(got.loglikelihoods, expected, strict=True))
            )
            same += got.pred == LETTERS[expected.index(max(expected))]
    return {"questions": len(result.questions), "max_abs_diff": worst, "same_letters": same}


def run_suite(
    model: Any, tokenizer: Any, suite: Suite, batch_size: int, output: Path | None, name: str
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    result = evaluate_suite(model, tokenizer, suite, STYLE, batch_size=batch_size)
    tokens = tokens_read(tokenizer, suite)
    metrics = result.metrics()
    figures = {
        "questions": int(metrics["questions"]),
        "subjects": int(metrics["subjects"]),
        "acc": round(100 * metrics["acc"], 2),
        "acc_macro": round(100 * metrics["acc_macro"], 2),
        "seconds": round(result.seconds, 1),
        "questions_per_s": round(metrics["questions"] / result.seconds, 2),
        "tokens_read": tokens,
        "tokens_per_s": round(tokens / result.seconds, 1),
        "gflops": round(tokens * flops_per_token(model) / result.seconds / 1e9, 1),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if output is not None:
        cfg = load_run_config(None, (), model="smollm2-135m")
        results = multiple_choice_results(result, str(suite.path), cfg)
        (output / f"{name}.json").write_text(json.dumps(results, ensure_ascii=False) + "\n")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(CMMLU))
    parser.add_argument("--parts", default="check,fewshot,full")
    parser.add_argument("--full-limit", type=int, default=None, help="questions per subject")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="folder for each part's results JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output) if args.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    path = Path(args.suite)
    model, tokenizer = load_model(ModelConfig(model="smollm2-135m"))
    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    parts = args.parts.split(",")
    if "check" in parts:
        figures["check"] = run_check(model, tokenizer, path, args.batch_size)
        print("check (20 questions, 5-shot):", figures["check"], flush=True)
    if "fewshot" in parts:
        names = sorted(p.stem for p in (path / "test").glob("*.csv"))[:5]
        suite = read_suite(path, shots=5, subjects=names)
        figures["fewshot"] = run_suite(model, tokenizer, suite, args.batch_size, output, "fewshot")
        print("5-shot, 5 subjects:", figures["fewshot"], flush=True)
    if "full" in parts:
        suite = read_suite(path, limit=args.full_limit)
        full = run_suite(model, tokenizer, suite, args.batch_size, output, "full")
        if args.full_limit is not None:
            whole = tokens_read(tokenizer, read_suite(path))
            full["whole_split_tokens"] = whole
            full["whole_split_estimate_s"] = round(whole / full["tokens_per_s"], 1)
        figures["full"] = full
        print("0-shot, test split:", full, flush=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
