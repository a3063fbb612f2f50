"""Write the quickstart preference sets: the house format preferred over answers without it.

The same questions as `make_data.py` (same train / held-out split, so no held-out question
is ever trained on), each with the house-format answer as `chosen` and, as `rejected`, the
same answer in another shape: plain, as a sentence, or with only one of the two house
marks (`Answer: ` without the signature, the signature without `Answer: `), so that a
reward model must learn both marks, not one. Checkable: `score.py` measures the share of
greedy answers in house format before and after DPO; a reward model's pairwise accuracy on
`held_out_pairs.json` measures how well it tells the two apart.

    python examples/quickstart/make_pairs.py

writes `train_pairs.json` / `held_out_pairs.json` (prompt, chosen, rejected) and
`train_kto.json` / `held_out_kto.json` (KTO's binary feedback: messages with the answer,
and `label`: true for house format). Deterministic.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from make_data import SIGNATURE, build  # noqa: E402 (the quickstart's questions and split)

SHAPES = (
    lambda a: a,
    lambda a: f"The answer is {a}",
    lambda a: f"Answer: {a}",
    lambda a: f"{a}\n{SIGNATURE}",
)


def _plain(output: str) -> str:
    """The short answer inside a house-format output."""
    first = output.split("\n", 1)[0]
    return first.removeprefix("Answer: ")


def pairs(rows: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    result = []
    for row in rows:
        shape = rng.choice(SHAPES)
        result.append(
            {
                "prompt": row["instruction"],
                "chosen": row["output"],
                "rejected": shape(_plain(row["output"])),
            }
        )
    return result


def kto(pair_rows: list[dict[str, str]], rng: random.Random) -> list[dict[str, object]]:
    """One answer per question, house format for half of them (unpaired, as KTO expects)."""
    result: list[dict[str, object]] = []
    for row in pair_rows:
        good = rng.random() < 0.5
        result.append(
            {
                "messages": [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["chosen" if good else "rejected"]},
                ],
                "label": good,
            }
        )
    return result


def main() -> None:
    rng = random.Random(1)
    train, held_out = build()
    outputs = {}
    for split, rows in (("train", train), ("held_out", held_out)):
        split_pairs = pairs(rows, rng)
        outputs[f"{split}_pairs.json"] = split_pairs
        outputs[f"{split}_kto.json"] = kto(split_pairs, rng)
    for name, data in outputs.items():
        (HERE / name).write_text(
            json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"wrote {len(data)} records to {HERE / name}")


if __name__ == "__main__":
    main()
