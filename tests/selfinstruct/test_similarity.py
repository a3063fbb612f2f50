"""ROUGE-L de-duplication: rouge-score's numbers, Chinese segmented, fast on a large pool."""

from __future__ import annotations

import random
import time

from rouge_score import rouge_scorer
from selfinstruct_helpers import SegmentedTokenizer

from llamaforge.selfinstruct.filters import Pool
from llamaforge.selfinstruct.similarity import SimilarityIndex, rouge_l, rouge_tokens

PAIRS = [
    ("Give three tips for staying healthy.", "Give three tips to stay healthy today."),
    ("Translate the sentence into French.", "Translate this sentence into French, please."),
    ("Name a primary color.", "What is the capital of France?"),
    ("The cat sat on the mat.", "On the mat the cat sat."),
    ("Is 91 prime?", "Is 91 a prime number or not?"),
]


def test_rouge_l_is_rouge_scores_f_measure_on_the_segmented_words():
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=SegmentedTokenizer())
    for a, b in PAIRS:
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert abs(rouge_l(rouge_tokens(a), rouge_tokens(b)) - expected) < 1e-12, (a, b)
    # on ASCII text our words are rouge-score's own default ones
    default = rouge_scorer.RougeScorer(["rougeL"])
    for a, b in PAIRS:
        assert (
            abs(rouge_l(rouge_tokens(a), rouge_tokens(b)) - default.score(a, b)["rougeL"].fmeasure)
            < 1e-12
        )


def test_a_paraphrased_chinese_instruction_is_dropped_though_rouge_score_lets_it_through():
    original = "请写一首关于春天的短诗。"
    paraphrase = "请你写一首关于春天的诗。"
    default = rouge_scorer.RougeScorer(["rougeL"]).score(original, paraphrase)["rougeL"]
    assert default.fmeasure == 0.0  # no tokens at all: every pair of Chinese texts scores 0

    pool = Pool(threshold=0.7)
    pool.add(original)
    pool.add("把下面的句子翻译成英文。")
    found = pool.problem(paraphrase)
    assert found is not None and found[0] == "similar"
    assert found[1] is not None and found[1].text == original and found[1].score > 0.7
    assert pool.problem("列出三种常见的水果，并说明它们的营养价值。") is None

    pool.withdraw(original)  # a pending instruction that was not kept frees its place
    assert pool.problem(paraphrase) is None


def random_sentence(rng: random.Random, vocabulary: list[str]) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 12))) + "."


def test_the_index_finds_exactly_the_entries_a_full_scan_finds():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(25)]  # small: many pairs are similar
    texts = [random_sentence(rng, vocabulary) for _ in range(300)]
    index = SimilarityIndex(threshold=0.5)
    tokens = []
    for text in texts:
        index.add(text)
        tokens.append(rouge_tokens(text))
    for entry in range(0, 300, 7):
        index.withdraw(entry)
    alive = [e for e in range(300) if e % 7]
    hits = 0
    for _ in range(150):
        query = random_sentence(rng, vocabulary)
        q = rouge_tokens(query)
        expected = [e for e in alive if rouge_l(q, tokens[e]) > 0.5]
        match = index.find_similar(query)
        assert (match is not None) == bool(expected)
        if match is not None:
            hits += 1
            assert match.entry in expected and match.score == rouge_l(q, tokens[match.entry])
    assert 15 < hits < 135  # both outcomes are exercised


def test_checking_against_twenty_thousand_instructions_is_fast():
    rng = random.Random(1)
    vocabulary = [f"word{i}" for i in range(3000)] + ["the", "a", "of", "to", "and"] * 40
    index = SimilarityIndex(threshold=0.7)
    texts = [random_sentence(rng, vocabulary) for _ in range(20_000)]
    for text in texts:
        index.add(text)
    queries = [random_sentence(rng, vocabulary) for _ in range(200)] + texts[:50]
    start = time.perf_counter()
    found = [index.find_similar(q) for q in queries]
    per_query = (time.perf_counter() - start) / len(queries)
    assert all(match is not None for match in found[200:])  # the pool's own texts
    assert per_query < 0.02, f"{per_query * 1000:.1f} ms per query"
