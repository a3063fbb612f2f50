"""Reading every format into canonical records, format detection, and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge.data import (
    Conversation,
    Message,
    Preference,
    TextDocument,
    read_records,
    tokenize_conversation,
)
from llamaforge.data.formats import Tags
from llamaforge.errors import DataError

M = -100
EOS = 2


def write(path: Path, content: object) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def conv(*pairs: tuple[str, str], source: str = "") -> tuple[Message, ...]:
    return tuple(Message(role, text) for role, text in pairs)


# ---------------------------------------------------------------------------- reading


def test_alpaca_json_with_input_system_and_history(tmp_path):
    path = write(
        tmp_path / "a.json",
        [
            {"instruction": "Add.", "input": "2 and 3", "output": "5"},
            {
                "instruction": "And now?",
                "input": "",
                "output": "7",
                "system": "Be exact.",
                "history": [["Add 1 and 1.", "2"]],
            },
        ],
    )
    first, second = read_records(path)
    assert first == Conversation(
        (Message("user", "Add.", "2 and 3"), Message("assistant", "5")),
        f"{path}: record 1 (line 2)",
    )
    assert second.messages == (
        Message("system", "Be exact."),
        Message("user", "Add 1 and 1."),
        Message("assistant", "2"),
        Message("user", "And now?"),
        Message("assistant", "7"),
    )
    assert second.source == f"{path}: record 2 (line 7)"
    assert Message("user", "Add.", "2 and 3").text == "Add.\n\n2 and 3"


def test_alpaca_jsonl_and_system_prompt(tmp_path):
    path = write(
        tmp_path / "a.jsonl",
        '{"instruction": "Hi", "output": "Hello"}\n\n{"instruction": "Bye", "output": "Ciao", "system": "Own."}\n',
    )
    first, second = read_records(path, system_prompt="你是台灣的助理。")
    assert first.messages == conv(
        ("system", "你是台灣的助理。"), ("user", "Hi"), ("assistant", "Hello")
    )
    assert first.source == f"{path}:1"
    assert second.messages[0] == Message("system", "Own.")  # an own system message wins
    assert second.source == f"{path}:3"


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = write(
        tmp_path / "a.json",
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n',
    )
    assert [r.messages[0].content for r in read_records(path)] == ["a", "c"]


def test_sharegpt_roles_system_and_tags(tmp_path):
    path = write(
        tmp_path / "s.json",
        [
            {
                "system": "Top system.",
                "conversations": [
                    {"from": "human", "value": "Who are you?"},
                    {"from": "gpt", "value": "A model."},
                    {"from": "human", "value": "Bye"},
                    {"from": "gpt", "value": "Bye!"},
                ],
            }
        ],
    )
    (record,) = read_records(path)
    assert record.messages == conv(
        ("system", "Top system."),
        ("user", "Who are you?"),
        ("assistant", "A model."),
        ("user", "Bye"),
        ("assistant", "Bye!"),
    )
    # LLaMA-Factory tags rename the keys and roles.
    path = write(
        tmp_path / "t.json",
        [{"dialog": [{"who": "asker", "say": "Q"}, {"who": "bot", "say": "A"}]}],
    )
    tags = Tags.from_llama_factory(
        {"role_tag": "who", "content_tag": "say", "user_tag": "asker", "assistant_tag": "bot"}
    )
    (record,) = read_records(path, "sharegpt", {"messages": "dialog"}, tags=tags)
    assert record.messages == conv(("user", "Q"), ("assistant", "A"))


def test_openai_messages_with_text_parts(tmp_path):
    path = write(
        tmp_path / "o.jsonl",
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hel"},
                            {"type": "text", "text": "lo"},
                        ],
                    },
                    {"role": "assistant", "content": "Hi"},
                ]
            }
        )
        + "\n",
    )
    (record,) = read_records(path)
    assert record.messages == conv(("system", "S"), ("user", "Hello"), ("assistant", "Hi"))


def test_csv_default_and_mapped_columns(tmp_path):
    path = write(
        tmp_path / "qa.csv", 'Question,Answer\n"什麼是台北101?","一棟摩天大樓,在台北。"\nHi,Hello\n'
    )
    first, second = read_records(path, system_prompt="請用繁體中文回答。")
    assert first.messages == conv(
        ("system", "請用繁體中文回答。"),
        ("user", "什麼是台北101?"),
        ("assistant", "一棟摩天大樓,在台北。"),
    )
    assert (first.source, second.source) == (f"{path}:2", f"{path}:3")
    tsv = write(tmp_path / "qa.tsv", "q\ta\tsys\nHow?\tLike this.\tBe kind.\n")
    (record,) = read_records(tsv, columns={"prompt": "q", "response": "a", "system": "sys"})
    assert record.messages == conv(
        ("system", "Be kind."), ("user", "How?"), ("assistant", "Like this.")
    )


def test_text_blocks_and_jsonl_text(tmp_path):
    path = write(tmp_path / "c.txt", "First doc\nline two\n\n\n  \nSecond doc\n")
    assert read_records(path) == [
        TextDocument("First doc\nline two", f"{path}:1"),
        TextDocument("Second doc", f"{path}:6"),
    ]
    path = write(tmp_path / "c.jsonl", '{"text": "abc"}\n{"text": "def"}\n')
    assert [r.text for r in read_records(path)] == ["abc", "def"]
    # LLaMA-Factory names the pretraining column `prompt`.
    path = write(tmp_path / "p.jsonl", '{"content": "xyz"}\n')
    assert read_records(path, "text", {"prompt": "content"})[0].text == "xyz"


def test_preference_forms(tmp_path):
    path = write(
        tmp_path / "p.json",
        [
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {
                "conversations": [{"from": "human", "value": "Hi"}],
                "chosen": {"from": "gpt", "value": "Hello!"},
                "rejected": {"from": "gpt", "value": "Go away."},
            },
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ],
    )
    records = read_records(path, system_prompt="Sys")
    assert [type(r) for r in records] == [Preference] * 3
    assert records[0].prompt == conv(("system", "Sys"), ("user", "2+2?"))
    assert (records[0].chosen, records[0].rejected) == ("4", "5")
    assert records[1].prompt[1:] == conv(("user", "Hi"))
    assert (records[1].chosen, records[1].rejected) == ("Hello!", "Go away.")
    assert (records[2].chosen, records[2].rejected) == ("good", "bad")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.json", [{"instruction": "i", "output": "o"}], "alpaca"),
        (
            "a.json",
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
            "sharegpt",
        ),
        (
            "a.json",
            [
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ],
            "openai",
        ),
        ("a.json", [{"prompt": "p", "chosen": "c", "rejected": "r"}], "preference"),
        ("a.jsonl", '{"text": "t"}\n', "text"),
        ("a.csv", "question,answer\nq,a\n", "csv"),
        ("a.txt", "t\n", "text"),
    ],
)
def test_detect_format(tmp_path, name, content, expected):
    from llamaforge.data.files import read_rows
    from llamaforge.data.formats import detect_format

    path = write(tmp_path / name, content)
    assert detect_format(path, read_rows(path)[0][0], {}) == expected


# ---------------------------------------------------------------------------- format → tokens


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.json", [{"instruction": "Hi", "input": "", "output": "Hello"}]),
        ("a.jsonl", '{"instruction": "Hi", "output": "Hello"}\n'),
        (
            "s.json",
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello"},
                    ]
                }
            ],
        ),
        (
            "o.jsonl",
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n',
        ),
        ("q.csv", "question,answer\nHi,Hello\n"),
    ],
)
def test_every_format_gives_the_same_tokens(tmp_path, smollm2_tokenizer, name, content):
    tok = smollm2_tokenizer
    (record,) = read_records(write(tmp_path / name, content))
    chatml = tokenize_conversation(record, tok, "chatml", 1024)
    prompt = enc(tok, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    answer = [*enc(tok, "Hello"), EOS]
    newline = enc(tok, "\n")
    assert chatml["input_ids"] == prompt + answer + newline
    assert chatml["labels"] == [M] * len(prompt) + answer + [M] * len(newline)
    alpaca = tokenize_conversation(record, tok, "alpaca_short", 1024)
    prompt = enc(tok, "### Instruction:\nHi\n\n### Response:\n")
    assert alpaca["input_ids"] == prompt + answer
    assert alpaca["labels"] == [M] * len(prompt) + answer


# ---------------------------------------------------------------------------- bad input


def error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_records(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_file_not_found(tmp_path):
    assert "file not found" in error(tmp_path / "nope.json")


def test_empty_file(tmp_path):
    assert "file is empty" in error(write(tmp_path / "e.json", "  \n"))


def test_broken_json_names_line_and_column(tmp_path):
    path = write(
        tmp_path / "b.json",
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n',
    )
    msg = error(path)
    assert f"{path}:3:23: invalid JSON (Expecting ',' delimiter)" in msg


def test_broken_jsonl_names_the_record_line(tmp_path):
    path = write(
        tmp_path / "b.jsonl",
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n',
    )
    assert f"{path}:2:" in error(path) and "invalid JSON" in error(path)


def test_non_utf8_names_the_byte(tmp_path):
    path = tmp_path / "gbk.json"
    path.write_bytes('[{"instruction": "你好", "output": "x"}]'.encode("gbk"))
    msg = error(path)
    assert "not UTF-8" in msg and "byte 18" in msg and f"{path}:1:" in msg


def test_top_level_not_a_list(tmp_path):
    msg = error(write(tmp_path / "o.json", '{"instruction": "a", "output": "b"}'))
    assert "top level is a JSON object, expected a list" in msg


def test_record_not_an_object(tmp_path):
    msg = error(write(tmp_path / "l.json", [["a", "b"]]))
    assert "record 1 (line 2)" in msg and "expected a JSON object" in msg


def test_missing_field(tmp_path):
    msg = error(
        write(tmp_path / "m.json", [{"instruction": "a", "output": "b"}, {"instruction": "c"}]),
        format="alpaca",
    )
    assert "record 2 (line 6)" in msg and "missing field 'output'" in msg and "columns" in msg


@pytest.mark.parametrize(
    ("value", "kind"), [(42, "a number"), (["x"], "a list"), (True, "a boolean")]
)
def test_wrong_field_type(tmp_path, value, kind):
    msg = error(write(tmp_path / "w.json", [{"instruction": "a", "output": value}]))
    assert f"record 1 (line 2): field 'output' must be a string, got {kind}" in msg


def test_unknown_role(tmp_path):
    path = write(
        tmp_path / "r.json",
        [{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}],
    )
    msg = error(path)
    assert "conversations[1] has unknown role 'robot'" in msg and "gpt" in msg


def test_sharegpt_not_alternating(tmp_path):
    path = write(
        tmp_path / "n.json",
        [
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "human", "value": "q2"},
                    {"from": "gpt", "value": "a"},
                ]
            }
        ],
    )
    msg = error(path)
    assert "conversations[1] is from the user but the assistant was expected" in msg


def test_last_turn_not_from_assistant(tmp_path):
    path = write(
        tmp_path / "l.json",
        [
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "human", "value": "q2"},
                ]
            }
        ],
    )
    assert "last turn of 'conversations' is from the user; it must be from the assistant" in error(
        path
    )


def test_csv_without_mapped_columns_lists_its_columns(tmp_path):
    path = write(tmp_path / "c.csv", "Q,A\nq,a\n")
    msg = error(path)
    assert "no prompt column" in msg and "the file has columns: Q, A" in msg
    msg = error(path, columns={"prompt": "question", "response": "A"})
    assert "no column 'question' (mapped to prompt); the file has columns: Q, A" in msg


def test_csv_ragged_row(tmp_path):
    assert f"{tmp_path / 'r.csv'}:3: row has 3 fields" in error(
        write(tmp_path / "r.csv", "question,answer\nq,a\nq,a,extra\n")
    )


def test_unknown_format_cannot_be_detected(tmp_path):
    msg = error(write(tmp_path / "u.json", [{"foo": "bar"}]))
    assert "cannot tell the format" in msg and "foo" in msg


MULTI_FILES = [
    (
        "h.json",
        [{"instruction": "Q2", "output": "A2", "system": "S", "history": [["Q1", "A1"]]}],
    ),
    (
        "s.json",
        [
            {
                "system": "S",
                "conversations": [
                    {"from": "human", "value": "Q1"},
                    {"from": "gpt", "value": "A1"},
                    {"from": "human", "value": "Q2"},
                    {"from": "gpt", "value": "A2"},
                ],
            }
        ],
    ),
    (
        "o.jsonl",
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ]
            }
        )
        + "\n",
    ),
]


@pytest.mark.parametrize(("name", "content"), MULTI_FILES)
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_every_multi_turn_format_masks_every_answer(
    tmp_path, smollm2_tokenizer, name, content, train_on_inputs
):
    tok = smollm2_tokenizer
    (record,) = read_records(write(tmp_path / name, content))
    ex = tokenize_conversation(record, tok, "chatml", 1024, train_on_inputs=train_on_inputs)
    pieces = [
        (
            enc(
                tok,
                "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n",
            ),
            False,
        ),
        ([*enc(tok, "A1"), EOS], True),
        (enc(tok, "\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"), False),
        ([*enc(tok, "A2"), EOS], True),
        (enc(tok, "\n"), False),
    ]
    ids = [i for part, _ in pieces for i in part]
    labels = [i if trained or train_on_inputs else M for part, trained in pieces for i in part]
    assert ex["input_ids"] == ids and ex["labels"] == labels
    # The same conversation with a prompt template: "S\n\n" leads the first prompt.
    ex = tokenize_conversation(record, tok, "alpaca_short", 1024, train_on_inputs=train_on_inputs)
    pieces = [
        (enc(tok, "S\n\n### Instruction:\nQ1\n\n### Response:\n"), False),
        ([*enc(tok, "A1"), EOS], True),
        (enc(tok, "\n\n### Instruction:\nQ2\n\n### Response:\n"), False),
        ([*enc(tok, "A2"), EOS], True),
    ]
    ids = [i for part, _ in pieces for i in part]
    labels = [i if trained or train_on_inputs else M for part, trained in pieces for i in part]
    assert ex["input_ids"] == ids and ex["labels"] == labels


def test_text_file_tokens(tmp_path, smollm2_tokenizer):
    from llamaforge.data import tokenize_text

    tok = smollm2_tokenizer
    (doc,) = read_records(write(tmp_path / "t.txt", "Hello world.\nSecond line.\n"))
    (chunk,) = tokenize_text(doc, tok, cutoff_len=1024)
    ids = [*enc(tok, "Hello world.\nSecond line."), EOS]
    assert chunk == {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}


def test_preference_file_renders_for_dpo(tmp_path, smollm2_tokenizer):
    from llamaforge.data import render_preference

    path = write(tmp_path / "p.jsonl", '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n')
    (pair,) = read_records(path)
    assert render_preference(pair, smollm2_tokenizer, "chatml") == {
        "prompt": "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        "chosen": "4<|im_end|>",
        "rejected": "5<|im_end|>",
    }
    assert render_preference(pair, smollm2_tokenizer, "alpaca_short") == {
        "prompt": "### Instruction:\n2+2?\n\n### Response:\n",
        "chosen": "4<|im_end|>",
        "rejected": "5<|im_end|>",
    }
