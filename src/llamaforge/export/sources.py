"""Inputs of an export, resolved and checked before any work is done.

Contract: every function here either returns something usable or raises ``ExportError``
naming the file and the fix. ``read_adapter`` reads only the adapter's headers and small
tensors (never the base model), so a broken or empty adapter is refused in well under a
second. ``load_base`` loads a base model in float32 through ``llamaforge.models``.

A *run directory* (what ``llamaforge train`` writes) holds ``adapter_config.json``,
``adapter_model.safetensors``, tokenizer files and ``config.yaml`` (resolved config with
``model: {model: <base spec>}``), so it is accepted wherever an adapter directory is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamaforge.errors import ConfigError, ExportError, ModelError
from llamaforge.rundir import read_run_config, run_config_value

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
GGUF_MAGIC = b"GGUF"
# Files whose presence means "this directory carries its own tokenizer".
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class AdapterFiles:
    """A checked PEFT adapter directory (or run directory)."""

    directory: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    """Tensor name (as saved by peft) → shape."""
    base_spec: str | None
    """The base model named by the run's config.yaml, else by adapter_config.json."""
    has_tokenizer: bool
    zero_lora_b: bool = field(default=False)
    """True when every LoRA ``B`` matrix is exactly zero and nothing else could change a
    weight (no DoRA magnitudes, no saved full weights): the merge would be a no-op."""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a safetensors file; a truncated or foreign file is an ExportError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())  # safe_open is not iterable
            return {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as e:
        raise ExportError(
            f"{path}: not a readable safetensors file ({e}); the file is truncated or "
            "corrupt — copy or save it again"
        ) from None


def check_gguf(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic (or cannot be opened)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ExportError(f"{path}: cannot read ({e.strerror}); check the path") from None
    if magic != GGUF_MAGIC:
        raise ExportError(
            f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'); "
            "pass a .gguf model, an HF model directory or a run directory"
        )


def _base_spec_from_run(directory: Path, adapter_config: dict[str, Any]) -> str | None:
    try:
        run_config = read_run_config(directory)
    except ConfigError as e:
        raise ExportError(str(e)) from None
    for key in ("model", "base_model"):  # base_model: alpaca-lora's flat key
        model = run_config_value(run_config, "model", key)
        if isinstance(model, str) and model:
            return model
    base = adapter_config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


def run_rope_scaling(adapter_dir: Path) -> dict[str, Any] | None:
    """The ``rope_scaling`` a run directory was trained with (None: none, or not a run)."""
    try:
        value = run_config_value(read_run_config(adapter_dir), "model", "rope_scaling")
    except ConfigError as e:
        raise ExportError(str(e)) from None
    return dict(value) if isinstance(value, dict) else None


def read_adapter(adapter_dir: str | Path) -> AdapterFiles:
    """Check an adapter directory: config present and valid, weights readable, not empty."""
    directory = Path(adapter_dir)
    if not directory.is_dir():
        raise ExportError(f"{directory}: adapter directory not found; pass a run or adapter dir")
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ExportError(
            f"{directory}: no {ADAPTER_CONFIG}; pass the directory that `llamaforge train` "
            "wrote (or a peft save_pretrained directory)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{config_path}: invalid JSON ({e}); save the adapter again") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ExportError(f"{config_path}: no 'peft_type' key; this is not a peft adapter config")
    if config["peft_type"] != "LORA":
        raise ExportError(
            f"{config_path}: peft_type {config['peft_type']!r} cannot be merged into weights; "
            "only LoRA/DoRA adapters can be exported"
        )
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ExportError(
            f"{directory}: no {ADAPTER_WEIGHTS}; the training run did not finish saving — "
            "use a completed run or checkpoint directory"
        )
    shapes = check_safetensors(weights)
    if not shapes:
        raise ExportError(
            f"{weights}: the adapter holds no tensors (an empty save); exporting it would "
            "silently give back the base model — retrain or pick another checkpoint"
        )
    return AdapterFiles(
        directory=directory,
        config=config,
        shapes=shapes,
        base_spec=_base_spec_from_run(directory, config),
        has_tokenizer=any((directory / name).is_file() for name in TOKENIZER_FILES),
        zero_lora_b=_all_lora_b_zero(weights, shapes),
    )


def _all_lora_b_zero(weights: Path, shapes: dict[str, tuple[int, ...]]) -> bool:
    from safetensors import safe_open

    b_names = [n for n in shapes if ".lora_B." in n or n.endswith(".lora_embedding_B")]
    others = [n for n in shapes if ".lora_A." not in n and "lora_embedding_A" not in n]
    if not b_names or len(others) != len(b_names):
        # Magnitude vectors or full weights present: only the merged weights can tell.
        return False
    with safe_open(str(weights), framework="pt") as f:
        return all(not torch.any(f.get_tensor(n)) for n in b_names)


def adapter_vocab_size(adapter: AdapterFiles) -> int | None:
    """Vocabulary size the adapter's embedding/lm_head tensors were trained with, if any."""
    sizes = []
    for name, shape in adapter.shapes.items():
        if "trainable_tokens" in name:
            continue  # peft's trainable tokens: rows of chosen ids [n, H], no vocab axis
        if "embed_tokens" in name:
            if name.endswith("lora_embedding_A"):
                sizes.append(shape[1])  # [r, V]
            elif "lora_" not in name:
                sizes.append(shape[0])  # full weight [V, H]
            # lora_embedding_B [H, r] and the DoRA magnitude [H] have no vocab axis
        elif "lm_head" in name and ".lora_A." not in name:
            sizes.append(shape[0])  # B [V, r], DoRA magnitude [V], full weight [V, H]
    return max(sizes) if sizes else None


def touched_modules(adapter: AdapterFiles) -> set[str]:
    """Module paths of the base model (``model.layers.0.self_attn.q_proj``) the adapter changes."""
    paths = set()
    for name in adapter.shapes:
        path = name.removeprefix("base_model.model.")
        for marker in (
            ".lora_",
            ".base_layer",
            ".modules_to_save",
            ".original_module",
            ".token_adapter",  # peft trainable tokens
        ):
            if marker in path:
                path = path.split(marker, 1)[0]
                break
        else:
            path = path.rsplit(".", 1)[0]
        paths.add(path)
    return paths


def load_base(
    spec: str, head: str = "causal_lm", *, rope_scaling: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a base spec in float32, eval mode, on CPU, with the
    ``head`` of ``llamaforge.models.HEADS`` (and the RoPE scaling an adapter was trained
    with, if any). A run directory as the base (a run that started from another run, e.g. a
    reward model on an SFT run) is its own base with its adapter merged in.

    The spec is resolved by ``llamaforge.models`` (the one model resolution: alias, HF or
    run directory, ``.gguf`` file, cached hub id); its local files are checked here first
    (truncated safetensors, a non-GGUF ``.gguf``) so the error names the file.
    """
    from safetensors import SafetensorError

    from llamaforge.config.sections import ModelConfig
    from llamaforge.models import load_model, resolve_model

    try:
        resolved = resolve_model(spec)
    except ModelError as e:
        raise ExportError(str(e)) from None
    if resolved.gguf_path is not None:
        check_gguf(resolved.gguf_path)
    else:
        for shard in sorted(resolved.path.glob("*.safetensors")):
            check_safetensors(shard)
    try:
        model, tokenizer = load_model(
            ModelConfig(model=spec, dtype="float32", rope_scaling=rope_scaling), head=head
        )
    except (ModelError, OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise ExportError(f"cannot load base model '{spec}': {e}") from None
    if resolved.adapter is not None:
        logger.info("base %s is a run: merging its adapter into its own base first", spec)
        peft_model: Any = model
        model = peft_model.merge_and_unload()
    return model.float().eval(), tokenizer


def load_tokenizer_dir(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise ExportError(f"{directory}: cannot load the tokenizer saved there ({e})") from None
