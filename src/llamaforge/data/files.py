"""Dataset files → raw rows, each with its place in the file for error messages.

Contract: :func:`read_rows` returns ``[(row, source), ...]`` where ``row`` is a dict
(JSON object, CSV row keyed by header, or ``{"text": ...}`` for ``.txt`` blocks) and
``source`` reads like ``data.json: record 12 (line 57)``. Every problem a user can
cause (missing file, empty file, non-UTF-8 bytes, broken JSON, a top level that is
not a list) raises :class:`~llamaforge.errors.DataError` with one line naming the
file, the line and column or record, and the fix. Nothing here knows about formats.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from llamaforge.errors import DataError

Row = tuple[dict[str, Any], str]

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv", ".tab")
TEXT_SUFFIXES = (".txt", ".text", ".md")
SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + CSV_SUFFIXES + TEXT_SUFFIXES

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM is dropped), not empty, else a one-line DataError."""
    if not path.exists():
        raise DataError(
            f"{path}: file not found; check the path (relative paths start at the current directory or the dataset_dir)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory; name a data file inside it")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {e.start}: 0x{raw[e.start]:02x}); "
            "re-save the file as UTF-8 (e.g. `iconv -f GB18030 -t UTF-8`)"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; add records or remove it from `dataset`")
    return text


def _json_error(path: Path, e: json.JSONDecodeError, line_offset: int = 0) -> DataError:
    return DataError(
        f"{path}:{e.lineno + line_offset}:{e.colno}: invalid JSON ({e.msg}); fix the syntax there"
    )


def _record_source(path: Path, index: int, line: int) -> str:
    return f"{path}: record {index} (line {line})"


def _parse_json_list(path: Path, text: str) -> list[Row]:
    """Parse a top-level JSON array element by element so each record knows its line."""
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if text[pos] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        kind = type(value).__name__ if not isinstance(value, dict) else "object"
        raise DataError(
            f"{path}:1: top level is a JSON {kind}, expected a list of records "
            "(`[{...}, {...}]`); wrap the records in [...] or use JSON Lines (.jsonl)"
        )
    rows: list[Row] = []
    line, line_pos = 1, 0
    pos += 1
    while True:
        pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == "]" and not rows:
            pos += 1
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        rows.append((value, _record_source(path, len(rows) + 1, line)))
        pos = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            pos += 1
            break
        # Let the real parser produce the message and position ("Expecting ',' delimiter").
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        raise DataError(f"{path}: invalid JSON after record {len(rows)}; fix the syntax there")
    rest = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
    if rest != len(text):
        line_no = text.count("\n", 0, rest) + 1
        raise DataError(
            f"{path}:{line_no}: extra data after the closing ']'; remove it or use JSON Lines"
        )
    return rows


def parse_jsonl_line(path: Path, line_no: int, line: str) -> Any:
    """One JSON Lines record (of a non-blank line); a DataError names the line and column."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{line_no}:{e.colno}: invalid JSON in this record ({e.msg}); "
            "each line of a .jsonl file must be one complete JSON object"
        ) from None


def _parse_jsonl(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append((parse_jsonl_line(path, line_no, line), f"{path}:{line_no}"))
    return rows


def _looks_like_jsonl(text: str) -> bool:
    """A .json file that is really JSON Lines: one object per line, more than one line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        json.loads(lines[0])
        json.loads(lines[1])
    except json.JSONDecodeError:
        return False
    return True


def _parse_csv(path: Path, text: str) -> list[Row]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(f"{path}:1: unreadable CSV header ({e}); check the quoting") from None
    header = [name.strip() for name in header]
    rows: list[Row] = []
    start = 2
    try:
        for values in reader:
            line = start
            start = reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}:{line}: row has {len(values)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}); quote fields that contain "
                    f"{'tabs' if delimiter == chr(9) else 'commas'} or newlines"
                )
            rows.append((dict(zip(header, values, strict=True)), f"{path}:{line}"))
    except csv.Error as e:
        raise DataError(
            f"{path}:{reader.line_num}: unreadable CSV ({e}); check the quoting"
        ) from None
    if not rows:
        raise DataError(f"{path}: has a header but no rows; add rows under the header")
    return rows


def _parse_text(path: Path, text: str) -> list[Row]:
    """One document per blank-line-separated block."""
    rows: list[Row] = []
    block: list[str] = []
    first = 0
    for line_no, line in enumerate([*text.splitlines(), ""], start=1):
        if line.strip():
            if not block:
                first = line_no
            block.append(line)
        elif block:
            rows.append(({"text": "\n".join(block)}, f"{path}:{first}"))
            block = []
    return rows


def read_rows(path: Path) -> list[Row]:
    """Rows of a JSON (list), JSON Lines, CSV/TSV or text file, chosen by extension."""
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = _parse_jsonl(path, text)
    elif suffix in CSV_SUFFIXES:
        return _parse_csv(path, text)
    elif suffix in TEXT_SUFFIXES:
        return _parse_text(path, text)
    elif suffix in JSON_SUFFIXES or text.lstrip()[:1] in "[{":
        rows = _parse_jsonl(path, text) if _looks_like_jsonl(text) else _parse_json_list(path, text)
    else:
        raise DataError(f"{path}: unknown file type '{suffix}'; use one of {', '.join(SUFFIXES)}")
    if not rows:
        raise DataError(f"{path}: contains no records; add records or remove it from `dataset`")
    for row, source in rows:
        if not isinstance(row, dict):
            raise DataError(
                f"{source}: expected a JSON object ({{...}}), got {json_kind(row)}; "
                "each record must be an object with named fields"
            )
    return rows


def json_kind(value: object) -> str:
    """The JSON name of a Python value's type, for messages ("a number", "a list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
