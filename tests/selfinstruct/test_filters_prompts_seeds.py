"""Filters (one example per reason), the prompt files, answer readers and seed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge.errors import ConfigError, DataError
from llamaforge.selfinstruct.filters import (
    REASONS,
    Limits,
    Pool,
    in_language,
    instance_problem,
    instruction_problem,
)
from llamaforge.selfinstruct.prompts import (
    load_prompts,
    parse_instance,
    parse_instructions,
    parse_is_classification,
)
from llamaforge.selfinstruct.seeds import read_seed_tasks, shipped_seed_path

SHARED_SEEDS = Path(__file__).resolve().parents[3] / "shared" / "data" / "self_instruct"

INSTRUCTIONS = [
    ("en", "Name birds.", "too_short"),
    ("en", "Describe " + "very " * 150 + "much.", "too_long"),
    ("en", "Draw a cat sitting on a chair.", "blacklisted"),
    ("en", "Make a plot of sales per month.", "blacklisted"),
    ("en", "Tell me how to go to the station.", "blacklisted"),
    ("en", "Open the attached files and count the words.", "blacklisted"),
    ("en", '"Quote" the text back to me, please.', "starts_with_punctuation"),
    ("en", "Write a program that sorts a list of numbers.", "write_a_program"),
    ("en", "请写一首关于春天的诗。", "wrong_language"),
    ("en", "Deselegamos de respirare el cielo a la lluvias.", "wrong_language"),
    ("en", "True de prueba la estructura del texto.", "wrong_language"),
    ("zh", "Write a poem about spring in three lines.", "wrong_language"),
    ("zh", "请画一只猫。", "blacklisted"),
    ("zh", "编写一个程序计算两个数的和。", "write_a_program"),
    ("zh", "《静夜思》的作者是谁？", "starts_with_punctuation"),
    ("zh", "你好", "too_short"),
]


@pytest.mark.parametrize(("lang", "text", "reason"), INSTRUCTIONS)
def test_each_instruction_filter_names_its_reason(lang, text, reason):
    assert reason in REASONS
    assert instruction_problem(text, lang, Limits()) == reason


def test_clean_instructions_pass_and_blacklisted_words_match_whole_words():
    for text in [
        "Fill in your profile in two sentences.",
        "Give three tips for sleeping well.",
        "Summarize quantum physics basics briefly.",  # short: no common word needed
        "Suggest names for a new bakery selling only bread.",
    ]:
        assert instruction_problem(text, "en", Limits()) is None
    assert (
        instruction_problem("用三句话介绍你的家乡，并说明你最喜欢它的什么地方。", "zh", Limits())
        is None
    )
    assert instruction_problem("Name three birds.", "en", Limits(min_words=4)) == "too_short"
    for lang in ("en", "zh"):  # the shipped seeds are what a kept instruction looks like
        for task in read_seed_tasks(shipped_seed_path(lang)):
            assert instruction_problem(task.instruction, lang, Limits()) is None, task
            first = task.instances[0]
            assert instance_problem(first.input, first.output, lang) is None, task


def test_instance_filters():
    assert instance_problem("abc", "", "en") == "empty_output"
    assert instance_problem("", "  ", "en") == "empty_output"
    assert instance_problem("Paris", " Paris ", "en") == "input_equals_output"
    assert instance_problem("", "这是中文。", "en") == "output_wrong_language"
    assert instance_problem("", "The answer is 4.", "zh") == "output_wrong_language"
    assert instance_problem("2 + 2", "4", "zh") is None  # no letters: any language
    assert in_language("Translate 你好 into English.", "en")
    assert in_language("用 Python 写一个排序的例子。", "zh")


def test_the_pool_catches_exact_and_near_duplicates_before_rouge():
    pool = Pool(threshold=0.7)
    pool.add("Give three tips for staying healthy.")
    assert pool.problem(" Give three tips for staying healthy.") == ("exact_duplicate", None)
    assert pool.problem("give three TIPS for staying healthy!") == ("near_duplicate", None)
    assert pool.problem("Give three tips for staying healthy at work.")[0] == "similar"
    assert pool.problem("Explain how rainbows form.") is None


def test_shipped_prompts_render_and_an_edited_prompt_replaces_one(tmp_path):
    seeds = read_seed_tasks(shipped_seed_path("en"))
    prompts = load_prompts("en")
    text = prompts.brainstorm(["First task.", "Second task."], 5)
    assert "1. First task.\n2. Second task." in text and "Number them 1 to 5" in text
    classification = next(s for s in seeds if s.is_classification)
    text = prompts.instance_output_first("Is it sunny?", classification)
    first = classification.instances[0]
    assert f"Class label: {first.output}\nInput: {first.input}" in text
    assert text.endswith("Task: Is it sunny?\n")
    assert prompts.instance_input_first("Name a bird.").endswith("Task: Name a bird.\n")
    zh_seeds = read_seed_tasks(shipped_seed_path("zh"))
    zh = load_prompts("zh").instance_output_first("判断天气。", zh_seeds[1])
    assert "类别：正面\n输入：快递很快" in zh and zh.endswith("任务：判断天气。\n")

    (tmp_path / "classify.txt").write_text("Classification? $instruction (costs $$0)")
    edited = load_prompts("en", tmp_path)
    assert edited.classify("X") == "Classification? X (costs $0)"
    assert edited.sources["brainstorm"] == prompts.sources["brainstorm"]
    assert edited.fingerprint() != prompts.fingerprint()

    (tmp_path / "brainstorm.txt").write_text("New tasks like $tasks and $topic")
    with pytest.raises(ConfigError, match=r"brainstorm.txt: unknown placeholder\(s\) \$topic"):
        load_prompts("en", tmp_path)
    (tmp_path / "brainstorm.txt").write_text("New tasks like $tasks")
    with pytest.raises(ConfigError, match=r"brainstorm.txt: missing placeholder\(s\) \$count"):
        load_prompts("en", tmp_path)


def test_answers_are_read_in_either_language():
    answer = "Sure! Here they are:\n1. Write a haiku.\n2) **Task:** Name three birds.\n- Explain tides\n9."
    assert parse_instructions(answer, 8) == ["Write a haiku.", "Name three birds.", "Explain tides"]
    assert parse_instructions(answer, 2) == ["Write a haiku.", "Name three birds."]
    assert parse_instructions("Explain how tides work.", 8) == ["Explain how tides work."]
    assert parse_instructions("I cannot.\nSorry.", 8) == []
    assert parse_instructions("1. 1. Name a color.\n2. 2) Name a bird.", 8) == [
        "Name a color.",
        "Name a bird.",
    ]
    assert parse_instructions("1、介绍长城。\n2．写一句祝福语。", 8) == [
        "介绍长城。",
        "写一句祝福语。",
    ]

    assert parse_instance("Input: none\nOutput: Hello.\n\nTask: next one", False) == ("", "Hello.")
    assert parse_instance("**Input:** 2, 3\n**Output:** 5", False) == ("2, 3", "5")
    assert parse_instance("Class label: Positive\nInput: I love it.", True) == (
        "I love it.",
        "Positive",
    )
    assert parse_instance("输入：无\n输出：你好。", False) == ("", "你好。")
    assert parse_instance("类别：正面\n输入：很好用。", True) == ("很好用。", "正面")
    # an answer without markers answers a task that takes no input; an input needs an output
    assert parse_instance("Blue light scatters most.\n\nTask: more", False) == (
        "",
        "Blue light scatters most.",
    )
    assert parse_instance("Input: something", False) is None
    assert parse_instance("It is even.", True) is None  # a class label is required

    assert parse_is_classification("Yes, it is.") and parse_is_classification("是")
    assert not parse_is_classification("No.") and not parse_is_classification("不是")
    assert not parse_is_classification("是否取决于……") and not parse_is_classification("")


def test_seed_files_in_the_self_instruct_layout(tmp_path):
    path = tmp_path / "seed_tasks.jsonl"
    rows = [
        {
            "id": "seed_task_0",
            "name": "opposites",
            "instruction": "Give the opposite of the word.",
            "instances": [{"input": "hot", "output": "cold"}],
            "is_classification": False,
        },
        {
            "instruction": "Is it a fruit?",
            "instances": [{"input": "apple", "output": "Yes"}],
            "is_classification": True,
            "extra": 1,
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = read_seed_tasks(path)
    assert [(t.instruction, t.is_classification, t.name) for t in tasks] == [
        ("Give the opposite of the word.", False, "opposites"),
        ("Is it a fruit?", True, ""),
    ]
    assert tasks[0].instances[0].input == "hot" and tasks[0].instances[0].output == "cold"

    broken = {"instruction": "X y z.", "instances": [{"input": "a"}], "is_classification": False}
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(
        DataError,
        match=r"seed_tasks.jsonl:2: instances\[0\]: field 'output' must be a string \(got missing\)",
    ):
        read_seed_tasks(path)
    path.write_text(json.dumps({**rows[0], "is_classification": "no"}) + "\n")
    with pytest.raises(
        DataError, match=r"seed_tasks.jsonl:1: field 'is_classification' must be true or false"
    ):
        read_seed_tasks(path)


def test_the_shipped_seed_files_and_the_original_seed_file_read():
    for lang in ("en", "zh"):
        tasks = read_seed_tasks(shipped_seed_path(lang))
        assert len(tasks) == 20 and 3 <= sum(t.is_classification for t in tasks) <= 8
    with pytest.raises(ConfigError, match="--lang must be one of: en, zh"):
        shipped_seed_path("fr")
    original = SHARED_SEEDS / "seed_tasks.jsonl"
    if original.is_file():  # the 175 tasks of yizhongw/self-instruct, read as they are
        tasks = read_seed_tasks(original)
        assert len(tasks) == 175 and all(t.instances for t in tasks)
