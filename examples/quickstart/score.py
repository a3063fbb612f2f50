"""Score the quickstart behaviour on held-out prompts: the share of answers in house format.

    python examples/quickstart/score.py                         # the bundled model alone
    python examples/quickstart/score.py --adapter runs/quickstart

An answer scores when it is exactly two lines: `Answer: <something>` then `-- llamaforge`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from llamaforge.config import load_run_config
from llamaforge.data.formats import Message
from llamaforge.inference.engine import GenerationEngine

HERE = Path(__file__).parent
HOUSE_FORMAT = re.compile(r"Answer: [^\n]+\n-- llamaforge")


def follows_format(text: str) -> bool:
    return HOUSE_FORMAT.fullmatch(text.strip()) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--data", default=str(HERE / "held_out.json"))
    parser.add_argument("--show", type=int, default=1, help="print this many example answers")
    args = parser.parse_args(argv)

    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))
    cfg = load_run_config(
        None, model=args.model, adapter=args.adapter, temperature=0.0, max_new_tokens=32
    )
    engine = GenerationEngine.from_config(cfg)
    prompts = [[Message("user", row["instruction"])] for row in rows]
    answers = [r.text for r in engine.generate(prompts, cfg.generation)]
    for row, text in list(zip(rows, answers, strict=True))[: args.show]:
        print(f"Q: {row['instruction']}\nA: {text}\n")
    score = sum(follows_format(a) for a in answers) / len(answers)
    label = "base model" if args.adapter is None else args.adapter
    print(f"behaviour score ({label}): {100 * score:.1f} % of {len(answers)} held-out prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
