"""Request bodies of the OpenAI-compatible API and their translation to our types.

Contract: :class:`ChatCompletionRequest` and :class:`CompletionRequest` accept what the
official ``openai`` client and LangChain send (unknown fields are ignored, as most OpenAI
compatible servers do); features we cannot honour (logprobs, tools, logit_bias, penalties
other than 0, non-text content) are rejected with an :class:`APIError` rather than silently
dropped. :func:`generation_config` turns a request into our :class:`GenerationConfig`,
checking the token budget against the model's context. Every error is an
:class:`APIError` whose :meth:`body` is the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llamaforge.config import GenerationConfig, validate_generation
from llamaforge.data.formats import Message

MAX_N = 16
MAX_STOP = 16
MAX_BEAMS = 8


class APIError(Exception):
    """An error answered to the client in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class _SamplingRequest(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    # Extensions (vLLM spells them the same way).
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    num_beams: int | None = Field(None, ge=1, le=MAX_BEAMS)
    # Accepted only at their neutral values.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check_supported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(
                    400,
                    f"{name} is not supported; use repetition_penalty (> 1 discourages repeats)",
                    param=name,
                )
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(400, f"stop takes at most {MAX_STOP} strings", param="stop")
        return tuple(s for s in stops if s)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise APIError(400, "logprobs is not supported", param="logprobs")
        if self.tools or self.functions:
            raise APIError(400, "tools/function calling is not supported", param="tools")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise APIError(
                400, f"response_format '{kind}' is not supported", param="response_format"
            )

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_messages(self) -> list[Message]:
        """Our messages; consecutive leading system/developer messages become one."""
        system: list[str] = []
        turns: list[Message] = []
        for i, m in enumerate(self.messages):
            text = _content_text(m.content, f"messages[{i}].content")
            if m.role in ("system", "developer"):
                if turns:
                    raise APIError(
                        400,
                        f"messages[{i}]: a {m.role} message must come before the user/assistant "
                        "turns",
                        param=f"messages[{i}].role",
                    )
                system.append(text)
            else:
                turns.append(Message(m.role, text))
        if system:
            turns.insert(0, Message("system", "\n\n".join(system)))
        return turns


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if self.logprobs:
            raise APIError(400, "logprobs is not supported", param="logprobs")
        if self.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported; use n", param="best_of")
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) <= MAX_N:
            raise APIError(400, f"prompt takes 1 to {MAX_N} strings", param="prompt")
        if self.n * len(self.prompts) > MAX_N:
            raise APIError(400, f"n x prompts must be at most {MAX_N}", param="n")

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _content_text(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None:
        raise APIError(400, f"{where} is missing; send the message text", param=where)
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"{where}[{j}]: content type '{part.type}' is not supported; send text parts",
                param=f"{where}[{j}]",
            )
        texts.append(part.text)
    return "".join(texts)


def generation_config(
    request: ChatCompletionRequest | CompletionRequest,
    defaults: GenerationConfig,
    *,
    prompt_tokens: int,
    context_length: int | None,
) -> GenerationConfig:
    """The request's settings over the server's defaults; token budget checked."""
    budget = request.token_budget
    param = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else None
    param = param or "max_tokens"
    if context_length is not None:
        room = context_length - prompt_tokens
        if budget is not None and budget > room:
            raise APIError(
                400,
                f"this model's maximum context length is {context_length} tokens, but "
                f"{prompt_tokens} prompt tokens + {param} {budget} = {prompt_tokens + budget}; "
                f"lower {param} to at most {max(room, 0)} or shorten the prompt",
                param=param,
                code="context_length_exceeded",
            )
        if room < 1:
            raise APIError(
                400,
                f"this model's maximum context length is {context_length} tokens, but the prompt "
                f"has {prompt_tokens} tokens; shorten it",
                param="messages" if isinstance(request, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        if budget is None:
            budget = min(defaults.max_new_tokens, room)
    overrides: dict[str, Any] = {
        "max_new_tokens": budget if budget is not None else defaults.max_new_tokens,
        "stop": request.stop_strings(),
        "sampling_seed": request.seed,
    }
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "num_beams"):
        value = getattr(request, name)
        if value is not None:
            overrides[name] = value
    if request.temperature is not None:
        overrides["do_sample"] = None  # the request's temperature decides
    gen = dataclasses.replace(defaults, **overrides)
    errors = validate_generation(gen)
    if errors:
        raise APIError(400, "; ".join(errors))
    return gen
