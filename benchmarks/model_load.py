"""Benchmark: first load of a GGUF model (empty cache) vs second load (cache hit).

    python benchmarks/model_load.py [--model smollm2-135m]

Each load runs in its own fresh Python process (imports counted, nothing shared in
memory) against a temporary, initially empty LLAMAFORGE_CACHE. The last line printed is
JSON: {"first_s": .., "second_s": .., "speedup": ..}. Exits 1 if the speedup is below 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# Runs in the child: load model + tokenizer exactly as `llamaforge generate` does.
CHILD = """
import sys
from llamaforge.config import ModelConfig
from llamaforge.models import load_model
model, tokenizer = load_model(ModelConfig(model=sys.argv[1]))
if model.num_parameters() == 0 or len(tokenizer) == 0:
    raise SystemExit("empty model or tokenizer")
"""


def timed_load(model: str, cache: str) -> float:
    env = {**os.environ, "LLAMAFORGE_CACHE": cache}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", CHILD, model], env=env, check=True, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a GGUF model spec")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamaforge-bench-") as cache:
        first = timed_load(args.model, cache)
        second = timed_load(args.model, cache)
    result = {"first_s": round(first, 2), "second_s": round(second, 2)}
    result["speedup"] = round(first / second, 2)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["speedup"] >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
