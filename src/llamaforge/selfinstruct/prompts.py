"""The four prompts of self-instruct, as editable text files, and readers of their answers.

Contract: a prompt set is four files per language in ``prompts/<lang>/`` (shipped with the
package): ``brainstorm.txt`` ($tasks, $count: write new instructions), ``classify.txt``
($instruction: is it a classification task?), ``instance_input_first.txt`` ($instruction:
an input if the task needs one, then the output — or just the output) and
``instance_output_first.txt`` ($example, $instruction: for classification tasks, the class
label first, then an input of that class; $example is a seed task in that layout). ``--prompts DIR`` replaces any of them with
``DIR/<name>.txt``; a file that uses an unknown ``$name`` or misses a required one is a
ConfigError naming the file. Placeholders are ``string.Template`` ones (``$$`` is a dollar).

The answers are read with fixed markers, in either language: numbered or bulleted lines for
new instructions; ``Input:`` / ``Output:`` / ``Class label:`` (``输入：`` / ``输出：`` /
``类别：``) for instances (an input-first answer with neither ``Input:`` nor ``Output:`` is the
output of a task without input); yes/no (是/否) for the classification question. A prompt edited to
ask for other markers needs these readers changed too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from llamaforge.errors import ConfigError
from llamaforge.selfinstruct.seeds import SeedTask

PLACEHOLDERS = {
    "brainstorm": {"tasks", "count"},
    "classify": {"instruction"},
    "instance_input_first": {"instruction"},
    "instance_output_first": {"example", "instruction"},
}
# How an example instance is laid out in the instance prompts (and read back from answers).
LABELS = {
    "en": {"task": "Task", "input": "Input", "output": "Output", "label": "Class label"},
    "zh": {"task": "任务", "input": "输入", "output": "输出", "label": "类别"},
}
NONE_INPUTS = {"none", "<none>", "(none)", "n/a", "no input", "empty", "无", "（无）", "没有"}

_ITEM = re.compile(r"^\s*(?:\(?\d{1,3}\s*[.)、:：．]|[-*•])\s*(.+?)\s*$")
_NUMBER = re.compile(r"^(?:\d{1,3}\s*[.)、:：．]\s*)+")
_TASK_PREFIX = re.compile(
    r"^(?:\*\*)?(?:task|instruction|任务|指令)\s*\d*\s*(?:\*\*)?\s*[:：]\s*", re.I
)
_MARKER = re.compile(
    r"^[ \t]*(?:\*\*)?(task|instruction|input|output|class label|label|任务|指令|输入|输出|类别|标签)"
    r"[ \t]*(?:\*\*)?[ \t]*[:：](?:\*\*)?[ \t]*",
    re.I | re.M,
)
_KIND = {
    "task": "task",
    "instruction": "task",
    "任务": "task",
    "指令": "task",
    "input": "input",
    "输入": "input",
    "output": "output",
    "输出": "output",
    "class label": "label",
    "label": "label",
    "类别": "label",
    "标签": "label",
}


@dataclass(frozen=True)
class Prompts:
    lang: str
    templates: dict[str, Template]
    sources: dict[str, str]  # name → the file it was read from

    def fingerprint(self) -> str:
        """A hash of the prompt texts: a resumed run must use the same prompts."""
        joined = "\0".join(self.templates[name].template for name in PLACEHOLDERS)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def brainstorm(self, instructions: list[str], count: int) -> str:
        tasks = "\n".join(f"{i}. {text}" for i, text in enumerate(instructions, start=1))
        return self.templates["brainstorm"].substitute(tasks=tasks, count=count)

    def classify(self, instruction: str) -> str:
        return self.templates["classify"].substitute(instruction=instruction)

    def instance_input_first(self, instruction: str) -> str:
        return self.templates["instance_input_first"].substitute(instruction=instruction)

    def instance_output_first(self, instruction: str, example: SeedTask) -> str:
        """The classification-instance prompt; ``example`` is shown as task, label, input."""
        labels, first = LABELS[self.lang], example.instances[0]
        colon = "：" if self.lang == "zh" else ": "
        given = first.input.strip() or ("none" if self.lang == "en" else "无")
        lines = [
            f"{labels['task']}{colon}{example.instruction}",
            f"{labels['label']}{colon}{first.output}",
            f"{labels['input']}{colon}{given}",
        ]
        return self.templates["instance_output_first"].substitute(
            example="\n".join(lines), instruction=instruction
        )


def _identifiers(template: Template) -> set[str]:
    found = set()
    for match in template.pattern.finditer(template.template):
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    return found


def _read_template(path: Path, name: str) -> Template:
    try:
        template = Template(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read this prompt ({e})") from None
    used, needed = _identifiers(template), PLACEHOLDERS[name]
    if not template.is_valid():
        raise ConfigError(f"{path}: a '$' that is no placeholder; write '$$' for a dollar sign")
    if used - needed:
        raise ConfigError(
            f"{path}: unknown placeholder(s) {', '.join(sorted('$' + u for u in used - needed))}; "
            f"this prompt takes {', '.join(sorted('$' + n for n in needed))}"
        )
    if needed - used:
        raise ConfigError(
            f"{path}: missing placeholder(s) {', '.join(sorted('$' + n for n in needed - used))}"
        )
    return template


def load_prompts(lang: str, directory: str | Path | None = None) -> Prompts:
    """The shipped prompts for ``lang``, each replaced by ``directory/<name>.txt`` if present."""
    shipped = Path(str(files("llamaforge.selfinstruct") / "prompts" / lang))
    if directory is not None and not Path(directory).is_dir():
        raise ConfigError(f"--prompts {directory}: not a directory of <name>.txt prompt files")
    templates, sources = {}, {}
    for name in PLACEHOLDERS:
        path = shipped / f"{name}.txt"
        if directory is not None and (Path(directory) / f"{name}.txt").is_file():
            path = Path(directory) / f"{name}.txt"
        templates[name] = _read_template(path, name)
        sources[name] = str(path)
    return Prompts(lang, templates, sources)


def parse_instructions(text: str, limit: int) -> list[str]:
    """New instructions in an answer: its numbered or bulleted lines (at most ``limit``), or
    the answer itself when it is one line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    items = [m.group(1) for m in map(_ITEM.match, lines) if m is not None]
    if not items and len(lines) == 1:
        items = [lines[0]]
    items = [_NUMBER.sub("", item) for item in items]  # "1. 1. Task" → "Task"
    cleaned = [_TASK_PREFIX.sub("", item).strip().strip("*").strip() for item in items]
    return [item for item in cleaned if item][:limit]


def parse_is_classification(text: str) -> bool:
    """Whether a yes/no answer says yes (anything else counts as no)."""
    answer = text.strip().lstrip("*\"'“「").lower()
    return answer.startswith(("yes", "是", "对")) and not answer.startswith("是否")


def parse_instance(text: str, output_first: bool) -> tuple[str, str] | None:
    """``(input, output)`` of an instance answer, or None when it cannot be read.

    Each field runs to the next marker; a second ``Task:`` (the model starting another
    example) ends the instance. An input of "none"/"无" is an empty input. Output-first
    answers need a class label (or output) marker; an input-first answer without ``Input:``
    and ``Output:`` is an answer to a task without input (up to any ``Task:`` marker), and
    one with an input but no output is None.
    """
    fields: dict[str, str] = {}
    marks = list(_MARKER.finditer(text))
    for i, mark in enumerate(marks):
        kind = _KIND[mark.group(1).lower()]
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        if kind == "task" and fields:
            break
        fields.setdefault(kind, text[mark.end() : end].strip())
    given = fields.get("input", "")
    if given.strip().strip(".。").lower() in NONE_INPUTS:
        given = ""
    if output_first:
        answer = fields.get("label", fields.get("output"))
        return None if answer is None else (given, answer)
    if "output" in fields:
        return given, fields["output"]
    if "input" in fields:
        return None
    return "", text[: marks[0].start() if marks else len(text)].strip()
