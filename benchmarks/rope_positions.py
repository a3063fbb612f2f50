"""Benchmark: perplexity by position on text longer than the model was trained on, with each
RoPE scaling type (``rope_scaling``) and without one.

    python benchmarks/rope_positions.py --data ../shared/data/llama_factory_demo/c4_demo.jsonl

Documents (JSONL ``text`` records or a .txt file) are joined with EOS, as pretraining blocks
are, into windows of ``--factor`` × the model's trained context (``max_position_embeddings``,
8,192 for the bundled model). Each window is scored in one forward pass, the model loaded
through llamaforge with each ``rope_scaling`` (none, linear, dynamic, yarn, llama3, all with
``factor``); the loss is gathered by position into buckets of ``--bucket`` tokens. Printed:
the perplexity of every bucket for each setting, each setting's perplexity past the trained
context, and the reference it is judged against: the same tokens (each window's last
trained-context tokens) scored unscaled as a window of their own, inside the trained
context. ``--plot`` draws the curves. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "linear": {"rope_type": "linear"},
    "dynamic": {"rope_type": "dynamic"},
    "yarn": {"rope_type": "yarn"},
    "llama3": {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


def read_documents(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    return [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]


def windows(documents: list[str], tokenizer: Any, length: int, count: int) -> list[list[int]]:
    """``count`` windows of ``length`` token ids: documents joined with EOS, in order."""
    ids: list[int] = []
    result = []
    for text in documents:
        ids += [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        while len(ids) >= length and len(result) < count:
            result.append(ids[:length])
            ids = ids[length:]
        if len(result) == count:
            return result
    raise SystemExit(f"the data holds {len(result)} windows of {length} tokens, not {count}")


@torch.no_grad()
def token_losses(model: Any, window: list[int], chunk: int = 1024) -> torch.Tensor:
    """NLL of each token after the first, the LM head applied ``chunk`` positions at a time
    (full-vocabulary logits for 16k positions would take GBs)."""
    ids = torch.tensor([window])
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
    head = model.get_output_embeddings()
    losses = []
    for start in range(0, len(window) - 1, chunk):
        logits = head(hidden[start : min(start + chunk, len(window) - 1)]).float()
        targets = ids[0, start + 1 : start + 1 + logits.shape[0]]
        losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    return torch.cat(losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--bucket", type=int, default=1024)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--plot", type=Path, default=None, help="write the curves to this PNG")
    args = parser.parse_args(argv)
    if "none" not in args.settings:
        parser.error("--settings needs 'none': it also scores the in-context reference")

    from llamaforge.config.sections import ModelConfig
    from llamaforge.models import load_model

    torch.manual_seed(0)
    curves: dict[str, list[float]] = {}
    texts: list[list[int]] = []
    trained = length = 0
    in_context = math.nan
    for name in args.settings:
        scaling = SETTINGS[name]
        rope = None if scaling is None else {**scaling, "factor": args.factor}
        model, tokenizer = load_model(
            ModelConfig(model=args.model, dtype="float32", rope_scaling=rope)
        )
        if not texts:
            trained = model.config.max_position_embeddings
            length = int(trained * args.factor)
            texts = windows(read_documents(args.data), tokenizer, length, args.windows)
        start = time.monotonic()
        losses = torch.stack([token_losses(model, w) for w in texts]).mean(0)  # [length-1]
        buckets = losses.split(args.bucket)
        curves[name] = [math.exp(float(b.mean())) for b in buckets]
        # loss i predicts token i + 1: from here on, tokens trained + 1 ... past the context
        past = math.exp(float(losses[trained:].mean()))
        if scaling is None:  # the same tokens, inside the trained context: a window of their own
            tails = torch.stack([token_losses(model, w[-trained:]) for w in texts]).mean(0)
            in_context = math.exp(float(tails.mean()))
        print(f"{name:8s} past {trained}: ppl {past:9.2f}  ({time.monotonic() - start:.0f} s)")
        del model

    print(f"\nperplexity by position (buckets of {args.bucket} tokens; trained context {trained})")
    print("position  " + "".join(f"{n:>10s}" for n in curves))
    for i in range(len(next(iter(curves.values())))):
        print(f"{i * args.bucket:>8d}  " + "".join(f"{c[i]:10.2f}" for c in curves.values()))
    past_context = {
        name: _mean_ppl(curve[trained // args.bucket :]) for name, curve in curves.items()
    }
    best = min((n for n in past_context if n != "none"), key=past_context.get, default="none")
    if args.plot:
        _plot(curves, args.bucket, trained, args.plot)
        print(f"plot written to {args.plot}")
    print(
        json.dumps(
            {
                "model": args.model,
                "trained_context": trained,
                "window_tokens": length,
                "windows": args.windows,
                "same_tokens_in_context_ppl": round(in_context, 3),
                "past_context_ppl": {k: round(v, 3) for k, v in past_context.items()},
                "best": best,
                "best_vs_in_context": round(past_context[best] / in_context, 3),
                "by_position": {k: [round(x, 3) for x in v] for k, v in curves.items()},
            }
        )
    )
    return 0


def _mean_ppl(perplexities: list[float]) -> float:
    """Perplexity over equal-sized buckets: exp of the mean of their mean losses."""
    return math.exp(sum(math.log(p) for p in perplexities) / len(perplexities))


def _plot(curves: dict[str, list[float]], bucket: int, trained: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, curve in curves.items():
        ax.plot([(i + 0.5) * bucket for i in range(len(curve))], curve, marker=".", label=name)
    ax.axvline(trained, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel(f"perplexity (mean over {bucket}-token buckets)")
    ax.set_title("perplexity by position, trained context marked")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
