"""dataset_info.json registry (ours and LLaMA-Factory's), mixing, max_samples, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge.config.sections import DataConfig
from llamaforge.data import Conversation, Message, Preference, TextDocument
from llamaforge.data.registry import load_dataset_records, resolve_dataset, split_validation
from llamaforge.errors import ConfigError, DataError


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_json(
        tmp_path / "qa.json",
        [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)],
    )
    (tmp_path / "sheet.csv").write_text("Frage,Antwort\nWie?,So.\n", encoding="utf-8")
    write_json(
        tmp_path / "dpo.json",
        [
            {
                "conversations": [{"from": "human", "value": "Hi"}],
                "chosen": {"from": "gpt", "value": "Hello"},
                "rejected": {"from": "gpt", "value": "Go"},
            }
        ],
    )
    write_json(
        tmp_path / "chat.json",
        [
            {
                "messages": [
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"},
                ]
            }
        ],
    )
    (tmp_path / "c4.jsonl").write_text('{"text": "doc one"}\n', encoding="utf-8")
    write_json(
        tmp_path / "dataset_info.json",
        {
            # LLaMA-Factory entries, as they are written upstream
            "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer"}},
            "dpo_demo": {
                "file_name": "dpo.json",
                "ranking": True,
                "formatting": "sharegpt",
                "columns": {
                    "messages": "conversations",
                    "chosen": "chosen",
                    "rejected": "rejected",
                },
            },
            "chat_demo": {
                "file_name": "chat.json",
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                },
            },
            "c4_demo": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
            "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "x/alpaca_en"},
            # ours: a CSV with a column mapping and a system prompt
            "sheet": {
                "file_name": "sheet.csv",
                "formatting": "csv",
                "columns": {"prompt": "Frage", "response": "Antwort"},
                "system_prompt": "Antworte auf Deutsch.",
            },
        },
    )
    return tmp_path


def load(data_dir: Path, *names: str, **kwargs) -> list:
    cfg = DataConfig(dataset=names, **kwargs)
    return load_dataset_records(cfg, base_dir=data_dir)


def test_llama_factory_entries(data_dir):
    qa = load(data_dir, "qa")
    assert [r.messages for r in qa[:2]] == [
        (Message("user", "q0"), Message("assistant", "a0")),
        (Message("user", "q1"), Message("assistant", "a1")),
    ]
    (dpo,) = load(data_dir, "dpo_demo")
    assert dpo == Preference((Message("user", "Hi"),), "Hello", "Go", dpo.source)
    (chat,) = load(data_dir, "chat_demo")
    assert chat.messages == (Message("user", "Q"), Message("assistant", "A"))
    (doc,) = load(data_dir, "c4_demo")
    assert doc == TextDocument("doc one", f"{data_dir / 'c4.jsonl'}:1")
    (row,) = load(data_dir, "sheet")
    assert row.messages == (
        Message("system", "Antworte auf Deutsch."),
        Message("user", "Wie?"),
        Message("assistant", "So."),
    )


def test_dataset_dir_relative_to_base_dir(data_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("config")
    cfg = DataConfig(dataset=("qa",), dataset_dir=str(data_dir))
    assert len(load_dataset_records(cfg, base_dir=elsewhere)) == 5
    spec = resolve_dataset("qa.json", DataConfig(), base_dir=data_dir)
    assert spec.path == data_dir / "qa.json"


def test_max_samples_and_mixing_is_a_seeded_shuffle(data_dir):
    one = load(data_dir, "qa", max_samples=3)
    assert [r.messages[0].content for r in one] == ["q0", "q1", "q2"]  # file order kept
    mixed = load(data_dir, "qa", "chat_demo", "sheet", max_samples=3)
    assert len(mixed) == 3 + 1 + 1
    again = load(data_dir, "qa", "chat_demo", "sheet", max_samples=3)
    assert mixed == again
    contents = sorted(r.messages[-2].content for r in mixed)
    assert contents == ["Q", "Wie?", "q0", "q1", "q2"]
    orders = {
        tuple(
            r.messages[-2].content
            for r in load_dataset_records(
                DataConfig(dataset=("qa", "chat_demo", "sheet"), max_samples=3), data_dir, seed=s
            )
        )
        for s in range(5)
    }
    assert len(orders) > 1  # the seed changes the order


def test_unknown_name_lists_known_and_suggests(data_dir):
    with pytest.raises(DataError) as info:
        load(data_dir, "qaa")
    msg = str(info.value)
    assert "unknown dataset 'qaa'" in msg and "did you mean 'qa'?" in msg
    assert "c4_demo" in msg and "dataset_info.json" in msg


def test_hub_only_entry_needs_a_download(data_dir):
    with pytest.raises(DataError, match=r"'alpaca_en' is on a hub \(llamafactory/alpaca_en\)"):
        load(data_dir, "alpaca_en")


def test_missing_path_and_missing_registry(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        load(tmp_path, "nope.json")
    with pytest.raises(
        DataError, match=r"unknown dataset 'nope': no such file, and no dataset_info"
    ):
        load(tmp_path, "nope")
    with pytest.raises(ConfigError, match="key 'dataset' is empty"):
        load(tmp_path)


def test_registry_file_missing_data_file(data_dir):
    (data_dir / "qa.json").unlink()
    with pytest.raises(DataError, match=r"qa\.json: file not found"):
        load(data_dir, "qa")


def test_split_validation_count_and_fraction():
    records = list(range(10))
    train, val = split_validation(records, 3, seed=1)
    assert len(val) == 3 and sorted(train + val) == records
    assert train == sorted(train) and val == sorted(val)  # original order kept
    assert split_validation(records, 3, seed=1) == (train, val)
    train, val = split_validation(records, 0.3, seed=0)
    assert (len(train), len(val)) == (7, 3)
    assert len(split_validation(records, 0.01, seed=0)[1]) == 1  # a fraction holds out >= 1
    assert split_validation(records, 0, seed=0) == (records, [])


def test_split_validation_errors():
    with pytest.raises(DataError, match="leaves none to train on"):
        split_validation([1, 2], 2, seed=0)
    with pytest.raises(ConfigError, match="neither a count"):
        split_validation(list(range(10)), 2.5, seed=0)


def test_conversation_records_are_canonical(data_dir):
    (chat,) = load(data_dir, "chat_demo")
    assert isinstance(chat, Conversation) and chat.source.endswith("record 1 (line 1)")


FIXTURES = Path(__file__).parent / "fixtures"


def test_shipped_fixture_datasets():
    cfg = DataConfig(
        dataset=("tiny_alpaca", "qa_zh_tw", "chat_sharegpt"), dataset_dir=str(FIXTURES)
    )
    records = load_dataset_records(cfg, seed=0)
    assert len(records) == 4 + 3 + 2
    zh = [r for r in records if r.messages[0].content.startswith("你是")]
    assert len(zh) == 3
    assert zh[0].messages[0] == Message("system", "你是一個友善的助理，請用繁體中文回答。")
    assert {r.messages[-1].content for r in zh} >= {"地上 101 層。"}
