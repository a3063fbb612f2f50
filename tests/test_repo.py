"""The README's set-up commands are the ones CI runs, and the package keeps its shape:
imports point down the layers, no private name crosses a module, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "llamaforge"

# The layers, bottom first: a package imports only from layers below its own (lazy imports
# inside functions included) and never from a package beside it.
LAYERS = [
    {"errors"},
    {"config"},
    {"rundir"},
    {"data", "adapters"},
    {"models"},
    {"training", "inference"},
    {"serving", "evaluation", "export"},
    {"rewards"},  # reward-model scores (evaluation's scorer), held-out answers (inference)
    {"methods", "webui", "selfinstruct"},  # selfinstruct uses evaluation's segmentation
    {"pipeline"},  # runs stages (methods)
    {"cli"},
    {"__main__"},
]
LAYER = {package: n for n, packages in enumerate(LAYERS) for package in packages}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return found


def _package(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def test_ci_runs_the_readme_test_command() -> None:
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci_command and "ruff check" in ci_command and "mypy" in ci_command
    assert ci_command in (ROOT / "README.md").read_text()


def test_imports_never_run_back_up_the_layers() -> None:
    wrong = []
    for path in SRC.rglob("*.py"):
        package = _package(path)
        if package == "__init__":
            continue
        for line, module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] != "llamaforge" or len(parts) == 1 or parts[1] == package:
                continue
            if LAYER[parts[1]] >= LAYER[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_from_another_module() -> None:
    wrong = []
    for path in [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for line, module, names in _imports(path):
            if module.startswith("llamaforge"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or any(p.startswith("_") for p in module.split(".")[1:]):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} {private}")
    assert not wrong, "\n".join(wrong)


def test_modules_stay_small_and_stages_short() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in SRC.rglob("*.py")}
    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in sizes.items() if n > 500]
    assert not too_long, too_long
    assert sizes[SRC / "methods" / "sft.py"] < 100
