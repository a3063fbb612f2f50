"""Write the arithmetic task: short word problems with one checkable whole-number answer.

A verifiable task for the online RL stages (``stage: grpo`` / ``rloo``, configs/grpo_arith.yaml):
each record is an Alpaca row whose ``instruction`` is a one- or two-step word problem (in
English or Chinese) and whose ``output`` is a worked answer ending with the final number
("The answer is 12." / "答案是 12。"). The ``exact_answer`` reward extracts the last
number of a completion (after an explicit "The answer is", "答案是" or "####" when there is
one) and compares it with the output's.

Difficulty: the operands stay small (sums of numbers up to 12, products of factors up
to 6, one two-step kind), every fourth problem is in Chinese and each prompt asks for the
final number. The bundled SmolLM2-135M-Instruct solves about a quarter of the English
problems greedily and hardly any Chinese one (it rambles, repeats the question, or writes
a right sum then a wrong "answer"): see ``benchmarks/grpo_arith.py --baseline-only`` for
the measured held-out accuracy. Small enough that sampled answers are often right, which a
group-relative reward needs; far from solved, so there is room to learn.

Deterministic: ``python examples/arith/make_data.py`` rewrites the same ``train.json``
(``--train`` problems) and ``held_out.json`` (``--held-out`` problems, never a training
question) next to this script.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent

NAMES_EN = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Max", "Zoe", "Jack", "Ella"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小芳", "小军", "小兰", "小强", "小雪"]
# (English plural, Chinese noun, Chinese measure word)
THINGS = [
    ("apples", "苹果", "个"),
    ("pencils", "铅笔", "支"),
    ("books", "书", "本"),
    ("marbles", "弹珠", "颗"),
    ("stickers", "贴纸", "张"),
    ("cookies", "饼干", "块"),
    ("balloons", "气球", "个"),
    ("stamps", "邮票", "张"),
    ("shells", "贝壳", "个"),
    ("cards", "卡片", "张"),
]
CONTAINERS = [("boxes", "盒子"), ("bags", "袋子"), ("baskets", "篮子"), ("dishes", "盘子")]
ASK_EN = " Give the final answer as a number."
ASK_ZH = "请给出最后的数字答案。"

Problem = tuple[str, str, int]  # (question, worked answer, final number)


def add(rng: random.Random, zh: bool) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    thing, noun, unit = rng.choice(THINGS)
    if zh:
        name = rng.choice(NAMES_ZH)
        return (
            f"{name}有{a}{unit}{noun}，又得到了{b}{unit}。{name}现在一共有多少{unit}{noun}？",
            f"{a} + {b} = {a + b}。答案是 {a + b}。",
            a + b,
        )
    name = rng.choice(NAMES_EN)
    return (
        f"{name} has {a} {thing}. {name} gets {b} more {thing}. "
        f"How many {thing} does {name} have now?",
        f"{a} + {b} = {a + b}. The answer is {a + b}.",
        a + b,
    )


def subtract(rng: random.Random, zh: bool) -> Problem:
    b, left = rng.randint(2, 9), rng.randint(1, 12)
    a = b + left
    thing, noun, unit = rng.choice(THINGS)
    if zh:
        name = rng.choice(NAMES_ZH)
        return (
            f"{name}有{a}{unit}{noun}，送给朋友{b}{unit}。{name}还剩多少{unit}{noun}？",
            f"{a} - {b} = {left}。答案是 {left}。",
            left,
        )
    name = rng.choice(NAMES_EN)
    return (
        f"{name} has {a} {thing} and gives {b} of them to a friend. "
        f"How many {thing} does {name} have left?",
        f"{a} - {b} = {left}. The answer is {left}.",
        left,
    )


def multiply(rng: random.Random, zh: bool) -> Problem:
    boxes, each = rng.randint(2, 6), rng.randint(2, 6)
    thing, noun, unit = rng.choice(THINGS)
    box, box_zh = rng.choice(CONTAINERS)
    if zh:
        name = rng.choice(NAMES_ZH)
        return (
            f"{name}有{boxes}个{box_zh}，每个{box_zh}里有{each}{unit}{noun}。"
            f"{name}一共有多少{unit}{noun}？",
            f"{boxes} × {each} = {boxes * each}。答案是 {boxes * each}。",
            boxes * each,
        )
    name = rng.choice(NAMES_EN)
    return (
        f"{name} has {boxes} {box} with {each} {thing} in each. How many {thing} does {name} have?",
        f"{boxes} × {each} = {boxes * each}. The answer is {boxes * each}.",
        boxes * each,
    )


def two_step(rng: random.Random, zh: bool) -> Problem:
    a, b = rng.randint(3, 10), rng.randint(2, 6)
    c = rng.randint(1, min(6, a + b - 1))
    total = a + b - c
    thing, noun, unit = rng.choice(THINGS)
    if zh:
        name = rng.choice(NAMES_ZH)
        return (
            f"{name}有{a}{unit}{noun}，买了{b}{unit}，又用掉了{c}{unit}。"
            f"{name}现在有多少{unit}{noun}？",
            f"{a} + {b} - {c} = {total}。答案是 {total}。",
            total,
        )
    name = rng.choice(NAMES_EN)
    return (
        f"{name} has {a} {thing}, buys {b} more and then loses {c}. "
        f"How many {thing} does {name} have now?",
        f"{a} + {b} - {c} = {total}. The answer is {total}.",
        total,
    )


KINDS: list[Callable[[random.Random, bool], Problem]] = [add, subtract, multiply, two_step]


def problems(seed: int, count: int, seen: set[str]) -> list[dict[str, str]]:
    """``count`` distinct problems not in ``seen`` (which they are added to): the kinds in
    turn, one in four in Chinese (each kind in turn)."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    while len(rows) < count:
        n = len(rows)
        zh = n % 4 == (n // 4) % 4
        question, answer, _ = KINDS[n % len(KINDS)](rng, zh)
        question += ASK_ZH if zh else ASK_EN
        if question in seen:
            continue
        seen.add(question)
        rows.append({"instruction": question, "input": "", "output": answer})
    return rows


def build(train: int, held_out: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    seen: set[str] = set()
    held = problems(seed=7, count=held_out, seen=seen)  # first: training never repeats one
    return problems(seed=1, count=train, seen=seen), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    train, held = build(args.train, args.held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.json", train), ("held_out.json", held)):
        (args.out / name).write_text(
            json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    print(f"wrote {len(train)} training and {len(held)} held-out problems to {args.out}")


if __name__ == "__main__":
    main()
