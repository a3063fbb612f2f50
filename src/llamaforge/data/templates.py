"""Prompt templates (alpaca-lora JSON files) and chat templates (Jinja), as data.

Contract:

- :data:`TEMPLATES` maps each built-in name to its file: prompt templates in
  ``templates/*.json`` (alpaca-lora layout ``{description, prompt_input,
  prompt_no_input, response_split}``), chat templates in ``chat_templates/*.jinja``;
  ``chat`` is the tokenizer's own chat template. A ``.json``/``.jinja`` file dropped into
  ``templates_dir`` adds (or replaces) a template of that name.
- :func:`render_segments` turns messages into text :class:`Segment` s, each marked
  trained (an assistant answer) or not, with ``eos`` where an EOS token follows. Training
  (:mod:`llamaforge.data.tokenization`) and generation (:func:`render_prompt`) both use
  it, so the prompt a model is trained on is the prompt it is given at inference.
- Prompt templates: one turn is ``format_prompt(instruction, input)`` then the answer
  then EOS; a system message goes before the first prompt followed by a blank line; later
  turns start with a blank line (LLaMA-Factory style multi-turn).
- Chat templates: turn boundaries come from rendering prefixes of the conversation
  (``messages[:i]`` with the generation prompt, ``messages[:i+1]`` without). An answer is
  trained up to and including the template's end-of-turn marker (``<|im_end|>``,
  ``<|eot_id|>``, ``</s>``); text after it (a newline) belongs to the next prompt. A
  template that ends turns with no marker gets the tokenizer's EOS when ``add_eos_token``.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from llamaforge.data.formats import Message
from llamaforge.errors import ConfigError, DataError

# Built-in templates: name → package file ("" = the tokenizer's own chat template).
TEMPLATES: dict[str, str] = {
    "chat": "",
    "chatml": "chat_templates/chatml.jinja",
    "llama2": "chat_templates/llama2.jinja",
    "llama3": "chat_templates/llama3.jinja",
    "alpaca": "templates/alpaca.json",
    "alpaca_legacy": "templates/alpaca_legacy.json",
    "alpaca_short": "templates/alpaca_short.json",
    "vigogne": "templates/vigogne.json",
}

_PROBE = "llamaforge-probe-answer"


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    """True for assistant answers (they carry labels unless train_on_inputs trains all)."""
    eos: bool = False
    """Append the tokenizer's EOS token after this segment's tokens."""


@dataclass(frozen=True)
class PromptTemplate:
    """An alpaca-lora style prompt template (``str.format`` placeholders)."""

    name: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    description: str = ""

    def format_prompt(self, instruction: str, input: str = "", output: str = "") -> str:
        """The prompt for one instruction (and input), followed by ``output`` if given."""
        if input:
            text = self.prompt_input.format(instruction=instruction, input=input)
        else:
            text = self.prompt_no_input.format(instruction=instruction)
        return text + output

    def get_response(self, text: str) -> str:
        """The answer in a generated ``text``: what follows the response marker, stripped."""
        parts = text.split(self.response_split)
        return parts[1].strip() if len(parts) > 1 else ""

    @property
    def stop_strings(self) -> list[str]:
        """The line that opens an instruction (``### Instruction:``): the model is done."""
        head = self.prompt_no_input.split("{instruction}")[0].rstrip()
        line = head.splitlines()[-1].strip() if head else ""
        return [line] if line else []


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template; ``source`` None means the tokenizer's own."""

    name: str
    source: str | None = None

    def jinja(self, tokenizer: Any) -> str:
        if self.source is not None:
            return self.source
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(
                "template 'chat': this model's tokenizer has no chat template; set "
                "`template: alpaca` (or another prompt template) or a chat template name: "
                f"{', '.join(n for n, f in TEMPLATES.items() if f.endswith('.jinja'))}"
            )
        return str(tokenizer.get_chat_template())


Template = PromptTemplate | ChatTemplate


# ---------------------------------------------------------------------------- loading


def _prompt_template(name: str, text: str, where: str) -> PromptTemplate:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: must be a JSON object with prompt_input, prompt_no_input, response_split"
        )
    wanted = {
        "prompt_input": {"instruction", "input"},
        "prompt_no_input": {"instruction"},
        "response_split": set(),
    }
    for key, fields in wanted.items():
        value = data.get(key)
        if not isinstance(value, str) or (key == "response_split" and not value):
            raise ConfigError(f"{where}: key '{key}' must be a non-empty string; add it")
        try:
            found = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as e:
            raise ConfigError(
                f"{where}: key '{key}': {e}; write literal braces as {{{{ }}}}"
            ) from None
        if found != fields:
            raise ConfigError(
                f"{where}: key '{key}' has placeholders {sorted(found)}, expected "
                f"{sorted(fields)}; write literal braces as {{{{ }}}}"
            )
    return PromptTemplate(
        name=name,
        prompt_input=data["prompt_input"],
        prompt_no_input=data["prompt_no_input"],
        response_split=data["response_split"],
        description=str(data.get("description", "")),
    )


def _load_file(name: str, text: str, suffix: str, where: str) -> Template:
    if suffix == ".jinja":
        return ChatTemplate(name, text)
    return _prompt_template(name, text, where)


def _user_templates(templates_dir: str | Path | None) -> dict[str, Path]:
    if templates_dir is None:
        return {}
    directory = Path(templates_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"key 'templates_dir': {directory} is not a directory; create it or fix the path"
        )
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in (".json", ".jinja")}


def template_names(templates_dir: str | Path | None = None) -> list[str]:
    return sorted({*TEMPLATES, *_user_templates(templates_dir)})


def get_template(name: str | None, templates_dir: str | Path | None = None) -> Template:
    """The template called ``name`` (None: ``chat``): a file in ``templates_dir``, a built-in,
    or a file path."""
    name = name or "chat"
    user = _user_templates(templates_dir)
    if name in user:
        path = user[name]
        return _load_file(name, path.read_text(encoding="utf-8"), path.suffix, str(path))
    if name in TEMPLATES:
        if not TEMPLATES[name]:
            return ChatTemplate(name)
        return _cached_builtin(name)
    path = Path(name)
    if path.suffix in (".json", ".jinja") and path.is_file():
        return _load_file(path.stem, path.read_text(encoding="utf-8"), path.suffix, str(path))
    raise ConfigError(
        f"unknown template '{name}'; choose one of: {', '.join(template_names(templates_dir))} "
        "(or drop a .json/.jinja file into templates_dir)"
    )


@functools.cache
def _cached_builtin(name: str) -> Template:
    relative = TEMPLATES[name]
    text = resources.files("llamaforge.data").joinpath(relative).read_text(encoding="utf-8")
    return _load_file(name, text, Path(relative).suffix, relative)


def _resolve(template: str | Template, templates_dir: str | Path | None) -> Template:
    return get_template(template, templates_dir) if isinstance(template, str) else template


# ---------------------------------------------------------------------------- rendering


def _split_system(messages: Sequence[Message], source: str) -> tuple[str, list[Message]]:
    if messages and messages[0].role == "system":
        return messages[0].content, list(messages[1:])
    return "", list(messages)


def _check_pairs(turns: Sequence[Message], source: str, generation: bool) -> None:
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise DataError(
                f"{source or 'messages'}: message {i} is from the {m.role}, expected the "
                f"{expected}; turns must alternate user/assistant after an optional system message"
            )
    last = "user" if generation else "assistant"
    if not turns or turns[-1].role != last:
        raise DataError(
            f"{source or 'messages'}: the last message must be from the {last} "
            f"({'to generate an answer' if generation else 'to train on it'})"
        )


def _prompt_segments(
    template: PromptTemplate,
    messages: Sequence[Message],
    add_eos_token: bool,
    generation: bool,
    source: str,
) -> list[Segment]:
    system, turns = _split_system(messages, source)
    _check_pairs(turns, source, generation)
    segments = []
    for i in range(0, len(turns), 2):
        user = turns[i]
        head = (system + "\n\n" if system else "") if i == 0 else "\n\n"
        segments.append(Segment(head + template.format_prompt(user.content, user.input), False))
        if i + 1 < len(turns):
            segments.append(Segment(turns[i + 1].content, True, eos=add_eos_token))
    return segments


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text} for m in messages]


def _render(
    tokenizer: Any, jinja: str, messages: list[dict[str, str]], generation: bool, source: str = ""
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation
        )
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"chat template: Jinja syntax error at line {e.lineno} ({e.message}); fix the template"
        ) from None
    except (jinja2.TemplateError, ValueError) as e:  # raise_exception() in the template
        raise DataError(
            f"{source or 'messages'}: the chat template refused this conversation ({e}); "
            "fix the record or choose another template"
        ) from None
    return str(text)


@functools.lru_cache(maxsize=64)
def end_of_turn(tokenizer: Any, jinja: str) -> str:
    """The marker a chat template writes after an answer (``<|im_end|>``), or ""."""
    user = [{"role": "user", "content": "Hi"}]
    prompt = _render(tokenizer, jinja, user, True)
    full = _render(tokenizer, jinja, [*user, {"role": "assistant", "content": _PROBE}], False)
    after = full[len(prompt) :].split(_PROBE, 1)
    return after[1].strip() if full.startswith(prompt) and len(after) == 2 else ""


def _chat_segments(
    template: ChatTemplate,
    tokenizer: Any,
    messages: Sequence[Message],
    add_eos_token: bool,
    generation: bool,
    source: str,
) -> list[Segment]:
    _, turns = _split_system(messages, source)
    _check_pairs(turns, source, generation)
    jinja = template.jinja(tokenizer)
    marker = end_of_turn(tokenizer, jinja)
    dicts = _as_dicts(messages)
    offset = len(messages) - len(turns)
    segments: list[Segment] = []
    done = ""  # the rendered text already covered by segments
    for i in range(offset + 1, len(messages) + 1, 2):
        prompt = _render(tokenizer, jinja, dicts[:i], True, source)
        if not prompt.startswith(done):
            raise _unstable(template, source, i)
        segments.append(Segment(prompt[len(done) :], False))
        if i == len(messages):
            break
        full = _render(tokenizer, jinja, dicts[: i + 1], False, source)
        if not full.startswith(prompt):
            raise _unstable(template, source, i)
        answer = full[len(prompt) :]
        cut = answer.rfind(marker) + len(marker) if marker and marker in answer else len(answer)
        eos = add_eos_token and not (marker and marker in answer)
        segments.append(Segment(answer[:cut], True, eos=eos))
        done = prompt + answer[:cut]
        if i + 1 == len(messages) and cut < len(answer):
            segments.append(Segment(answer[cut:], False))
    return [s for s in segments if s.text or s.eos]


def _unstable(template: ChatTemplate, source: str, turn: int) -> ConfigError:
    return ConfigError(
        f"{source or 'messages'}: chat template '{template.name}' renders turn {turn} in a way "
        "that does not extend the earlier turns, so answers cannot be located; use "
        "`template: chatml` (or llama2 | llama3) for training"
    )


def render_segments(
    template: str | Template,
    messages: Sequence[Message],
    tokenizer: Any,
    *,
    add_eos_token: bool = True,
    generation: bool = False,
    templates_dir: str | Path | None = None,
    source: str = "",
) -> list[Segment]:
    """Messages → text segments. ``generation``: messages end with the user and the last
    segment is the prompt for the answer; otherwise they end with the assistant."""
    template = _resolve(template, templates_dir)
    if isinstance(template, PromptTemplate):
        return _prompt_segments(template, messages, add_eos_token, generation, source)
    return _chat_segments(template, tokenizer, messages, add_eos_token, generation, source)


def render_prompt(
    tokenizer: Any,
    template_name: str | Template,
    messages: Sequence[Message],
    templates_dir: str | Path | None = None,
    *,
    add_eos_token: bool = True,
) -> str:
    """The text a model continues to answer the last (user) message, history included.

    EOS tokens between earlier turns are written as the tokenizer's EOS text. To get token
    ids identical to training use :func:`llamaforge.data.tokenization.encode_prompt`.
    """
    segments = render_segments(
        template_name,
        messages,
        tokenizer,
        add_eos_token=add_eos_token,
        generation=True,
        templates_dir=templates_dir,
    )
    eos = tokenizer.eos_token or ""
    return "".join(s.text + (eos if s.eos else "") for s in segments)


def stop_strings_for(
    template: str | Template, tokenizer: Any, templates_dir: str | Path | None = None
) -> list[str]:
    """Strings that end an answer: the template's next-turn header or end-of-turn marker."""
    template = _resolve(template, templates_dir)
    if isinstance(template, PromptTemplate):
        stops = template.stop_strings
    else:
        marker = end_of_turn(tokenizer, template.jinja(tokenizer))
        stops = [marker] if marker else []
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    return stops
