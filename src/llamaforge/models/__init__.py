"""Model loading: spec → (model, tokenizer); GGUF files are dequantized once and cached."""

from llamaforge.models.gguf_cache import cache_root, cached_gguf_dir
from llamaforge.models.loader import (
    HEADS,
    ResolvedModel,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_model,
    run_dir_template,
    to_quantization_config,
)

__all__ = [
    "HEADS",
    "ResolvedModel",
    "cache_root",
    "cached_gguf_dir",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_model",
    "run_dir_template",
    "to_quantization_config",
]
