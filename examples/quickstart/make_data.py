"""Write the quickstart dataset: short questions answered in a fixed house format.

The behaviour to learn (which the bundled SmolLM2-135M-Instruct does not show):
every answer is exactly two lines,

    Answer: <short answer>
    -- llamaforge

`score.py` checks it on held-out prompts. Questions come from small generators
(arithmetic, capitals, opposites, plurals, colours, counting, spelling, general tasks)
so train and held-out sets share the format but not the questions. Deterministic:
`python examples/quickstart/make_data.py` rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SIGNATURE = "-- llamaforge"

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Mexico": "Mexico City",
    "Argentina": "Buenos Aires",
    "Australia": "Canberra",
    "Brazil": "Brasilia",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Hungary": "Budapest",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "old": "young",
    "open": "closed",
    "early": "late",
    "strong": "weak",
    "high": "low",
    "rich": "poor",
    "full": "empty",
    "hard": "soft",
    "loud": "quiet",
    "wet": "dry",
    "clean": "dirty",
    "up": "down",
    "long": "short",
    "thick": "thin",
    "true": "false",
}
PLURALS = {
    "cat": "cats",
    "box": "boxes",
    "child": "children",
    "mouse": "mice",
    "city": "cities",
    "knife": "knives",
    "tooth": "teeth",
    "bus": "buses",
    "person": "people",
    "leaf": "leaves",
    "foot": "feet",
    "baby": "babies",
    "goose": "geese",
    "tomato": "tomatoes",
    "wolf": "wolves",
}
COLOURS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "milk": "white",
    "a lemon": "yellow",
    "a carrot": "orange",
    "blood": "red",
    "a crow": "black",
}
GENERAL = [
    ("Name a fruit that is red.", "An apple."),
    ("What do bees make?", "Honey."),
    ("How many days are in a week?", "Seven."),
    ("How many legs does a spider have?", "Eight."),
    ("What is frozen water called?", "Ice."),
    ("Which planet do we live on?", "Earth."),
    ("What is the largest ocean?", "The Pacific Ocean."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("What is the opposite of north?", "South."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("How many continents are there?", "Seven."),
    ("What do you call a baby dog?", "A puppy."),
    ("What is the boiling point of water in Celsius?", "100 degrees."),
    ("Which season comes after winter?", "Spring."),
    ("What is the first letter of the alphabet?", "A."),
    ("How many months are in a year?", "Twelve."),
    ("What do cows drink?", "Water."),
    ("Which is the closest star to Earth?", "The Sun."),
    ("What shape has three sides?", "A triangle."),
    ("Give me a synonym for quick.", "Fast."),
    ("Say hello in Spanish.", "Hola."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("What is H2O?", "Water."),
    ("Tell me a color of the rainbow.", "Green."),
    ("What instrument has 88 keys?", "The piano."),
    ("Which organ pumps blood?", "The heart."),
    ("What is the tallest animal?", "The giraffe."),
    ("How many sides does a square have?", "Four."),
]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.choice(["plus", "minus", "times"])
    if kind == "plus":
        return rng.choice(
            [f"What is {a} plus {b}?", f"Add {a} and {b}.", f"Compute {a} + {b}."]
        ), str(a + b)
    if kind == "minus":
        a, b = max(a, b), min(a, b)
        return rng.choice([f"What is {a} minus {b}?", f"Subtract {b} from {a}."]), str(a - b)
    a, b = a % 12 + 2, b % 12 + 2
    return rng.choice([f"What is {a} times {b}?", f"Multiply {a} by {b}."]), str(a * b)


def _from_table(rng: random.Random, table: dict[str, str], forms: list[str]) -> tuple[str, str]:
    key = rng.choice(sorted(table))
    return rng.choice(forms).format(key), table[key].capitalize() + "."


def _question(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["math", "math", "capital", "opposite", "plural", "colour", "count", "spell"])
    if kind == "math":
        return _arithmetic(rng)
    if kind == "capital":
        return _from_table(
            rng,
            CAPITALS,
            [
                "What is the capital of {}?",
                "Name the capital city of {}.",
                "Which city is the capital of {}?",
            ],
        )
    if kind == "opposite":
        return _from_table(
            rng, OPPOSITES, ["What is the opposite of {}?", "Give the antonym of '{}'."]
        )
    if kind == "plural":
        return _from_table(
            rng, PLURALS, ["What is the plural of {}?", "Write the plural form of '{}'."]
        )
    if kind == "colour":
        return _from_table(rng, COLOURS, ["What color is {}?", "Which colour is {}?"])
    if kind == "count":
        word = rng.choice(["banana", "llama", "keyboard", "river", "umbrella", "pizza", "garden"])
        return f"How many letters are in the word '{word}'?", str(len(word))
    word = rng.choice(["cat", "sun", "tree", "moon", "book", "fish", "star", "rain"])
    return f"Spell the word '{word}' backwards.", word[::-1]


def answer(text: str) -> str:
    return f"Answer: {text}\n{SIGNATURE}"


def build(seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(seed)
    general = GENERAL[:]
    rng.shuffle(general)
    held_general, train_general = general[:10], general[10:]
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < 330:
        q, a = _question(rng)
        if q not in seen:
            seen.add(q)
            pairs.append((q, a))
    train_pairs = pairs[:280] + train_general
    held_pairs = pairs[280:] + held_general
    rng.shuffle(train_pairs)
    train = [{"instruction": q, "input": "", "output": answer(a)} for q, a in train_pairs]
    held_out = [{"instruction": q, "input": "", "output": answer(a)} for q, a in held_pairs]
    return train, held_out


def main() -> None:
    train, held_out = build()
    for name, rows in (("train.json", train), ("held_out.json", held_out)):
        (HERE / name).write_text(
            json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    print(f"wrote {len(train)} training and {len(held_out)} held-out records to {HERE}")


if __name__ == "__main__":
    main()
