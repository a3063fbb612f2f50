"""Benchmark: `llamaforge tokenizer extend` on Chinese Alpaca data, tokens per character on
held-out records for several N, and the time each extension takes.

    python benchmarks/vocab_extend.py --data ../shared/data/alpaca_chinese_carbonz0/alpaca_data_zh.json \
        [--model smollm2-135m] [--add 2000 5000 10000] [--heldout 1750]

The last ``--heldout`` records of the Alpaca file are held out (the extension never sees
them); the others are the corpus. Each N is one full `extend_model` run (load, learn, resize,
write, verify from disk) into a temporary directory. One JSON line per N: tokens/char
before and after on corpus and held-out text, the change, the learning time, wall and CPU
seconds of the whole run. Exits 1 if some N >= 2000 cuts held-out tokens/char by < 40 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llamaforge.export.extend import extend_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an Alpaca JSON file (Chinese)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--add", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--heldout", type=int, default=1750, help="records held out (last)")
    args = parser.parse_args()
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    ok = True
    with tempfile.TemporaryDirectory(prefix="llamaforge-vocab-") as tmp:
        corpus, heldout = Path(tmp) / "corpus.json", Path(tmp) / "heldout.json"
        corpus.write_text(json.dumps(records[: -args.heldout], ensure_ascii=False), "utf-8")
        heldout.write_text(json.dumps(records[-args.heldout :], ensure_ascii=False), "utf-8")
        for add in args.add:
            wall, cpu = time.perf_counter(), time.process_time()
            output = Path(tmp) / f"out-{add}"
            report = extend_model(args.model, [corpus], add, output, heldout=[heldout])
            shutil.rmtree(output)  # ~0.5 GB each for the bundled model
            result: dict[str, object] = {"add": report.added}
            for name, (before, after) in report.tokens_per_char.items():
                result[name] = {
                    "before": round(before, 4),
                    "after": round(after, 4),
                    "change": round(after / before - 1, 4),
                }
            change = report.tokens_per_char["held-out"][1] / report.tokens_per_char["held-out"][0]
            ok &= add < 2000 or change <= 0.6
            result.update(
                learn_s=round(report.learn_seconds, 1),
                wall_s=round(time.perf_counter() - wall, 1),
                cpu_s=round(time.process_time() - cpu, 1),
            )
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
