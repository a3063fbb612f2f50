"""Load one base model plus any number of LoRA adapters as named models to serve.

Contract: :func:`load_model_pool` returns a :class:`ModelPool` whose ``served`` maps each
model name a client may ask for to a :class:`ServedModel` (engine + peft adapter name).
The base model is served under its spec (``smollm2-135m``, a path, a hub id); each adapter
under its directory name, or under ``NAME`` when given as ``NAME=DIR``. All of them share
the base weights (one peft model, adapters switched per forward pass), so memory grows
only by the adapter weights. Each adapter generates with the prompt template recorded in
its run directory unless the config names one. Adapters must be LoRA-family (LoRA, DoRA,
rsLoRA); prompt/prefix tuning raises a ModelError saying to use ``llamaforge chat``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ModelError
from llamaforge.serving.requests import ServedModel

if TYPE_CHECKING:
    from llamaforge.config import RunConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelPool:
    model: Any
    """The loaded model (a peft model when adapters are served)."""
    served: dict[str, ServedModel]
    """Model name → served model; the first entry is the default."""
    context_length: int | None
    """Prompt + completion tokens the model supports (max_position_embeddings)."""

    @property
    def default(self) -> str:
        return next(iter(self.served))


def parse_adapter(arg: str) -> tuple[str, Path]:
    """``DIR`` or ``NAME=DIR`` → (name, directory)."""
    name, sep, path = arg.partition("=")
    if sep and name and not Path(arg).expanduser().exists():
        return name, Path(path).expanduser()
    directory = Path(arg).expanduser()
    return directory.resolve().name or str(directory), directory


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}-{i}", i + 1
    return candidate


def _attach(model: Any, directory: Path, adapter_name: str) -> Any:
    """Add an adapter to ``model`` (wrapping it in a PeftModel the first time)."""
    from peft import PeftType

    from llamaforge.adapters import load_adapter

    logger.info("loading adapter %s as '%s'", directory, adapter_name)
    model = load_adapter(
        model,
        directory,
        adapter_name=adapter_name,
        fix="serve it with the base model it was trained on",
    )
    kind = model.peft_config[adapter_name].peft_type
    if kind != PeftType.LORA:
        raise ModelError(
            f"adapter {directory} is {kind.value}; serve batches LoRA-family adapters only, "
            f"use `llamaforge chat --adapter {directory}` for it"
        )
    return model


def check_batchable(model: Any) -> None:
    """Fail early if the model's KV cache is not the plain per-token kind batching needs."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    ids = torch.zeros((1, 1), dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
    odd = {type(layer).__name__ for layer in out.cache.layers if type(layer) is not DynamicLayer}
    if odd:
        raise ModelError(
            f"serve batches requests over a plain KV cache, but this model uses {', '.join(odd)} "
            "(sliding-window or hybrid attention); use `llamaforge chat` or `generate` for it"
        )


def load_model_pool(cfg: RunConfig, adapters: Sequence[str] = ()) -> ModelPool:
    """The base model of ``cfg`` plus ``cfg.model.adapter`` and ``adapters`` (DIR or NAME=DIR)."""
    import torch

    from llamaforge.inference.engine import GenerationEngine, template_for
    from llamaforge.models import load_model, resolve_model

    model_cfg = dataclasses.replace(cfg.model, adapter=None)
    if (
        not torch.cuda.is_available()
        and model_cfg.dtype in ("bfloat16", "float16")
        and model_cfg.quantization_bit is None
    ):
        # Decoding is GEMV-bound: 15-30x slower in bf16 than fp32 on this CPU build.
        logger.info("decoding on CPU: loading in float32 instead of %s", model_cfg.dtype)
        model_cfg = dataclasses.replace(model_cfg, dtype="float32")
    base_cfg = dataclasses.replace(cfg, model=model_cfg)
    model, tokenizer = load_model(model_cfg)

    def engine(template: str) -> GenerationEngine:
        return GenerationEngine(
            model,
            tokenizer,
            template=template,
            system_prompt=cfg.data.system_prompt,
            templates_dir=cfg.data.templates_dir,
        )

    served: dict[str, ServedModel] = {}
    own_adapter = resolve_model(model_cfg.model).adapter  # the spec was a run directory
    served[model_cfg.model] = ServedModel(
        model_cfg.model, engine(template_for(base_cfg)), "default" if own_adapter else None
    )
    requested = [cfg.model.adapter] if cfg.model.adapter else []
    for arg in [*requested, *adapters]:
        name, directory = parse_adapter(arg)
        name = _unique(name, set(served))
        adapter_name = f"served-{len(served)}"
        model = _attach(model, directory, adapter_name)
        with_adapter = dataclasses.replace(model_cfg, adapter=str(directory))
        template = template_for(dataclasses.replace(cfg, model=with_adapter))
        served[name] = ServedModel(name, engine(template), adapter_name)
    # Engines were built before the model was wrapped: point them at the final object.
    for item in served.values():
        item.engine.model = model
    model.eval()
    check_batchable(model)
    config = model.config if hasattr(model, "config") else None
    context = getattr(config, "max_position_embeddings", None)
    logger.info("serving %s (context %s tokens)", ", ".join(served), context)
    return ModelPool(model, served, context if isinstance(context, int) else None)
