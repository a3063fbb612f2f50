"""`llamaforge config keys`: every key with its section, default and docstring."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools

from llamaforge.config import sections
from llamaforge.config.loader import ALIASES
from llamaforge.config.stages import STAGES


def _field_docs() -> dict[tuple[str, str], str]:
    """Attribute docstrings (the string literal right after each annotated field), by
    (class name, field name): stage sections may share a field name, each with its doc."""
    tree = ast.parse(inspect.getsource(sections))
    docs: dict[tuple[str, str], str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.name, stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _section_lines(cls: type, docs: dict[tuple[str, str], str]) -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        # A field declared in a base class has its doc there (the nearest declaration wins).
        doc = next(
            (docs[k.__name__, f.name] for k in cls.__mro__ if (k.__name__, f.name) in docs), ""
        )
        lines.append(f"  {f.name} = {default!r}\n      {doc}")
    return lines


def describe_keys() -> str:
    """Every section every stage has, then each stage's own keys."""
    docs = _field_docs()
    lines = ["Keys of every stage:"]
    for section, cls in sections.SECTIONS.items():
        lines.append(f"[{section}]")
        lines.extend(_section_lines(cls, docs))
    for name, stage in STAGES.items():
        lines.append(f"[{name}] stage {name} only: {stage.summary}")
        lines.extend(_section_lines(stage.options, docs))
    aliases = ", ".join(f"{k} → {v}" for k, v in ALIASES.items())
    lines.append(f"aliases: {aliases}")
    return "\n".join(lines)
