"""The generation engine: messages (or raw text) in, text out — batched or streamed.

Everything that generates (``generate``, ``chat``, the API server, evaluation) goes through
:class:`GenerationEngine`:

- ``generate(prompts, gen)`` runs one left-padded batch and returns one
  :class:`GenerationResult` per prompt; greedy results equal one-at-a-time generation.
- ``stream(prompt, gen)`` returns a :class:`TokenStream` yielding text pieces whose
  concatenation equals ``generate([prompt], gen)[0].text``. Closing it early (``close()``,
  ``break`` out of a ``with`` block, garbage collection) stops generation at the next token.

Generation ends at the tokenizer's EOS, at the template's end-of-turn token (``<|im_end|>``,
``<|eot_id|>``, ...), at ``max_new_tokens`` or at a stop string; returned text never contains
the stop string or special tokens. How ids become text and where a stop string cuts it is
:mod:`llamaforge.inference.stops`, shared with the API server's batch scheduler.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ConfigError
from llamaforge.inference.stops import (
    FinishReason,
    decode_token_rows,
    decode_tokens,
    first_stop,
    held_back,
    trim_completion,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llamaforge.config import GenerationConfig, RunConfig
    from llamaforge.data.formats import Message

logger = logging.getLogger(__name__)

# Added tokens that end an assistant turn in common chat formats. Only those present in the
# tokenizer's added vocabulary are used, so this never stops a model on ordinary text.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    """The completion, without special tokens and cut before the first stop string."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens the model generated, including the EOS / stop token that ended it."""
    finish_reason: FinishReason
    """``stop``: EOS, end-of-turn token or stop string; ``length``: max_new_tokens reached."""
    token_ids: tuple[int, ...] = ()
    """The generated token ids (``completion_tokens`` of them)."""


def template_for(cfg: RunConfig) -> str:
    """The prompt template to generate with.

    ``cfg.data.template`` when the user set one; otherwise the template remembered in the
    adapter's or model's run directory (so a model fine-tuned on Alpaca prompts is prompted
    the same way), else ``chat``.
    """
    from llamaforge.models import run_dir_template

    if cfg.data.template is not None:
        return cfg.data.template
    for directory in (cfg.model.adapter, cfg.model.model):
        remembered = run_dir_template(directory)
        if remembered:
            logger.info("using template '%s' recorded in %s/config.yaml", remembered, directory)
            return remembered
    return "chat"


def to_generation_config(
    gen: GenerationConfig, *, stop_token_ids: Sequence[int], pad_token_id: int | None
) -> Any:
    """Our GenerationConfig → a transformers GenerationConfig for ``model.generate``."""
    from transformers import GenerationConfig as HFGenerationConfig

    sample = gen.do_sample if gen.do_sample is not None else gen.temperature > 0
    if gen.num_beams > 1 and gen.do_sample is None:
        sample = False  # beam search is deterministic unless sampling was asked for
    kwargs: dict[str, Any] = {
        "max_new_tokens": gen.max_new_tokens,
        "num_beams": gen.num_beams,
        "repetition_penalty": gen.repetition_penalty,
        "do_sample": sample,
        "eos_token_id": list(stop_token_ids),
        "pad_token_id": pad_token_id,
    }
    if sample:
        kwargs.update(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    return HFGenerationConfig(**kwargs)


class _StopCriteria:
    """Per-row stop: a stop string in the generated text, or the whole batch cancelled.

    Decodes only each row's last few tokens: a stop string of L characters ends within the
    last 4L + 4 tokens (a character takes at most 4 byte-tokens), and any earlier occurrence
    would have stopped the row at an earlier step.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_len: int,
        stop: Sequence[str],
        cancel: threading.Event,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = tuple(s for s in stop if s)
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 4
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        # input_ids: [B, prompt_len + generated]; returns done: [B]
        done = torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)
        if self.stop and not self.cancel.is_set():
            tails = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window) :]
            for row, text in enumerate(decode_token_rows(self.tokenizer, tails.tolist())):
                done[row] = any(s in text for s in self.stop)
        return done.to(input_ids.device)


class _QueueStreamer:
    """transformers streamer (``put``/``end``) handing generated token ids to a queue."""

    def __init__(self, out: queue.Queue[Any]) -> None:
        self.out = out
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the whole prompt
            self.prompt_seen = True
            return
        self.out.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.out.put(None)


class TokenStream(Iterator[str]):
    """Text pieces of one generation, produced by a background thread.

    Iterate for the pieces; afterwards :attr:`result` holds the full
    :class:`GenerationResult`. ``close()`` stops the generation (used when a chat user hits
    Ctrl-C or an API client disconnects).
    """

    def __init__(
        self,
        engine: GenerationEngine,
        input_ids: list[int],
        gen: GenerationConfig,
        stops: Sequence[str],
    ) -> None:
        self._engine = engine
        self._gen = gen
        self._stops = tuple(stops)
        self._prompt_tokens = len(input_ids)
        self._ids: list[int] = []
        self._emitted = ""
        self._done = False
        self._cancel = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self.result: GenerationResult | None = None
        # The thread must not reference self: then dropping the last reference to an
        # unfinished stream runs __del__, which cancels the generation.
        self._thread = threading.Thread(
            target=_generate_into_queue,
            args=(engine, input_ids, gen, self._stops, self._cancel, self._queue),
            name="llamaforge-generate",
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        engine = self._engine
        while not self._done:
            item = self._queue.get()
            if isinstance(item, Exception):
                self.close()
                raise item
            if item is None:
                self._done = True
                break
            for token in item:
                self._ids.append(token)
                if token in engine.stop_token_ids:
                    self._done = True
                    break
            text = decode_tokens(engine.tokenizer, self._ids)
            if first_stop(text, self._stops) is not None:
                self._done = True
                break
            safe = len(text) - held_back(text, self._stops)
            if safe > len(self._emitted) and text.startswith(self._emitted):
                piece = text[len(self._emitted) : safe]
                self._emitted += piece
                return piece
        if self.result is None:
            self.close()
            self.result = engine.make_result(self._ids, self._prompt_tokens, self._stops)
            rest = self.result.text
            if not rest.startswith(self._emitted):
                logger.warning("streamed text diverged from the final decode; check the tokenizer")
            piece = rest[len(self._emitted) :]
            self._emitted = rest
            if piece:
                return piece
        raise StopIteration

    def close(self) -> None:
        """Stop generating (at the next token) and wait for the background thread."""
        self._cancel.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._cancel.set()


def _generate_into_queue(
    engine: GenerationEngine,
    input_ids: list[int],
    gen: GenerationConfig,
    stops: tuple[str, ...],
    cancel: threading.Event,
    out: queue.Queue[Any],
) -> None:
    try:
        engine._generate_ids([input_ids], gen, stops, cancel=cancel, streamer=_QueueStreamer(out))
    except Exception as e:  # handed to the consumer thread, which re-raises it
        out.put(e)
        out.put(None)


class GenerationEngine:
    """A loaded model + tokenizer + prompt template, ready to generate."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template: str = "chat",
        system_prompt: str | None = None,
        templates_dir: str | Path | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.templates_dir = templates_dir
        self.stop_token_ids = self._find_stop_token_ids()
        self._template_stop_cache: list[str] | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> GenerationEngine:
        """Load the model (and adapter) named in ``cfg``; template as :func:`template_for`."""
        import torch

        from llamaforge.models import load_model

        model_cfg = cfg.model
        if (
            not torch.cuda.is_available()
            and model_cfg.dtype in ("bfloat16", "float16")
            and model_cfg.quantization_bit is None
        ):
            # Decoding is batch-1 GEMV, which is 15-30x slower in bf16 than fp32 on CPU.
            logger.info("decoding on CPU: loading in float32 instead of %s", model_cfg.dtype)
            model_cfg = dataclasses.replace(model_cfg, dtype="float32")
        model, tokenizer = load_model(model_cfg)
        return cls(
            model,
            tokenizer,
            template=template_for(cfg),
            system_prompt=cfg.data.system_prompt,
            templates_dir=cfg.data.templates_dir,
        )

    def _find_stop_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (
            self.tokenizer.eos_token_id,
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list | tuple):
                ids.update(int(i) for i in source)
        added = self.tokenizer.get_added_vocab()
        ids.update(added[token] for token in END_OF_TURN_TOKENS if token in added)
        return frozenset(ids)

    def _messages(self, prompt: Sequence[Message] | str) -> list[Message]:
        from llamaforge.data.formats import Message

        messages = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        if self.system_prompt and (not messages or messages[0].role != "system"):
            messages.insert(0, Message("system", self.system_prompt))
        return messages

    def format_prompt(self, messages: Sequence[Message]) -> str:
        """Prompt text (up to where the answer starts) with the system prompt applied."""
        from llamaforge.data.templates import render_prompt

        return render_prompt(
            self.tokenizer, self.template, self._messages(messages), self.templates_dir
        )

    def encode(self, prompt: Sequence[Message] | str, raw: bool = False) -> list[int]:
        """Prompt token ids: raw text as the tokenizer encodes it, else built by the
        template exactly as in training (:func:`llamaforge.data.tokenization.encode_prompt`)."""
        if raw:
            if not isinstance(prompt, str):
                raise ConfigError("raw generation takes text prompts, not messages; drop --raw")
            return list(self.tokenizer(prompt)["input_ids"])
        from llamaforge.data.tokenization import encode_prompt

        return encode_prompt(
            self.tokenizer, self.template, self._messages(prompt), self.templates_dir
        )

    def stop_strings(self, gen: GenerationConfig, raw: bool = False) -> tuple[str, ...]:
        """The user's stop strings, plus the template's next-turn markers unless raw."""
        stops = [s for s in gen.stop if s]
        if not raw:
            stops.extend(s for s in self._template_stops() if s not in stops)
        return tuple(stops)

    def _template_stops(self) -> list[str]:
        if self._template_stop_cache is None:
            from llamaforge.data.templates import stop_strings_for

            self._template_stop_cache = stop_strings_for(
                self.template, self.tokenizer, self.templates_dir
            )
        return self._template_stop_cache

    def generate(
        self,
        prompts: Sequence[Sequence[Message] | str],
        gen: GenerationConfig,
        raw: bool = False,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts (one left-padded forward batch)."""
        if not prompts:
            return []
        encoded = [self.encode(p, raw) for p in prompts]
        stops = self.stop_strings(gen, raw)
        rows = self._generate_ids(encoded, gen, stops, cancel=threading.Event())
        return [
            self.make_result(row, len(ids), stops) for row, ids in zip(rows, encoded, strict=True)
        ]

    def stream(
        self, prompt: Sequence[Message] | str, gen: GenerationConfig, raw: bool = False
    ) -> TokenStream:
        """Stream one generation's text; see :class:`TokenStream`."""
        if gen.num_beams > 1:
            raise ConfigError("streaming needs num_beams: 1 (beam search picks at the end)")
        return TokenStream(self, self.encode(prompt, raw), gen, self.stop_strings(gen, raw))

    def _generate_ids(
        self,
        encoded: list[list[int]],
        gen: GenerationConfig,
        stops: Sequence[str],
        *,
        cancel: threading.Event,
        streamer: _QueueStreamer | None = None,
    ) -> list[list[int]]:
        """Generated ids per prompt (prompt and left padding removed, right pads kept)."""
        import torch
        from transformers import StoppingCriteriaList

        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = min(self.stop_token_ids) if self.stop_token_ids else 0
        width = max(len(ids) for ids in encoded)
        # Left padding: every row's last prompt token sits at the same position, so one
        # decode step serves the batch; position ids come from the attention mask.
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded]
        )
        device = self.model.device
        if gen.sampling_seed is not None:
            torch.manual_seed(gen.sampling_seed)
        config = to_generation_config(
            gen, stop_token_ids=sorted(self.stop_token_ids), pad_token_id=pad_id
        )
        criteria = StoppingCriteriaList([_StopCriteria(self.tokenizer, width, stops, cancel)])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device),  # [B, T]
                attention_mask=attention_mask.to(device),  # [B, T]
                generation_config=config,
                stopping_criteria=criteria,
                streamer=streamer,
            )
        return out[:, width:].tolist()  # [B, new]

    def make_result(
        self, generated: Sequence[int], prompt_tokens: int, stops: Sequence[str]
    ) -> GenerationResult:
        """The result of one generated row (ids after the prompt), cut as
        :func:`~llamaforge.inference.stops.trim_completion` cuts it."""
        text, ids, reason = trim_completion(self.tokenizer, generated, self.stop_token_ids, stops)
        return GenerationResult(text, prompt_tokens, len(ids), reason, tuple(ids))
