"""Benchmark: the Chinese recipe (configs/pipeline_zh.yaml) end to end, judged on held-out text.

    python benchmarks/zh_recipe.py --data ../shared/data/alpaca_chinese_carbonz0/alpaca_data_zh.json

Splits the Chinese Alpaca file: the last ``--held-out`` records never reach any stage (not the
vocabulary extension, not pretraining, not SFT); the pipeline runs on the rest, its data paths
replaced by the training split (every other setting as shipped, ``--pt-steps``/``--sft-steps``
aside). Then, on the held-out answers as raw text:

- loss per character (summed token NLL / characters, so tokenizers compare fairly) of the
  original model and of each stage's model;
- generation speed: each model continues the first characters of held-out answers greedily
  for the same number of new tokens, one prompt at a time (same settings for both);
  characters per second of the continuations, and their share of CJK characters.

The last line printed is one JSON object with the figures and the ratios (loss: final /
original, lower is better; speed: final / original).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def write_pipeline(
    train_file: Path, output_dir: Path, pt_steps: int | None, sft_steps: int | None
) -> Path:
    """configs/pipeline_zh.yaml with its data paths pointing at the training split."""
    pipeline = yaml.safe_load((ROOT / "configs" / "pipeline_zh.yaml").read_text(encoding="utf-8"))
    pipeline["output_dir"] = str(output_dir)
    for stage in pipeline["stages"]:
        step = stage.get("tokenizer_extend") or stage["train"]
        if "corpus" in step:
            step["corpus"] = [str(train_file)]
        if "dataset" in step:
            step["dataset"] = [str(train_file)]
        if stage["name"] == "pt" and pt_steps:
            step["max_steps"] = pt_steps
        if stage["name"] == "sft" and sft_steps:
            step["max_steps"] = sft_steps
    path = output_dir.parent / "pipeline_zh.yaml"
    path.write_text(yaml.safe_dump(pipeline, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@torch.no_grad()
def loss_per_char(model: Any, tokenizer: Any, texts: list[str]) -> float:
    """Summed NLL of every token of each text (after an EOS, as a document starts in
    pretraining blocks) divided by the texts' characters."""
    total, chars = 0.0, 0
    for text in texts:
        ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
        batch = torch.tensor([ids])
        out = model(input_ids=batch, labels=batch)
        total += out.loss.item() * (len(ids) - 1)  # the mean over the predicted tokens
        chars += len(text)
    return total / chars


@torch.no_grad()
def generation_speed(
    model: Any, tokenizer: Any, prompts: list[str], new_tokens: int
) -> dict[str, float]:
    chars = cjk = 0
    seconds = 0.0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        start = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        seconds += time.perf_counter() - start
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        chars += len(text)
        cjk += sum(map(_is_cjk, text))
    return {"chars_per_s": chars / seconds, "cjk_share": cjk / max(chars, 1), "chars": chars}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Chinese Alpaca JSON")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--pt-steps", type=int, default=None, help="override the pt stage's")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the sft stage's")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()

    from llamaforge.config.sections import ModelConfig
    from llamaforge.models import load_model
    from llamaforge.pipeline import run_pipeline

    records = json.loads(args.data.read_text(encoding="utf-8"))
    train, held = records[: -args.held_out], records[-args.held_out :]
    texts = [r["output"] for r in held if len(r["output"]) >= 20]
    work = args.work or Path(tempfile.mkdtemp(prefix="zh_recipe."))
    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.json"
    train_file.write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    pipeline = write_pipeline(train_file, work / "zh", args.pt_steps, args.sft_steps)

    start = time.perf_counter()
    output = run_pipeline(pipeline)
    pipeline_s = time.perf_counter() - start
    print(f"pipeline: {pipeline_s / 60:.1f} min ({output})", flush=True)

    prompts = [t[:12] for t in texts[: args.prompts]]
    models = {
        "original": "smollm2-135m",
        "extended": str(output / "extend"),
        "pt": str(output / "pt"),
        "sft": str(output / "sft"),
    }
    results: dict[str, dict[str, float]] = {}
    for name, spec in models.items():
        model, tokenizer = load_model(ModelConfig(model=spec, dtype="float32"))
        model.eval()
        results[name] = {"loss_per_char": loss_per_char(model, tokenizer, texts)}
        if name in ("original", "sft"):
            results[name].update(generation_speed(model, tokenizer, prompts, args.new_tokens))
        print(name, json.dumps(results[name]), flush=True)
        del model
    summary = {
        "pipeline_minutes": round(pipeline_s / 60, 2),
        "held_out_texts": len(texts),
        "results": results,
        "loss_ratio_sft": results["sft"]["loss_per_char"] / results["original"]["loss_per_char"],
        "loss_ratio_pt": results["pt"]["loss_per_char"] / results["original"]["loss_per_char"],
        "speed_ratio": results["sft"]["chars_per_s"] / results["original"]["chars_per_s"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
