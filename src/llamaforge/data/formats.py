"""Raw dataset rows → one canonical type per kind of data.

Contract: every reader turns the rows of one file (see :mod:`llamaforge.data.files`)
into the types of :mod:`llamaforge.data.records` (re-exported here): :class:`Conversation` (SFT: optional system, then user/assistant turns that
alternate and end with the assistant), :class:`Preference` (a prompt plus a chosen and
a rejected answer), :class:`Feedback` (a prompt, one answer and a desirable/undesirable
label) or :class:`TextDocument` (pretraining text). Formats:

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and
  ``history`` (``[[question, answer], ...]``, LLaMA-Factory);
- ``sharegpt``: ``conversations`` of ``{from, value}`` (human/gpt/system), optional ``system``;
- ``openai``: ``messages`` of ``{role, content}``, optional ``system``;
- ``csv``: CSV/TSV rows mapped with ``columns`` (default question|instruction|prompt →
  prompt, answer|output|response → response);
- ``text``: ``.txt`` blocks separated by blank lines, or ``{text}`` records;
- ``preference``: ``prompt``/``chosen``/``rejected`` (strings or messages) and
  LLaMA-Factory's ``conversations`` + ``chosen``/``rejected`` turn objects;
- ``kto``: KTO's binary feedback, ``messages`` ending with the answer + a boolean
  ``label`` (LLaMA-Factory's ``kto_tag`` column), or ``prompt`` + ``completion`` + ``label``.

``columns`` renames fields (LLaMA-Factory names: prompt, query, response, history,
system, messages, chosen, rejected, text, kto_tag); ``tags`` renames ShareGPT role keys. The
format is detected from the extension and the first record unless given. Every bad
record raises :class:`~llamaforge.errors.DataError` naming file, record/line, field, fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llamaforge.data.fields import (
    CSV_FIELDS,
    DEFAULT_FIELDS,
    OPENAI_TAGS,
    Tags,
    as_string,
    check_turns,
    field_name,
    get_string,
    missing_field,
    parse_turns,
    turn_content,
    with_system,
)
from llamaforge.data.files import CSV_SUFFIXES, TEXT_SUFFIXES, Row, json_kind, read_rows
from llamaforge.data.records import (
    ROLES,
    Conversation,
    Feedback,
    Message,
    Preference,
    Record,
    TextDocument,
)
from llamaforge.errors import DataError

# The canonical types live in records.py; they are re-exported here, where readers make them.
__all__ = [
    "FORMATS",
    "ROLES",
    "Conversation",
    "Feedback",
    "Message",
    "Preference",
    "Record",
    "Tags",
    "TextDocument",
    "check_turns",
    "detect_format",
    "read_file",
    "read_records",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- readers


def read_alpaca(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    return [_alpaca_conversation(row, source, columns) for row, source in rows]


def _alpaca_conversation(
    row: Mapping[str, Any],
    source: str,
    columns: Mapping[str, str],
    defaults: Mapping[str, tuple[str, ...]] = DEFAULT_FIELDS,
) -> Conversation:
    instruction = get_string(row, "prompt", columns, source, required=True, defaults=defaults)
    query = get_string(row, "query", columns, source, required=False, defaults=defaults)
    if not instruction.strip() and not query.strip():
        name = field_name(row, "prompt", columns, defaults)
        raise DataError(f"{source}: field '{name}' is empty; give it text or drop the record")
    output = get_string(row, "response", columns, source, required=True, defaults=defaults)
    system = get_string(row, "system", columns, source, required=False, defaults=defaults)
    messages = with_system([], system)
    history_key = field_name(row, "history", columns, defaults)
    history = row.get(history_key) if history_key else None
    if history is not None:
        if not isinstance(history, list):
            raise DataError(
                f"{source}: field '{history_key}' must be a list of [question, answer] pairs, "
                f"got {json_kind(history)}"
            )
        for i, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DataError(
                    f"{source}: {history_key}[{i}] must be a [question, answer] pair, "
                    f"got {json_kind(pair)}"
                )
            q = as_string(pair[0], source, f"{history_key}[{i}][0]")
            a = as_string(pair[1], source, f"{history_key}[{i}][1]")
            messages += [Message("user", q), Message("assistant", a)]
    messages += [Message("user", instruction, query), Message("assistant", output)]
    return Conversation(tuple(messages), source)


def _csv_mapping(rows: Sequence[Row], columns: Mapping[str, str]) -> dict[str, str]:
    """Canonical field → header name; a missing column is a file-level error."""
    header = list(rows[0][0])
    by_lower = {name.lower(): name for name in header}
    mapping: dict[str, str] = {}
    path = rows[0][1].rsplit(":", 1)[0]
    for canonical in ("prompt", "query", "response", "system"):
        if canonical in columns:
            name = columns[canonical]
            if name.lower() not in by_lower:
                raise DataError(
                    f"{path}: no column '{name}' (mapped to {canonical}); the file has columns: "
                    f"{', '.join(header)}; fix `columns`"
                )
            mapping[canonical] = by_lower[name.lower()]
            continue
        for name in CSV_FIELDS[canonical]:
            if name in by_lower:
                mapping[canonical] = by_lower[name]
                break
        else:
            if canonical in ("prompt", "response"):
                raise DataError(
                    f"{path}: no {canonical} column (looked for "
                    f"{'|'.join(CSV_FIELDS[canonical])}); the file has columns: "
                    f"{', '.join(header)}; set columns: {{prompt: <column>, response: <column>}}"
                )
    return mapping


def read_csv(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    """CSV/TSV rows: header names are matched case-insensitively."""
    if not rows:
        return []
    mapping = _csv_mapping(rows, columns)
    return [_alpaca_conversation(row, source, mapping, defaults={}) for row, source in rows]


def read_chat(
    rows: Sequence[Row],
    columns: Mapping[str, str],
    tags: Tags | None = None,
    *,
    default_tags: Tags | None = None,
) -> list[Record]:
    records: list[Record] = []
    for row, source in rows:
        name = field_name(row, "messages", columns)
        if name is None or name not in row:
            names = [columns["messages"]] if "messages" in columns else DEFAULT_FIELDS["messages"]
            raise missing_field(source, "messages", names, row)
        turns = row[name]
        first = turns[0] if isinstance(turns, list) and turns else None
        if tags is not None:
            row_tags = tags
        elif isinstance(first, dict) and "role" in first and "from" not in first:
            row_tags = OPENAI_TAGS  # role/content turns, whatever the format was called
        else:
            row_tags = default_tags or Tags()
        messages = parse_turns(turns, row_tags, source, name)
        system = get_string(row, "system", columns, source, required=False)
        messages = with_system(messages, system)
        check_turns(messages, source, name)
        records.append(Conversation(tuple(messages), source))
    return records


def read_sharegpt(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    return read_chat(rows, columns, tags, default_tags=Tags())


def read_openai(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    return read_chat(rows, {"messages": "messages", **columns}, tags, default_tags=OPENAI_TAGS)


def read_text_documents(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    # LLaMA-Factory names the pretraining text column `prompt`. An empty text is a document
    # with nothing to learn (Alpaca answers used as text have some): stage pt skips those.
    mapping = {"text": columns["text"]} if "text" in columns else {}
    if not mapping and "prompt" in columns:
        mapping = {"text": columns["prompt"]}
    return [
        TextDocument(
            get_string(row, "text", mapping, source, required=True, allow_empty=True), source
        )
        for row, source in rows
    ]


def _answer(value: object, source: str, name: str, tags: Tags) -> str:
    """A chosen/rejected answer: a string, a turn object, or a list of turns (last one)."""
    if isinstance(value, dict):
        return turn_content(
            value, tags.content if tags.content in value else "content", source, name
        )
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        turn = value[-1]
        key = tags.content if tags.content in turn else "content"
        return turn_content(turn, key, source, f"{name}[{len(value) - 1}]")
    return as_string(value, source, name)


def _prompt_messages(
    row: Mapping[str, Any], columns: Mapping[str, str], tags: Tags | None, source: str
) -> tuple[list[Message], Tags, str]:
    """(prompt messages, the tags of answer turns, field name) of a preference/feedback row:
    ``conversations``/``messages`` turns, or a ``prompt`` string or message list."""
    messages_key = field_name(row, "messages", columns)
    if messages_key is not None and messages_key in row:
        turns = row[messages_key]
        row_tags = tags or (OPENAI_TAGS if messages_key == "messages" else Tags())
        return parse_turns(turns, row_tags, source, messages_key), row_tags, messages_key
    prompt_key = field_name(row, "prompt", columns)
    if prompt_key is None or prompt_key not in row:
        raise missing_field(source, "prompt", ("prompt", "instruction", "conversations"), row)
    value = row[prompt_key]
    row_tags = tags or OPENAI_TAGS
    if isinstance(value, list):  # TRL conversational form
        return parse_turns(value, row_tags, source, prompt_key), row_tags, prompt_key
    query = get_string(row, "query", columns, source, required=False)
    text = as_string(value, source, prompt_key, allow_empty=False)
    return [Message("user", text, query)], row_tags, prompt_key


def read_preference(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    records: list[Record] = []
    for row, source in rows:
        prompt, row_tags, prompt_key = _prompt_messages(row, columns, tags, source)
        answers = []
        for canonical in ("chosen", "rejected"):
            key = field_name(row, canonical, columns)
            if key is None or key not in row:
                raise missing_field(source, canonical, [columns.get(canonical, canonical)], row)
            answers.append(_answer(row[key], source, key, row_tags))
        system = get_string(row, "system", columns, source, required=False)
        prompt = with_system(prompt, system)
        check_turns(prompt, source, prompt_key, end_with="user")
        records.append(Preference(tuple(prompt), answers[0], answers[1], source))
    return records


def _label(row: Mapping[str, Any], columns: Mapping[str, str], source: str) -> bool:
    key = field_name(row, "kto_tag", columns)
    if key is None or key not in row:
        names = [columns["kto_tag"]] if "kto_tag" in columns else DEFAULT_FIELDS["kto_tag"]
        raise missing_field(source, "kto_tag", names, row)
    value = row[key]
    if not isinstance(value, bool):
        raise DataError(
            f"{source}: field '{key}' must be true or false (is the answer desirable?), got "
            f"{json_kind(value)} ({value!r}); write it as a JSON boolean"
        )
    return value


def read_feedback(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    """KTO's binary feedback: a conversation ending with the answer, or a prompt and a
    ``completion``; each with a boolean label."""
    records: list[Record] = []
    for row, source in rows:
        label = _label(row, columns, source)
        system = get_string(row, "system", columns, source, required=False)
        messages_key = field_name(row, "messages", columns)
        if messages_key is not None and messages_key in row:
            turns = row[messages_key]
            first = turns[0] if isinstance(turns, list) and turns else None
            row_tags = tags or (
                OPENAI_TAGS if isinstance(first, dict) and "role" in first else Tags()
            )
            messages = with_system(parse_turns(turns, row_tags, source, messages_key), system)
            check_turns(messages, source, messages_key)
            prompt, completion = messages[:-1], messages[-1].content
        else:
            prompt, row_tags, prompt_key = _prompt_messages(row, columns, tags, source)
            prompt = with_system(prompt, system)
            check_turns(prompt, source, prompt_key, end_with="user")
            key = field_name(row, "response", columns)
            if key is None or key not in row:
                raise missing_field(source, "completion", ("completion", "response"), row)
            completion = _answer(row[key], source, key, row_tags)
        records.append(Feedback(tuple(prompt), completion, label, source))
    return records


Reader = Callable[[Sequence[Row], Mapping[str, str], "Tags | None"], list[Record]]

FORMATS: dict[str, Reader] = {
    "alpaca": read_alpaca,
    "sharegpt": read_sharegpt,
    "openai": read_openai,
    "csv": read_csv,
    "text": read_text_documents,
    "preference": read_preference,
    "kto": read_feedback,
}


# ---------------------------------------------------------------------------- detection


def detect_format(path: Path, row: Mapping[str, Any], columns: Mapping[str, str]) -> str:
    """The format of a file from its extension, else from the keys of its first record."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in TEXT_SUFFIXES:
        return "text"

    def has(canonical: str) -> bool:
        name = field_name(row, canonical, columns)
        return name is not None and name in row

    if has("chosen") and has("rejected"):
        return "preference"
    if isinstance(row.get(field_name(row, "kto_tag", columns) or ""), bool) and (
        has("messages") or has("prompt")
    ):
        return "kto"
    if has("messages"):
        name = field_name(row, "messages", columns)
        turns = row.get(name or "")
        first = turns[0] if isinstance(turns, list) and turns else {}
        if isinstance(first, dict) and "role" in first:
            return "openai"
        return "sharegpt"
    if has("prompt") and has("response"):
        return "alpaca"
    if has("text") or (set(columns) == {"prompt"} and has("prompt")):
        return "text"
    raise DataError(
        f"{path}: cannot tell the format from the fields of the first record "
        f"({', '.join(map(str, row)) or 'none'}); set format: {' | '.join(FORMATS)} "
        "or map the fields with columns"
    )


def read_file(
    path: str | Path,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    tags: Tags | None = None,
    errors: list[str] | None = None,
) -> tuple[str, list[Record]]:
    """(format, records) of one dataset file, in file order.

    Without ``errors`` the first bad record raises DataError; with a list, bad records
    are skipped and their messages appended (file-level problems still raise).
    """
    path = Path(path)
    columns = dict(columns or {})
    rows = read_rows(path)
    if format is None:
        format = detect_format(path, rows[0][0], columns)
        logger.debug("%s: detected format %s", path, format)
    elif format not in FORMATS:
        raise DataError(f"{path}: unknown format '{format}'; choose one of: {', '.join(FORMATS)}")
    reader = FORMATS[format]
    if errors is None:
        records = reader(rows, columns, tags)
    else:
        if format == "csv":
            _csv_mapping(rows, columns)  # a missing column is one file-level error
        records = []
        for row in rows:
            try:
                records += reader([row], columns, tags)
            except DataError as e:
                errors.append(str(e))
    if system_prompt:
        records = [_add_system(r, system_prompt) for r in records]
    return format, records


def read_records(
    path: str | Path,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    tags: Tags | None = None,
) -> list[Record]:
    """All records of one dataset file, in file order (see the module docstring).

    ``system_prompt`` is added to every conversation (and preference prompt) that has no
    system message. Raises DataError for the first bad record.
    """
    return read_file(path, format, columns, system_prompt, tags)[1]


def _add_system(record: Record, system: str) -> Record:
    if isinstance(record, Conversation):
        return replace(record, messages=tuple(with_system(list(record.messages), system)))
    if isinstance(record, Preference | Feedback):
        return replace(record, prompt=tuple(with_system(list(record.prompt), system)))
    return record
