"""Field access and chat-turn parsing for raw rows, with one-line errors.

Contract: helpers the format readers share. A field is looked up by its canonical name
(prompt, query, response, history, system, messages, chosen, rejected, text) through
``columns`` (LLaMA-Factory names) or the default names; values must be strings; ShareGPT
and OpenAI turns are parsed with :class:`Tags` and checked to alternate user/assistant.
Every problem raises :class:`~llamaforge.errors.DataError` naming the record and field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamaforge.data.files import json_kind
from llamaforge.data.records import Message
from llamaforge.errors import DataError


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
    "kto_tag": ("label", "kto_tag"),
    "text": ("text", "content"),
}
CSV_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "instruction", "prompt"),
    "query": ("input", "context"),
    "response": ("answer", "output", "response"),
    "system": ("system",),
}


# ---------------------------------------------------------------------------- fields


def field_name(
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


def missing_field(
    source: str, canonical: str, names: Sequence[str], row: Mapping[str, Any]
) -> DataError:
    tried = " or ".join(f"'{n}'" for n in names) or f"'{canonical}'"
    has = ", ".join(map(str, row)) or "none"
    return DataError(
        f"{source}: missing field {tried} (fields present: {has}); add it or map it with "
        f"columns: {{{canonical}: <field>}}"
    )


def as_string(value: object, source: str, name: str, *, allow_empty: bool = True) -> str:
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


def get_string(
    row: Mapping[str, Any],
    canonical: str,
    columns: Mapping[str, str],
    source: str,
    *,
    required: bool,
    allow_empty: bool = True,
    defaults: Mapping[str, tuple[str, ...]] = DEFAULT_FIELDS,
) -> str:
    name = field_name(row, canonical, columns, defaults)
    if name is None or name not in row:
        if required:
            names = [columns[canonical]] if canonical in columns else defaults.get(canonical, ())
            raise missing_field(source, canonical, names, row)
        return ""
    return as_string(row[name], source, name, allow_empty=allow_empty)


# ---------------------------------------------------------------------------- chat turns


def turn_content(turn: Mapping[str, Any], key: str, source: str, where: str) -> str:
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
    return as_string(value, source, f"{where}.{key}")


def parse_turns(turns: object, tags: Tags, source: str, name: str) -> list[Message]:
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
        messages.append(Message(role, turn_content(turn, tags.content, source, where)))
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


def with_system(messages: list[Message], system: str) -> list[Message]:
    if system and not (messages and messages[0].role == "system"):
        return [Message("system", system), *messages]
    return messages
