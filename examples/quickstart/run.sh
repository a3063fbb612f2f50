#!/usr/bin/env bash
# The quickstart: the bundled model before, a LoRA fine-tune on CPU, the model after.
#   bash examples/quickstart/run.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${QUICKSTART_OUTPUT:-runs/quickstart}

echo "== 1. The bundled model answers a held-out prompt (before training)"
llamaforge generate --model smollm2-135m --temperature 0 --max-new-tokens 48 \
  --prompt "Which planet do we live on?"
python examples/quickstart/score.py --show 0

echo "== 2. Fine-tune with LoRA on examples/quickstart/train.json"
rm -rf "$out"
llamaforge train configs/quickstart.yaml output_dir="$out"

echo "== 3. The fine-tuned model (after training)"
llamaforge generate --model smollm2-135m --adapter "$out" --temperature 0 --max-new-tokens 48 \
  --prompt "Which planet do we live on?"
python examples/quickstart/score.py --adapter "$out" --show 0
