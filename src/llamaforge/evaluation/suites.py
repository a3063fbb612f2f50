"""Multiple-choice suites on disk: the MMLU / C-Eval / CMMLU CSV layout.

Contract: a suite is a folder with one CSV per subject in each split folder (``dev/``,
``test/``, ``val/``); a file is named ``{subject}.csv`` or ``{subject}_{split}.csv``. Three
row layouts are read, told apart by the first row:

- CMMLU: header ``,Question,A,B,C,D,Answer`` (the first, unnamed column is a row index);
- C-Eval: header ``id,question,A,B,C,D,answer,explanation``;
- MMLU (the original release): no header, six fields ``question,A,B,C,D,answer``.

Header names are matched without case; other columns are ignored. A question's ``id`` is
the file's ``id`` (or unnamed index) column, else its 0-based row number. The answer must be
one of A, B, C, D. Every problem (missing folder or answer column, empty file, a wrong
letter, a short row) raises one DataError line naming the file and line. An optional
``subjects.json`` in the suite folder maps a subject to the name its prompt uses.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamaforge.data.files import read_text
from llamaforge.errors import ConfigError, DataError

LETTERS = ("A", "B", "C", "D")
SUBJECT_NAMES_FILE = "subjects.json"
SHOTS_SPLIT = "dev"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class Question:
    subject: str
    id: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str
    """The gold letter, one of LETTERS."""
    source: str
    """``path:line`` of the row, for messages."""


@dataclass(frozen=True)
class Subject:
    name: str
    questions: tuple[Question, ...]
    """The evaluated split, in file order."""
    shots: tuple[Question, ...]
    """Few-shot examples: the first K rows of ``dev``."""


@dataclass(frozen=True)
class Suite:
    path: Path
    split: str
    subjects: tuple[Subject, ...]
    layout: str
    """``mmlu``, ``cmmlu`` or ``ceval``: the row layout of the first file read."""
    subject_names: dict[str, str]
    """From ``subjects.json``: subject → the name its prompt uses."""

    @property
    def chinese(self) -> bool:
        """True when most questions hold CJK characters (the prompt is then in Chinese)."""
        questions = [q.question for s in self.subjects for q in s.questions]
        return sum(bool(_CJK.search(q)) for q in questions) * 2 > len(questions)


@dataclass(frozen=True)
class _Columns:
    """Positions of the fields in a row; ``id`` is None when rows are numbered."""

    question: int
    choices: tuple[int, int, int, int]
    answer: int
    id: int | None
    layout: str
    width: int


MMLU_COLUMNS = _Columns(0, (1, 2, 3, 4), 5, None, "mmlu", 6)


def _header_columns(path: Path, header: Sequence[str]) -> _Columns | None:
    """The columns a header row names, None when the row is not a header."""
    names = [h.strip().lower() for h in header]
    if "question" not in names or not all(letter.lower() in names for letter in LETTERS):
        return None
    if "answer" not in names:
        hint = (
            " (C-Eval's test split has no answers: evaluate --split val)" if "id" in names else ""
        )
        raise DataError(
            f"{path}:1: the header has no 'answer' column (columns: {', '.join(header)}){hint}; "
            "add the gold letter A-D in a column named answer"
        )
    if "id" in names:
        id_column: int | None = names.index("id")
    else:
        id_column = names.index("") if "" in names else None
    layout = "ceval" if "explanation" in names or "id" in names else "cmmlu"
    return _Columns(
        names.index("question"),
        (names.index("a"), names.index("b"), names.index("c"), names.index("d")),
        names.index("answer"),
        id_column,
        layout,
        len(names),
    )


def read_questions(path: Path, subject: str) -> tuple[list[Question], str]:
    """(questions of one CSV file, its layout); see the module docstring."""
    text = read_text(path)  # missing, not UTF-8 or empty: one DataError line
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader if any(v.strip() for v in row)]
    except csv.Error as e:
        raise DataError(
            f"{path}:{reader.line_num}: unreadable CSV ({e}); check the quoting"
        ) from None
    if not rows:
        raise DataError(f"{path}: file is empty; add rows or remove the file")
    columns = _header_columns(path, rows[0][1])
    if columns is None:
        if len(rows[0][1]) != MMLU_COLUMNS.width:
            raise DataError(
                f"{path}:{rows[0][0]}: no header naming question, A, B, C, D, answer, and "
                f"{len(rows[0][1])} fields where the headerless MMLU layout has 6 "
                "(question,A,B,C,D,answer)"
            )
        columns = MMLU_COLUMNS
    else:
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: has a header but no questions; add rows under it")
    questions = []
    for number, (line, row) in enumerate(rows):
        where = f"{path}:{line}"
        if len(row) < columns.width:
            raise DataError(
                f"{where}: row has {len(row)} fields where {columns.width} are expected; "
                "quote fields that contain commas or newlines"
            )
        answer = row[columns.answer].strip()
        if answer not in LETTERS:
            hint = (
                " (C-Eval's test split has no answers; evaluate --split val)" if not answer else ""
            )
            raise DataError(
                f"{where}: answer '{answer}' is not one of A, B, C, D{hint}; "
                "write the gold choice's letter"
            )
        a, b, c, d = (row[i] for i in columns.choices)
        qid = row[columns.id].strip() if columns.id is not None else str(number)
        questions.append(Question(subject, qid, row[columns.question], (a, b, c, d), answer, where))
    return questions, columns.layout


def _subject_files(folder: Path, split: str) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.glob("*.csv")):
        files[path.stem.removesuffix(f"_{split}")] = path
    return files


def _subject_names(path: Path) -> dict[str, str]:
    file = path / SUBJECT_NAMES_FILE
    if not file.is_file():
        return {}
    try:
        names = json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise DataError(f"{file}: expected an object of subject → name strings")
    return names


def is_suite_folder(path: Path) -> bool:
    """A folder that looks like a suite: it has a dev/, test/ or val/ folder of CSVs."""
    return path.is_dir() and any((path / s).is_dir() for s in ("dev", "test", "val"))


def read_suite(
    path: str | Path,
    split: str = "test",
    *,
    shots: int = 0,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
) -> Suite:
    """Read a suite folder: each subject's ``split`` questions (the first ``limit`` of each
    when set) and, for ``shots`` > 0, its first ``shots`` dev rows."""
    path = Path(path)
    folder = path / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; a suite folder holds {SHOTS_SPLIT}/ and {split}/ with "
            "one CSV per subject (MMLU / C-Eval / CMMLU layout); check --split"
        )
    files = _subject_files(folder, split)
    if not files:
        raise DataError(f"{folder}: holds no .csv files (one per subject)")
    names = list(files)
    if subjects:
        unknown = [s for s in subjects if s not in files]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"--subjects: no subject '{unknown[0]}' in {folder}; {hint}"
                f"known: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
            )
        names = list(dict.fromkeys(subjects))
    dev_files = _subject_files(path / SHOTS_SPLIT, SHOTS_SPLIT) if shots else {}
    read: list[Subject] = []
    layout = ""
    for name in names:
        questions, file_layout = read_questions(files[name], name)
        layout = layout or file_layout
        examples: list[Question] = []
        if shots:
            if name not in dev_files:
                raise DataError(
                    f"{path / SHOTS_SPLIT}: no {name}.csv for the {shots}-shot examples of "
                    f"subject '{name}'; add it or evaluate with --shots 0"
                )
            examples = read_questions(dev_files[name], name)[0]
            if len(examples) < shots:
                raise DataError(
                    f"{dev_files[name]}: {len(examples)} examples, fewer than --shots {shots}"
                )
        read.append(Subject(name, tuple(questions[:limit]), tuple(examples[:shots])))
    return Suite(path, split, tuple(read), layout, _subject_names(path))
