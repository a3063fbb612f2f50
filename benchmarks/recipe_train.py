"""The alpaca-lora recipe as one whole process, for comparing with `llamaforge train`.

    python benchmarks/recipe_train.py RECORDS.json [--steps N] [--epochs 1] [--model NAME]

Plain HF Trainer + peft LoRA (r=8, alpha 16, dropout 0.05 on q/v), alpaca-lora's per-example
`datasets.map` tokenization (`train_throughput.recipe_tokenize`, cutoff 256),
`DataCollatorForSeq2Seq(pad_to_multiple_of=8)`, the model's own loss; fp32 on the CPU, micro
batch 4, no accumulation, AdamW lr 2e-4 (cosine), records in the Trainer's shuffled order.
The model is read fp32 from the same place `llamaforge train` reads it (the GGUF cache).

The last line printed is one JSON object: the process's peak resident memory (ru_maxrss,
what `llamaforge train` writes as `peak_memory_bytes`), non-pad tokens trained per second
(as summary.json's `tokens_per_s`: tokens seen / training wall time), steps and final loss.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import MICRO_BATCH, recipe_tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path)
    parser.add_argument("--steps", type=int, default=-1, help="max steps (-1: --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from llamaforge.models import resolve_model
    from llamaforge.models.gguf_cache import cached_gguf_dir

    resolved = resolve_model(args.model)
    # the fp32 HF directory `llamaforge train` loads (the GGUF cache for a GGUF model)
    directory = resolved.path if resolved.gguf_path is None else cached_gguf_dir(resolved.gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="float32")
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    rows = json.loads(args.records.read_text(encoding="utf-8"))
    train = datasets.Dataset.from_list(recipe_tokenize(rows, tokenizer))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=MICRO_BATCH,
                num_train_epochs=args.epochs,
                max_steps=args.steps,
                learning_rate=2e-4,
                lr_scheduler_type="cosine",
                optim="adamw_torch",
                logging_steps=10,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                include_num_input_tokens_seen="non_padding",
                disable_tqdm=True,
            ),
            train_dataset=train,
            data_collator=DataCollatorForSeq2Seq(
                tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True
            ),
        )
        start = time.monotonic()
        result = trainer.train()
        wall = time.monotonic() - start
    print(
        json.dumps(
            {
                "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "tokens_per_s": round(trainer.state.num_input_tokens_seen / wall, 2),
                "global_step": trainer.state.global_step,
                "train_loss": round(result.training_loss, 4),
                "wall_time_s": round(wall, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
