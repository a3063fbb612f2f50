"""`data preview`: validation of the whole file, rendering with trained spans, statistics;
and `tokenize_records`: batching, dropping, the on-disk cache."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest

from llamaforge.config.sections import DataConfig, RunConfig
from llamaforge.data import Conversation, Message, TextDocument, tokenize_conversation
from llamaforge.data.preview import preview_dataset
from llamaforge.data.tokenization import cache_key, tokenize_records
from llamaforge.errors import DataError

EOS = 2


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Hi", "input": "", "output": "Hello"},
                {"instruction": "Count to three.", "input": "", "output": "one two three"},
            ]
        ),
        encoding="utf-8",
    )
    return path


def run_cfg(path: Path, **data) -> RunConfig:
    return RunConfig(data=DataConfig(dataset=(str(path),), **data))


def test_preview_renders_records_and_statistics(alpaca_file, smollm2_tokenizer):
    tok = smollm2_tokenizer
    cfg = run_cfg(alpaca_file, template="alpaca_short", cutoff_len=64)
    out = preview_dataset(cfg, num_examples=1, tokenizer=tok, color=False)
    first = "### Instruction:\nHi\n\n### Response:\n[[Hello<|im_end|>]]"
    assert first in out
    assert "Count to three" not in out  # num_examples=1
    lengths = [
        len(enc(tok, f"### Instruction:\n{q}\n\n### Response:\n")) + len(enc(tok, a)) + 1
        for q, a in (("Hi", "Hello"), ("Count to three.", "one two three"))
    ]
    trained = len(enc(tok, "Hello")) + 1 + len(enc(tok, "one two three")) + 1
    lo, hi = sorted(lengths)
    assert (
        f"tokens per record: min {lo}  mean {sum(lengths) / 2:.1f}  p50 {lo}  p95 {hi}  max {hi}"
        in out
    )
    assert "over cutoff_len=64: 0 of 2 records (0.0%)" in out
    assert f"trained tokens (after truncation): {trained} of {sum(lengths)}" in out
    assert "format alpaca, 2 records" in out


def test_preview_truncation_is_reported(alpaca_file, smollm2_tokenizer):
    tok = smollm2_tokenizer
    short_prompt = len(enc(tok, "### Instruction:\nHi\n\n### Response:\n"))
    cfg = run_cfg(alpaca_file, template="alpaca_short", cutoff_len=short_prompt + 1)
    out = preview_dataset(cfg, num_examples=2, tokenizer=tok, color=False)
    assert f"over cutoff_len={short_prompt + 1}: 2 of 2 records (100.0%)" in out
    assert "no trained token left after truncation: 1 records" in out
    assert f"[[{tok.decode(enc(tok, 'Hello')[:1])}]]" in out


def test_preview_train_on_inputs_marks_everything(alpaca_file, smollm2_tokenizer):
    cfg = run_cfg(alpaca_file, template="chatml", train_on_inputs=True)
    out = preview_dataset(cfg, num_examples=1, tokenizer=smollm2_tokenizer, color=False)
    assert "[[<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n]]" in out


def test_preview_reports_every_bad_record_at_once(tmp_path, smollm2_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"instruction": "ok", "output": "fine"}\n'
        '{"instruction": "a", "output": 3}\n'
        '{"instruction": "b"}\n'
        '{"instruction": "c", "output": ["x"]}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        preview_dataset(run_cfg(path, format="alpaca"), tokenizer=smollm2_tokenizer)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("3 bad records in dataset")
    assert f"{path}:2: field 'output' must be a string, got a number" in lines[1]
    assert f"{path}:3: missing field 'output'" in lines[2]
    assert f"{path}:4: field 'output' must be a string, got a list" in lines[3]


def test_preview_loads_the_tokenizer_only_after_the_data_is_read(alpaca_file, smollm2_tokenizer):
    calls = []

    def load_tokenizer():
        calls.append("loaded")
        return smollm2_tokenizer

    with pytest.raises(DataError):
        preview_dataset(run_cfg(alpaca_file.parent / "missing.json"), load_tokenizer=load_tokenizer)
    assert calls == []  # a bad dataset fails before any tokenizer is loaded
    out = preview_dataset(
        run_cfg(alpaca_file, template="alpaca"), load_tokenizer=load_tokenizer, color=False
    )
    assert calls == ["loaded"]
    assert "[[Hello<|im_end|>]]" in out


def test_cli_data_preview_exit_codes(alpaca_file, tmp_path, smollm2_tokenizer, monkeypatch, capsys):
    from llamaforge import cli

    fake = types.ModuleType("llamaforge.models")
    fake.load_tokenizer = lambda spec, trust_remote_code=False: smollm2_tokenizer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llamaforge.models", fake)
    code = cli.main(
        ["data", "preview", str(alpaca_file), "--template", "alpaca_short", "--num-examples", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "[[Hello<|im_end|>]]" in out
    broken = tmp_path / "broken.json"
    broken.write_text(
        '[{"instruction": "a", "output": "b"},\n {"instruction": }]', encoding="utf-8"
    )
    assert cli.main(["data", "preview", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}:2:") and err.count("\n") == 1
    assert cli.main(["data", "preview", str(alpaca_file), "--template", "nope"]) == 2
    assert "unknown template 'nope'; choose one of:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- tokenize_records


def test_tokenize_records_matches_single_records_and_drops_untrainable(
    smollm2_tokenizer, tmp_path, caplog
):
    tok = smollm2_tokenizer
    records = [
        Conversation((Message("user", "Hi"), Message("assistant", "Hello")), "r1"),
        Conversation((Message("user", "word " * 40), Message("assistant", "Too late")), "r2"),
        TextDocument("plain text here", "r3"),
    ]
    cfg = DataConfig(template="chatml", cutoff_len=20)
    with caplog.at_level(logging.WARNING):
        ds = tokenize_records(records, tok, cfg, use_cache=False, show_progress=False, batch_size=2)
    assert "dropped 1 of 3 examples" in caplog.text
    assert len(ds) == 2
    single = tokenize_conversation(records[0], tok, "chatml", 20)
    assert ds[0] == single
    text_ids = [*enc(tok, "plain text here"), EOS]
    assert ds[1] == {
        "input_ids": text_ids,
        "attention_mask": [1] * len(text_ids),
        "labels": text_ids,
    }


def test_tokenize_records_cache_hit_and_key(smollm2_tokenizer, tmp_path):
    from llamaforge.data import get_template

    tok = smollm2_tokenizer
    records = [Conversation((Message("user", "Hi"), Message("assistant", "Hello")), "a.json:1")]
    cfg = DataConfig(template="alpaca", cutoff_len=64)
    first = tokenize_records(records, tok, cfg, cache_dir=tmp_path, show_progress=False)
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and (entries[0] / "dataset_info.json").exists()
    again = tokenize_records(records, tok, cfg, cache_dir=tmp_path, show_progress=False)
    assert again.cache_files and Path(again.cache_files[0]["filename"]).is_relative_to(tmp_path)
    assert again[:] == first[:]
    tpl = get_template("alpaca")
    key = cache_key(records, tok, tpl, cfg)
    moved = [Conversation(records[0].messages, "elsewhere.json:9")]
    assert cache_key(moved, tok, tpl, cfg) == key  # the source does not matter
    assert cache_key(records, tok, tpl, DataConfig(template="alpaca", cutoff_len=65)) != key
    assert cache_key(records, tok, get_template("alpaca_short"), cfg) != key
    changed = [Conversation((Message("user", "Hi"), Message("assistant", "Hello!")), "")]
    assert cache_key(changed, tok, tpl, cfg) != key
