"""Ollama ``Modelfile`` next to an exported GGUF: template, stop tokens, default system prompt.

Contract: :func:`write_modelfile` picks the Go template whose rendering equals the
tokenizer's own chat template on a probe conversation (system, user, assistant, user,
generation prompt). Known families are data in ``TEMPLATE_FAMILIES``; when none matches,
the Modelfile has no ``TEMPLATE`` line (Ollama then falls back to the GGUF's
``tokenizer.chat_template``) and a warning is logged. The default system prompt a chat
template inserts on its own (SmolLM2 does) becomes the ``SYSTEM`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Message = dict[str, str]
PROBE: list[Message] = [
    {"role": "system", "content": "SYSTEM-3141"},
    {"role": "user", "content": "USER-2718"},
    {"role": "assistant", "content": "ASSISTANT-1618"},
    {"role": "user", "content": "USER-1414"},
]


@dataclass(frozen=True)
class TemplateFamily:
    go_template: str
    """Ollama template over ``.Messages`` (Ollama puts SYSTEM in as the first message)."""
    stop: tuple[str, ...]
    render: Callable[[list[Message]], str]
    """Python twin of ``go_template`` with the generation prompt, to compare renderings."""


def _chatml(messages: list[Message]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _llama3(messages: list[Message]) -> str:
    turns = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
        for m in messages
    )
    return turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


TEMPLATE_FAMILIES: dict[str, TemplateFamily] = {
    "chatml": TemplateFamily(
        go_template=(
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
            "{{ .Content }}<|im_end|>\n"
            "{{ end }}<|im_start|>assistant\n"
        ),
        stop=("<|im_end|>", "<|im_start|>"),
        render=_chatml,
    ),
    "llama3": TemplateFamily(
        go_template=(
            "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            "{{ .Content }}<|eot_id|>"
            "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        stop=("<|eot_id|>", "<|start_header_id|>"),
        render=_llama3,
    ),
}


def _render(tokenizer: Any, messages: list[Message]) -> str | None:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template may raise anything (jinja errors, raise_exception)
        logger.debug("chat template failed on the probe conversation: %s", e)
        return None
    return text


def match_template_family(tokenizer: Any) -> str | None:
    """Name of the family whose rendering equals the tokenizer's chat template, or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    rendered = _render(tokenizer, PROBE)
    # llama.cpp/Ollama add BOS themselves when the GGUF says so; a template may spell it out.
    bos = getattr(tokenizer, "bos_token", None) or ""
    for name, family in TEMPLATE_FAMILIES.items():
        if rendered in (family.render(PROBE), bos + family.render(PROBE)):
            return name
    return None


def default_system_prompt(tokenizer: Any, family: str) -> str | None:
    """The system prompt the chat template adds when the conversation has none."""
    user_only = PROBE[1:2]
    rendered = _render(tokenizer, user_only)
    plain = TEMPLATE_FAMILIES[family].render(user_only)
    if rendered is None or rendered == plain or not rendered.endswith(plain):
        return None
    prefix = rendered.removesuffix(plain)
    # The prefix is a rendered system turn: recover its content by rendering a sentinel.
    sentinel = TEMPLATE_FAMILIES[family].render([{"role": "system", "content": "\x00"}])
    head, _, tail = sentinel.partition("\x00")
    tail = tail.removesuffix(TEMPLATE_FAMILIES[family].render([]))
    if prefix.startswith(head) and prefix.endswith(tail):
        return prefix[len(head) : len(prefix) - len(tail)]
    return None


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(gguf_name: str, tokenizer: Any, *, system: str | None = None) -> str:
    lines = [f"FROM ./{gguf_name}"]
    family = match_template_family(tokenizer)
    if family is None:
        if getattr(tokenizer, "chat_template", None):
            logger.warning(
                "the chat template matches none of %s: the Modelfile has no TEMPLATE line "
                "(Ollama will read tokenizer.chat_template from the GGUF)",
                ", ".join(TEMPLATE_FAMILIES),
            )
        return "\n".join(lines) + "\n"
    spec = TEMPLATE_FAMILIES[family]
    lines.append(f"TEMPLATE {_quote(spec.go_template)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in spec.stop]
    system = system if system is not None else default_system_prompt(tokenizer, family)
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, tokenizer: Any, *, system: str | None = None) -> Path:
    """Write ``Modelfile`` next to ``gguf_path`` (atomically) and return its path."""
    path = gguf_path.parent / "Modelfile"
    staging = path.with_name(".Modelfile.tmp")
    staging.write_text(modelfile_text(gguf_path.name, tokenizer, system=system), encoding="utf-8")
    staging.replace(path)
    return path
