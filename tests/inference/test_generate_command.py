"""`llamaforge generate` on a tiny model directory, its JSONL input, and CLI error exits."""

from __future__ import annotations

import json

import pytest

from llamaforge.cli import main
from llamaforge.config import GenerationConfig, load_run_config
from llamaforge.data.formats import Message
from llamaforge.errors import ConfigError, DataError
from llamaforge.inference import GenerationEngine
from llamaforge.inference.commands import read_prompts, run_generate

RECORDS = [
    {"prompt": "Hi", "id": 1},
    {"messages": [{"role": "user", "content": "What is 2+2?"}], "id": 2},
    {"instruction": "Translate to French", "input": "cat", "output": "chat", "id": 3},
    {"instruction": "Say something long and thoughtful about the sea and the sky", "id": 4},
]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_read_prompts_formats(tmp_path):
    records, prompts = read_prompts(write_jsonl(tmp_path / "in.jsonl", RECORDS), raw=False)
    assert records == RECORDS
    assert prompts == [
        "Hi",
        [Message("user", "What is 2+2?")],
        [Message("user", "Translate to French", input="cat")],
        [Message("user", "Say something long and thoughtful about the sea and the sky")],
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", r"in\.jsonl:2: invalid JSON"),
        ('["a"]', r"in\.jsonl:2: expected a JSON object"),
        ('{"question": "x"}', r"in\.jsonl:2: no 'prompt', 'messages' or 'instruction' field"),
        ('{"prompt": 3}', r"in\.jsonl:2: field 'prompt' must be a string"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"in\.jsonl:2: messages\[0\] needs"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            r"in\.jsonl:2: the last message must be the user's",
        ),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, error):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=error):
        read_prompts(path, raw=False)


def test_raw_needs_prompt_field(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "x"}])
    with pytest.raises(DataError, match=r"in\.jsonl:1: --raw needs a 'prompt' field"):
        read_prompts(path, raw=True)


def test_input_file_to_predictions(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out" / "preds.jsonl"
    cfg = load_run_config(None, (), model=str(tiny_model_dir), temperature=0, max_new_tokens=6)
    assert (
        run_generate(cfg, prompt=None, input_path=str(source), output_path=str(out), raw=False) == 0
    )
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in line.items() if k != "prediction"} for line in lines] == RECORDS
    # batched, length-sorted generation gives each prompt its one-at-a-time answer
    engine = GenerationEngine.from_config(cfg)
    _, prompts = read_prompts(source, raw=False)
    expected = [engine.generate([p], cfg.generation)[0].text for p in prompts]
    assert [line["prediction"] for line in lines] == expected


def test_single_prompt_prints_streamed_answer(tmp_path, tiny_model_dir, capsys):
    cfg = load_run_config(None, (), model=str(tiny_model_dir), temperature=0, max_new_tokens=5)
    expected = GenerationEngine.from_config(cfg).generate(
        ["Hi"], GenerationConfig(temperature=0, max_new_tokens=5)
    )
    capsys.readouterr()
    assert run_generate(cfg, prompt="Hi", input_path=None, output_path=None, raw=False) == 0
    assert capsys.readouterr().out == expected[0].text + "\n"


def test_needs_prompt_or_input():
    cfg = load_run_config(None, ())
    with pytest.raises(ConfigError, match="exactly one of --prompt TEXT or --input"):
        run_generate(cfg, prompt=None, input_path=None, output_path=None, raw=False)
    with pytest.raises(ConfigError, match="exactly one of"):
        run_generate(cfg, prompt="x", input_path="in.jsonl", output_path=None, raw=False)


def test_cli_missing_model_path_exits_2(tmp_path, capsys):
    missing = tmp_path / "no" / "model"
    code = main(["generate", "--model", str(missing), "--prompt", "Hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"error: model path not found: {missing}; pass an existing directory or .gguf file, "
        "'smollm2-135m', or a hub id (org/name) that is in the local HF cache\n"
    )


def test_cli_uncached_hub_id_exits_2(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code = main(["chat", "--model", "nobody-llamaforge/missing-7b"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "huggingface-cli download nobody-llamaforge/missing-7b" in err


def test_cli_bad_input_line_exits_2(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok"}\n{"oops": 1}\n', encoding="utf-8")
    assert main(["generate", "--model", "smollm2-135m", "--input", str(path)]) == 2
    assert f"{path}:2: no 'prompt'" in capsys.readouterr().err
