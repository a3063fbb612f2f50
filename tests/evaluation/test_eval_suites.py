"""Suite folders in the three CSV layouts, the prompts built from them, and bad input:
one line naming the file and row, exit 2, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import SUITE_EN, SUITE_ZH

from llamaforge.cli import main
from llamaforge.evaluation.prompts import PROMPT_STYLES, prompt_style, question_text, subject_prefix
from llamaforge.evaluation.suites import read_suite


def write_suite(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_headerless_mmlu_layout_and_its_prompt() -> None:
    suite = read_suite(SUITE_EN, shots=2)
    assert suite.layout == "mmlu" and not suite.chinese
    assert [s.name for s in suite.subjects] == [
        "basic_science",
        "elementary_mathematics",
        "world_geography",
    ]
    maths = suite.subjects[1]
    assert len(maths.questions) == 8 and len(maths.shots) == 2
    nxt = maths.questions[6]
    assert nxt.question == "What is the next number: 2, 4, 8, 16, ...?"  # a quoted comma
    assert (nxt.id, nxt.answer, nxt.choices[3]) == ("6", "D", "32")
    style = PROMPT_STYLES[prompt_style("auto", suite)]
    text = subject_prefix(maths, style, suite.subject_names) + question_text(nxt, style)
    assert text == (
        "The following are multiple choice questions (with answers) about elementary "
        "mathematics.\n\n"
        "What is 7 + 5?\nA. 10\nB. 11\nC. 12\nD. 13\nAnswer: C\n\n"
        "What is 9 x 3?\nA. 27\nB. 24\nC. 21\nD. 30\nAnswer: A\n\n"
        "What is the next number: 2, 4, 8, 16, ...?\nA. 18\nB. 24\nC. 30\nD. 32\nAnswer:"
    )


def test_cmmlu_layout_subject_names_and_limit() -> None:
    suite = read_suite(SUITE_ZH, subjects=["chinese_geography", "chinese_food_culture"], limit=3)
    assert suite.layout == "cmmlu" and suite.chinese
    assert prompt_style("auto", suite) == "cmmlu"
    assert [(s.name, len(s.questions), len(s.shots)) for s in suite.subjects] == [
        ("chinese_geography", 3, 0),
        ("chinese_food_culture", 3, 0),
    ]
    style = PROMPT_STYLES["cmmlu"]
    geo, food = suite.subjects
    # subjects.json names chinese_geography; chinese_food_culture is in CMMLU's own table
    assert subject_prefix(geo, style, suite.subject_names).startswith("以下是关于中国地理的单项")
    assert subject_prefix(food, style, suite.subject_names) == (
        "以下是关于中国饮食文化的单项选择题，请直接给出正确答案的选项。\n\n"
    )
    assert question_text(geo.questions[0], style) == (
        "中国最高的山峰是什么？\nA. 泰山\nB. 黄山\nC. 珠穆朗玛峰\nD. 华山\n答案："
    )


def test_ceval_layout_with_ids_and_explanations(tmp_path) -> None:
    header = "id,question,A,B,C,D,answer,explanation\n"
    suite_dir = write_suite(
        tmp_path,
        {
            "val/accountant_val.csv": header
            + "17, 会计的基本职能是什么？ ,核算和监督,预测,决策,评价,A,解析\n",
            "dev/accountant_dev.csv": header + "0,例题？,甲,乙,丙,丁,B,因为\n",
        },
    )
    suite = read_suite(suite_dir, "val", shots=1)
    assert suite.layout == "ceval" and prompt_style("auto", suite) == "ceval"
    (subject,) = suite.subjects
    assert subject.name == "accountant" and subject.questions[0].id == "17"
    style = PROMPT_STYLES["ceval"]
    assert subject_prefix(subject, style, {}) + question_text(subject.questions[0], style) == (
        "以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n"
        "例题？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： B\n\n"
        "会计的基本职能是什么？\nA. 核算和监督\nB. 预测\nC. 决策\nD. 评价\n答案："
    )


def eval_error(capsys, *args: str) -> str:
    """Run `llamaforge eval` expecting a user error: exit 2 and exactly one stderr line."""
    code = main(["eval", "--model", "no-such-model-is-loaded", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


HEADER = ",Question,A,B,C,D,Answer\n"


@pytest.mark.parametrize(
    ("files", "where", "what"),
    [
        (
            {"test/law.csv": ",Question,A,B,C,D\n0,问？,甲,乙,丙,丁\n"},
            "test/law.csv:1",
            "no 'answer' column",
        ),
        (
            {"test/law.csv": HEADER + "0,问一？,甲,乙,丙,丁,A\n1,问二？,甲,乙,丙,丁,E\n"},
            "test/law.csv:3",
            "answer 'E' is not one of A, B, C, D",
        ),
        ({"test/law.csv": ""}, "test/law.csv", "file is empty"),
        ({"test/law.csv": HEADER}, "test/law.csv", "has a header but no questions"),
        (
            {"test/law_test.csv": "Question one?,1,2,3\n"},
            "test/law_test.csv:1",
            "6 (question,A,B,C,D,answer)",
        ),
        (
            {"test/law.csv": HEADER + '0,"问,一？",甲,乙\n'},
            "test/law.csv:2",
            "row has 4 fields where 7 are expected",
        ),
        (
            {"test/law.csv": HEADER + "0,问？,甲,乙,丙,丁,A\n", "dev/other.csv": HEADER},
            "dev",
            "no law.csv for the 1-shot examples",
        ),
    ],
)
def test_bad_suite_files_name_the_file_and_row(capsys, tmp_path, files, where, what) -> None:
    write_suite(tmp_path, files)
    line = eval_error(capsys, "--suite", str(tmp_path), "--shots", "1")
    assert line.startswith(f"error: {tmp_path / where}"), line
    assert what in line, line


def test_unknown_suite_and_bad_flags(capsys, tmp_path) -> None:
    line = eval_error(capsys, "--suite", "mmlu-from-the-hub")
    assert "unknown suite 'mmlu-from-the-hub'" in line and "dev/ and test/" in line
    assert "--data" in eval_error(capsys, "--suite", "ppl")
    assert "--shots: must be at least 0" in eval_error(
        capsys, "--suite", str(SUITE_EN), "--shots", "-1"
    )
    line = eval_error(capsys, "--suite", str(SUITE_EN), "--subjects", "world_geografy")
    assert "did you mean 'world_geography'" in line
    line = eval_error(capsys, "--suite", str(SUITE_EN), "--shots", "6")
    assert "fewer than --shots 6" in line and "basic_science_dev.csv" in line
    line = eval_error(capsys, "--suite", str(SUITE_EN), "--split", "val")
    assert line.startswith(f"error: {SUITE_EN / 'val'}: no such folder")
    assert "unknown style 'harness'" in eval_error(
        capsys, "--suite", str(SUITE_EN), "--prompt-style", "harness"
    )
