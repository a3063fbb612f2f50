"""``llamaforge generate``: one prompt → the answer on stdout; a JSONL file → predictions.

Input lines (``--input``) are JSON objects of one of these shapes:

- ``{"prompt": "..."}`` — a user message (or raw text with ``--raw``);
- ``{"messages": [{"role": "user", "content": "..."}, ...]}`` — a conversation ending
  with the user turn to answer;
- ``{"instruction": "...", "input": "..."}`` — an Alpaca record (``input`` optional).

Each output line is the input object plus ``"prediction"`` (to ``--output``, else stdout),
in input order. The whole file is checked before the model loads; a bad line raises a
DataError naming ``file:line``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from llamaforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from llamaforge.config import RunConfig
    from llamaforge.data.formats import Message
    from llamaforge.inference.engine import GenerationEngine

logger = logging.getLogger(__name__)

# Prompts per generate() call. Sorted by length first, so rows in a batch pad little.
BATCH_SIZE = 8
ROLES = ("system", "user", "assistant")


def _record_prompt(record: Any, where: str, raw: bool) -> Sequence[Message] | str:
    from llamaforge.data.formats import Message

    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise DataError(f"{where}: field 'prompt' must be a string")
        return record["prompt"]
    if raw:
        raise DataError(f"{where}: --raw needs a 'prompt' field with the text to continue")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise DataError(f"{where}: messages[{i}] needs 'role' (one of: {', '.join(ROLES)})")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] needs 'content' (a string)")
            out.append(Message(m["role"], m["content"]))
        if out[-1].role != "user":
            raise DataError(f"{where}: the last message must be the user's turn to answer")
        return out
    if "instruction" in record:
        instruction, context = record["instruction"], record.get("input") or ""
        if not isinstance(instruction, str) or not isinstance(context, str):
            raise DataError(f"{where}: fields 'instruction' and 'input' must be strings")
        return [Message("user", instruction, input=context)]
    raise DataError(
        f"{where}: no 'prompt', 'messages' or 'instruction' field; "
        'write e.g. {"prompt": "What is the capital of France?"}'
    )


def read_prompts(
    path: str | Path, raw: bool
) -> tuple[list[dict[str, Any]], list[Sequence[Message] | str]]:
    """(records, prompts) of a JSONL prompts file; every line is checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    records, prompts = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        prompts.append(_record_prompt(record, where, raw))
        records.append(record)
    if not records:
        raise DataError(f"{path}: no prompts (empty file)")
    return records, prompts


def generate_file(
    engine: GenerationEngine,
    prompts: Sequence[Sequence[Message] | str],
    cfg: RunConfig,
    raw: bool,
) -> list[str]:
    """Predictions for ``prompts`` in their order, generated in length-sorted batches."""
    from tqdm.auto import tqdm

    lengths = [len(engine.encode(p, raw)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    predictions: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc="generating", unit="prompt", file=sys.stderr) as bar:
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            results = engine.generate([prompts[i] for i in batch], cfg.generation, raw=raw)
            for i, result in zip(batch, results, strict=True):
                predictions[i] = result.text
            bar.update(len(batch))
    return predictions


def _stream_answer(
    engine: GenerationEngine, prompt: str, cfg: RunConfig, raw: bool, out: TextIO
) -> None:
    if cfg.generation.num_beams > 1:  # beam search only knows its answer at the end
        out.write(engine.generate([prompt], cfg.generation, raw=raw)[0].text + "\n")
        return
    with engine.stream(prompt, cfg.generation, raw=raw) as stream:
        for piece in stream:
            out.write(piece)
            out.flush()
    out.write("\n")


def run_generate(
    cfg: RunConfig,
    *,
    prompt: str | None,
    input_path: str | None,
    output_path: str | None,
    raw: bool,
) -> int:
    """The ``generate`` command. Returns the exit code."""
    from llamaforge.inference.engine import GenerationEngine

    if (prompt is None) == (input_path is None):
        raise ConfigError("generate needs exactly one of --prompt TEXT or --input PROMPTS.jsonl")
    if output_path is not None and input_path is None:
        raise ConfigError("--output goes with --input PROMPTS.jsonl (--prompt prints to stdout)")
    records: list[dict[str, Any]] = []
    prompts: list[Sequence[Message] | str] = []
    if input_path is not None:
        records, prompts = read_prompts(input_path, raw)
    engine = GenerationEngine.from_config(cfg)
    if prompt is not None:
        _stream_answer(engine, prompt, cfg, raw, sys.stdout)
        return 0
    predictions = generate_file(engine, prompts, cfg, raw)
    lines = [
        json.dumps({**record, "prediction": prediction}, ensure_ascii=False)
        for record, prediction in zip(records, predictions, strict=True)
    ]
    if output_path is None:
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote %d predictions to %s", len(lines), out)
    return 0
