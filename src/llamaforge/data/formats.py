"""Raw dataset rows → one canonical type per kind of data.

Contract: every reader turns the rows of one file (see :mod:`llamaforge.data.files`)
into :class:`Conversation` (SFT: optional system, then user/assistant turns that
alternate and end with the assistant), :class:`Preference` (a prompt plus a chosen and
a rejected answer) or :class:`TextDocument` (pretraining text). Formats:

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and
  ``history`` (``[[question, answer], ...]``, LLaMA-Factory);
- ``sharegpt``: ``conversations`` of ``{from, value}`` (human/gpt/system), optional ``system``;
- ``openai``: ``messages`` of ``{role, content}``, optional ``system``;
- ``csv``: CSV/TSV rows mapped with ``columns`` (default question|instruction|prompt →
  prompt, answer|output|response → response);
- ``text``: ``.txt`` blocks separated by blank lines, or ``{text}`` records;
- ``preference``: ``prompt``/``chosen``/``rejected`` (strings or messages) and
  LLaMA-Factory's ``conversations`` + ``chosen``/``rejected`` turn objects.

``columns`` renames fields (LLaMA-Factory names: prompt, query, response, history,
system, messages, chosen, rejected, text); ``tags`` renames ShareGPT role keys. The
format is detected from the extension and the first record unless given. Every bad
record raises :class:`~llamaforge.errors.DataError` naming file, record/line, field, fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llamaforge.data.files import CSV_SUFFIXES, TEXT_SUFFIXES, Row, json_kind, read_rows
from llamaforge.errors import DataError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    """``system`` | ``user`` | ``assistant``."""
    content: str
    input: str = ""
    """Alpaca ``input`` (context) of a user turn; prompt templates render it in their
    input slot, chat templates see :attr:`text`."""

    @property
    def text(self) -> str:
        """The message as one string: content, a blank line, then the input (if any)."""
        return f"{self.content}\n\n{self.input}" if self.input else self.content


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str = ""
    """Where the record came from, e.g. ``data.json: record 12 (line 57)``."""


@dataclass(frozen=True)
class Preference:
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""


@dataclass(frozen=True)
class TextDocument:
    text: str
    source: str = ""


Record = Conversation | Preference | TextDocument


@dataclass(frozen=True)
class Tags:
    """Keys and role names of ShareGPT-style turn objects (LLaMA-Factory ``tags``)."""

    role: str = "from"
    content: str = "value"
    user: frozenset[str] = field(default_factory=lambda: frozenset({"human", "user"}))
    assistant: frozenset[str] = field(
        default_factory=lambda: frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})
    )
    system: frozenset[str] = field(default_factory=lambda: frozenset({"system"}))

    @classmethod
    def from_llama_factory(cls, tags: Mapping[str, str], base: Tags | None = None) -> Tags:
        """``{role_tag, content_tag, user_tag, assistant_tag, system_tag}`` → Tags."""
        base = base or cls()
        return cls(
            role=tags.get("role_tag", base.role),
            content=tags.get("content_tag", base.content),
            user=frozenset({tags["user_tag"]}) if "user_tag" in tags else base.user,
            assistant=(
                frozenset({tags["assistant_tag"]}) if "assistant_tag" in tags else base.assistant
            ),
            system=frozenset({tags["system_tag"]}) if "system_tag" in tags else base.system,
        )

    def canonical_role(self, name: object, source: str, where: str) -> str:
        if isinstance(name, str):
            for role, names in (
                ("user", self.user),
                ("assistant", self.assistant),
                ("system", self.system),
            ):
                if name in names:
                    return role
        known = sorted(self.user | self.assistant | self.system)
        raise DataError(
            f"{source}: {where} has unknown role {name!r} in '{self.role}'; "
            f"use one of: {', '.join(known)}"
        )


OPENAI_TAGS = Tags(
    role="role",
    content="content",
    user=frozenset({"user"}),
    assistant=frozenset({"assistant"}),
    system=frozenset({"system", "developer"}),
)

# Field names tried in order when `columns` does not name one (first present wins).
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("instruction", "prompt", "question"),
    "query": ("input", "query", "context"),
    "response": ("output", "response", "answer", "completion"),
    "history": ("history",),
    "system": ("system",),
    "messages": ("conversations", "messages"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "text": ("text", "content"),
}
CSV_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "instruction", "prompt"),
    "query": ("input", "context"),
    "response": ("answer", "output", "response"),
    "system": ("system",),
}


# ---------------------------------------------------------------------------- fields


def _field_name(
    row: Mapping[str, Any],
    canonical: str,
    columns: Mapping[str, str],
    defaults: Mapping[str, tuple[str, ...]] = DEFAULT_FIELDS,
) -> str | None:
    """The key of ``row`` that holds ``canonical``: the mapped one, else the first default."""
    if canonical in columns:
        return columns[canonical]
    for name in defaults.get(canonical, ()):
        if name in row:
            return name
    return None


def _missing(
    source: str, canonical: str, names: Sequence[str], row: Mapping[str, Any]
) -> DataError:
    tried = " or ".join(f"'{n}'" for n in names) or f"'{canonical}'"
    has = ", ".join(map(str, row)) or "none"
    return DataError(
        f"{source}: missing field {tried} (fields present: {has}); add it or map it with "
        f"columns: {{{canonical}: <field>}}"
    )


def _string(value: object, source: str, name: str, *, allow_empty: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise DataError(
            f"{source}: field '{name}' must be a string, got {json_kind(value)} ({shown}); "
            "write it as a JSON string in quotes"
        )
    if not allow_empty and not value.strip():
        raise DataError(f"{source}: field '{name}' is empty; give it text or drop the record")
    return value


def _get(
    row: Mapping[str, Any],
    canonical: str,
    columns: Mapping[str, str],
    source: str,
    *,
    required: bool,
    allow_empty: bool = True,
    defaults: Mapping[str, tuple[str, ...]] = DEFAULT_FIELDS,
) -> str:
    name = _field_name(row, canonical, columns, defaults)
    if name is None or name not in row:
        if required:
            names = [columns[canonical]] if canonical in columns else defaults.get(canonical, ())
            raise _missing(source, canonical, names, row)
        return ""
    return _string(row[name], source, name, allow_empty=allow_empty)


# ---------------------------------------------------------------------------- chat turns


def _content(turn: Mapping[str, Any], key: str, source: str, where: str) -> str:
    if key not in turn:
        raise DataError(
            f"{source}: {where} has no '{key}' field (fields: {', '.join(map(str, turn))}); "
            f"add it or set the content tag"
        )
    value = turn[key]
    # OpenAI content may be a list of parts: [{"type": "text", "text": ...}, ...]
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    return _string(value, source, f"{where}.{key}")


def _parse_turns(turns: object, tags: Tags, source: str, name: str) -> list[Message]:
    if not isinstance(turns, list):
        raise DataError(
            f"{source}: field '{name}' must be a list of turn objects, got {json_kind(turns)}; "
            f'write it as [{{"{tags.role}": ..., "{tags.content}": ...}}, ...]'
        )
    messages = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(
                f"{source}: {where} must be an object with '{tags.role}' and '{tags.content}', "
                f"got {json_kind(turn)}"
            )
        if tags.role not in turn:
            raise DataError(
                f"{source}: {where} has no '{tags.role}' field (fields: {', '.join(map(str, turn))}); "
                "add the role or set the role tag"
            )
        role = tags.canonical_role(turn[tags.role], source, where)
        messages.append(Message(role, _content(turn, tags.content, source, where)))
    return messages


def check_turns(
    messages: Sequence[Message], source: str, name: str, *, end_with: str = "assistant"
) -> None:
    """System messages only first; then user/assistant alternate, starting with the user."""
    body = [m for m in messages if m.role != "system"]
    for i, m in enumerate(messages):
        if m.role == "system" and i > 0:
            raise DataError(
                f"{source}: {name}[{i}] is a system message after the first turn; "
                "move it to the start or make it a user turn"
            )
    if not body:
        raise DataError(f"{source}: field '{name}' has no user/assistant turns; add some")
    offset = len(messages) - len(body)
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise DataError(
                f"{source}: {name}[{i + offset}] is from the {m.role} but the {expected} was "
                "expected; turns must alternate user/assistant, starting with the user"
            )
    if body[-1].role != end_with:
        raise DataError(
            f"{source}: the last turn of '{name}' is from the {body[-1].role}; "
            f"it must be from the {end_with} (drop the trailing turn or add the {end_with}'s)"
        )


def _with_system(messages: list[Message], system: str) -> list[Message]:
    if system and not (messages and messages[0].role == "system"):
        return [Message("system", system), *messages]
    return messages


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
    instruction = _get(row, "prompt", columns, source, required=True, defaults=defaults)
    query = _get(row, "query", columns, source, required=False, defaults=defaults)
    if not instruction.strip() and not query.strip():
        name = _field_name(row, "prompt", columns, defaults)
        raise DataError(f"{source}: field '{name}' is empty; give it text or drop the record")
    output = _get(row, "response", columns, source, required=True, defaults=defaults)
    system = _get(row, "system", columns, source, required=False, defaults=defaults)
    messages = _with_system([], system)
    history_key = _field_name(row, "history", columns, defaults)
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
            q = _string(pair[0], source, f"{history_key}[{i}][0]")
            a = _string(pair[1], source, f"{history_key}[{i}][1]")
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
        name = _field_name(row, "messages", columns)
        if name is None or name not in row:
            names = [columns["messages"]] if "messages" in columns else DEFAULT_FIELDS["messages"]
            raise _missing(source, "messages", names, row)
        turns = row[name]
        first = turns[0] if isinstance(turns, list) and turns else None
        if tags is not None:
            row_tags = tags
        elif isinstance(first, dict) and "role" in first and "from" not in first:
            row_tags = OPENAI_TAGS  # role/content turns, whatever the format was called
        else:
            row_tags = default_tags or Tags()
        messages = _parse_turns(turns, row_tags, source, name)
        system = _get(row, "system", columns, source, required=False)
        messages = _with_system(messages, system)
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
    # LLaMA-Factory names the pretraining text column `prompt`.
    mapping = {"text": columns["text"]} if "text" in columns else {}
    if not mapping and "prompt" in columns:
        mapping = {"text": columns["prompt"]}
    return [
        TextDocument(_get(row, "text", mapping, source, required=True, allow_empty=False), source)
        for row, source in rows
    ]


def _answer(value: object, source: str, name: str, tags: Tags) -> str:
    """A chosen/rejected answer: a string, a turn object, or a list of turns (last one)."""
    if isinstance(value, dict):
        return _content(value, tags.content if tags.content in value else "content", source, name)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        turn = value[-1]
        key = tags.content if tags.content in turn else "content"
        return _content(turn, key, source, f"{name}[{len(value) - 1}]")
    return _string(value, source, name)


def read_preference(
    rows: Sequence[Row], columns: Mapping[str, str], tags: Tags | None = None
) -> list[Record]:
    records: list[Record] = []
    for row, source in rows:
        messages_key = _field_name(row, "messages", columns)
        if messages_key is not None and messages_key in row:
            turns = row[messages_key]
            row_tags = tags or (OPENAI_TAGS if messages_key == "messages" else Tags())
            prompt = _parse_turns(turns, row_tags, source, messages_key)
        else:
            prompt_key = _field_name(row, "prompt", columns)
            if prompt_key is None or prompt_key not in row:
                raise _missing(source, "prompt", ("prompt", "instruction", "conversations"), row)
            value = row[prompt_key]
            if isinstance(value, list):  # TRL conversational form
                row_tags = tags or OPENAI_TAGS
                prompt = _parse_turns(value, row_tags, source, prompt_key)
            else:
                query = _get(row, "query", columns, source, required=False)
                prompt = [
                    Message("user", _string(value, source, prompt_key, allow_empty=False), query)
                ]
            row_tags = tags or OPENAI_TAGS
        answers = []
        for canonical in ("chosen", "rejected"):
            key = _field_name(row, canonical, columns)
            if key is None or key not in row:
                raise _missing(source, canonical, [columns.get(canonical, canonical)], row)
            answers.append(_answer(row[key], source, key, row_tags))
        system = _get(row, "system", columns, source, required=False)
        prompt = _with_system(prompt, system)
        check_turns(prompt, source, messages_key or "prompt", end_with="user")
        records.append(Preference(tuple(prompt), answers[0], answers[1], source))
    return records


Reader = Callable[[Sequence[Row], Mapping[str, str], "Tags | None"], list[Record]]

FORMATS: dict[str, Reader] = {
    "alpaca": read_alpaca,
    "sharegpt": read_sharegpt,
    "openai": read_openai,
    "csv": read_csv,
    "text": read_text_documents,
    "preference": read_preference,
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
        name = _field_name(row, canonical, columns)
        return name is not None and name in row

    if has("chosen") and has("rejected"):
        return "preference"
    if has("messages"):
        name = _field_name(row, "messages", columns)
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
        return replace(record, messages=tuple(_with_system(list(record.messages), system)))
    if isinstance(record, Preference):
        return replace(record, prompt=tuple(_with_system(list(record.prompt), system)))
    return record
