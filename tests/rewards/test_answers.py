"""Final answers of completions: explicit statements (English, Chinese, GSM8K, boxed) win
over the last number; option letters; numbers compared as values."""

from __future__ import annotations

import pytest

from llamaforge.rewards.answers import answers_match, final_letter, final_number, reference_answer


@pytest.mark.parametrize(
    "text, number",
    [
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("The answer is 12, not 13 as 5 + 8 suggests? No: 12", "12"),
        ("First 5, then 6 more: the answer is 11. Check: 11 - 6 = 5", "11"),
        ("#### 1,200", "1200"),
        ("Reasoning...\n#### -3", "-3"),
        ("\\boxed{42}", "42"),
        ("小明有5个，又买了3个，答案是 8。", "8"),
        ("所以答案为：１５。", "15"),  # full-width digits and colon
        ("答案：7个苹果", "7"),
        ("Tom has 9 apples now.", "9"),  # no statement: the last number
        ("It costs 2.50 dollars, so 2.5", "2.5"),
        ("12.0", "12"),
        ("no number at all", None),
    ],
)
def test_final_number(text: str, number: str | None) -> None:
    assert final_number(text) == number


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("答案是 D", "D"),
        ("I pick (a) first but (C) is right", "C"),
        ("B", "B"),
        ("(d).", "D"),
        ("I think the answer is a dog", None),  # lower-case words are no options
        ("Nothing here", None),
    ],
)
def test_final_letter(text: str, letter: str | None) -> None:
    assert final_letter(text) == letter


def test_the_reference_decides_what_is_compared() -> None:
    assert reference_answer("4 + 3 = 7. The answer is 7.") == ("number", "7")
    assert reference_answer("The answer is (B)") == ("letter", "B")
    assert reference_answer("C") == ("letter", "C")
    assert reference_answer("It has no answer") is None
    assert answers_match("So she has 7 apples.", "4 + 3 = 7. The answer is 7.")
    assert answers_match("The answer is 7.0", "7")
    assert not answers_match("The answer is 8. Earlier I said 7.", "The answer is 7.")
    assert answers_match("I choose (B)", "The answer is (B)")
    assert not answers_match("The answer is 2", "The answer is (B)")  # a number is no letter
    assert not answers_match("anything", "no reference answer")
    assert answers_match("5 + 3 = 8，答案是 8。", "5 + 3 = 8。答案是 8。")
