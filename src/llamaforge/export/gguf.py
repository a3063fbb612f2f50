"""GGUF writer for Llama-architecture models, on gguf-py only (no llama.cpp scripts).

Contract of :func:`export_gguf`:

- input: an HF model directory, a ``.gguf`` file, ``smollm2-135m``, or a run/adapter
  directory (its LoRA adapter is merged in memory first, verified like ``export merge``);
- output: one GGUF file of the chosen ``GGUF_TYPES`` entry, written to ``output + ".tmp"``
  and renamed only after verification, plus an Ollama ``Modelfile`` beside it;
- content: llama.cpp's ``llama`` architecture keys, tensors under gguf-py's name map with
  Q/K rows permuted to GGML's interleaved RoPE layout (what llama.cpp's converter does and
  transformers' GGUF loader undoes), 1-D tensors in f32, only ``token_embd`` when embeddings
  are tied, the byte-level BPE tokenizer (tokens, types, merges, special ids, add_bos) and
  the chat template;
- verification: the file re-reads with ``gguf.GGUFReader``; transformers' GGUF loader gives
  logits within ``TOLERANCES[type]`` of the source on a fixed prompt set (max |Δlogit| and
  top-1 agreement are reported). A failed check raises ``ExportError`` and leaves no file.

Quantized types follow llama.cpp's conventions: rows whose length is not a multiple of the
block size fall back to f16, and for 4/5-bit types the embedding/output matrix is kept at
q8_0 (it dominates quality at a small share of the size).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamaforge.errors import ExportError
from llamaforge.export.merge import fixed_prompts, merge_in_memory, prompt_logits
from llamaforge.export.modelfile import write_modelfile
from llamaforge.export.sources import is_adapter_dir, load_base

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit_diff: float | None
    min_top1_agreement: float


# Per-type acceptance of the transformers round trip. Loose enough for real models, tight
# enough to catch a wrong permutation or tokenizer (those give top-1 agreement near zero).
TOLERANCES: dict[str, Tolerance] = {
    "f32": Tolerance(1e-3, 1.0),
    "f16": Tolerance(0.5, 0.95),
    "bf16": Tolerance(2.0, 0.90),
    "q8_0": Tolerance(None, 0.90),
    "q5_0": Tolerance(None, 0.75),
    "q5_1": Tolerance(None, 0.75),
    "q4_0": Tolerance(None, 0.70),
    "q4_1": Tolerance(None, 0.70),
}
GGUF_TYPES = tuple(TOLERANCES)
_LOW_BIT = ("q4_0", "q4_1", "q5_0", "q5_1")


@dataclass(frozen=True)
class GGUFReport:
    output_path: Path
    modelfile: Path | None
    type: str
    size_bytes: int
    tensor_count: int
    tensor_types: dict[str, int]
    """GGML type name → number of tensors stored with it."""
    max_abs_logit_diff: float | None
    top1_agreement: float | None
    positions_checked: int
    tokenizer_match: bool | None
    """Transformers' GGUF tokenizer gives the source's ids on the prompt texts."""
    merged_adapter: Path | None


def _qtype(name: str) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


def _file_type(name: str) -> Any:
    from gguf import LlamaFileType

    return LlamaFileType.ALL_F32 if name == "f32" else LlamaFileType[f"MOSTLY_{name.upper()}"]


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half row order → GGML's interleaved pairs, per head (llama.cpp's
    ``LlamaModel.permute``; transformers' GGUF loader applies the inverse)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def _check_architecture(config: Any) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise ExportError(
            f"model_type '{getattr(config, 'model_type', None)}': the GGUF writer handles "
            "Llama-architecture models only (LlamaForCausalLM)"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError(
            "the model has attention/MLP biases, which transformers' GGUF loader cannot read "
            "back for llama; export it with `export merge` (safetensors) instead"
        )


def _llama3_rope_factors(params: dict[str, Any], head_dim: int) -> np.ndarray:
    """``rope_freqs.weight`` as llama.cpp computes it for rope_type llama3."""
    base = params["rope_theta"]
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_architecture(writer: Any, config: Any, vocab_size: int, type_name: str) -> list:
    """Architecture keys; returns extra tensors (name, array) the rope scaling needs."""
    from gguf import RopeScalingType

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(_file_type(type_name))
    params = _rope_parameters(config)
    writer.add_rope_freq_base(params["rope_theta"])
    rope_type = params.get("rope_type", "default")
    extra = []
    if rope_type == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(params["factor"])
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(params["factor"])
        original = params.get("original_max_position_embeddings")
        if original:
            writer.add_rope_scaling_orig_ctx_len(original)
    elif rope_type == "llama3":
        extra.append(("rope_freqs.weight", _llama3_rope_factors(params, head_dim)))
    elif rope_type != "default":
        raise ExportError(
            f"rope_type '{rope_type}' has no GGUF equivalent here; use linear, yarn or llama3"
        )
    return extra


PRE_TOKENIZERS = {
    # tokenizer.json pre_tokenizer (normalised to a tuple of steps) → llama.cpp's pre name
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
}


def _pre_tokenizer_name(spec: dict[str, Any] | None) -> str:
    steps = spec.get("pretokenizers", []) if spec and spec["type"] == "Sequence" else [spec]
    key = tuple(
        (s["type"], s.get("use_regex", s.get("individual_digits", False))) for s in steps if s
    )
    name = PRE_TOKENIZERS.get(key)
    if name is None:
        logger.warning("pre-tokenizer %s has no known llama.cpp name; writing 'default'", key)
        return "default"
    return name


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (
        spec.get("model", {}).get("type") != "BPE"
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise ExportError(
            "only byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM style) can be written to "
            "GGUF here; this tokenizer is "
            f"{spec.get('model', {}).get('type', type(tokenizer).__name__)}"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ExportError(
            f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings; "
            "resize the model's embeddings (or use the run's own tokenizer)"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # embedding rows past the tokenizer (padded vocab)
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bool(probe) and bos is not None and probe[0] == bos)
    writer.add_add_eos_token(len(probe) > 1 and eos is not None and probe[-1] == eos)
    writer.add_add_space_prefix(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def tensor_type(name: str, array: np.ndarray, type_name: str) -> str:
    from gguf import GGML_QUANT_SIZES

    if array.ndim == 1 or type_name == "f32":
        return "f32"
    if type_name in ("f16", "bf16"):
        return type_name
    if type_name in _LOW_BIT and name in ("token_embd.weight", "output.weight"):
        type_name = "q8_0"
    block_size = GGML_QUANT_SIZES[_qtype(type_name)][0]
    if array.shape[-1] % block_size:
        logger.info(
            "%s: rows of %d are not a multiple of %d; f16", name, array.shape[-1], block_size
        )
        return "f16"
    return type_name


def _add_tensors(writer: Any, model: Any, type_name: str) -> dict[str, int]:
    from gguf import MODEL_ARCH, get_tensor_name_map
    from gguf.quants import quantize

    config = model.config
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output matrix when output is absent
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor '{hf_name}' has no GGUF name in the llama architecture")
        data = tensor.detach().float()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, n_kv)
        array = data.numpy()
        stored = tensor_type(name, array, type_name)
        qtype = _qtype(stored)
        writer.add_tensor(name, quantize(array, qtype), raw_shape=None, raw_dtype=qtype)
        counts[stored] = counts.get(stored, 0) + 1
    return counts


def write_gguf(
    model: Any, tokenizer: Any, path: Path, *, type: str = "f16", name: str = ""
) -> dict:
    """Write ``model`` + ``tokenizer`` as GGUF at ``path`` (no staging, no checks)."""
    import gguf

    _check_architecture(model.config)
    vocab_size = model.get_input_embeddings().num_embeddings
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        if name:
            writer.add_name(name)
        extra = _add_architecture(writer, model.config, vocab_size, type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, tokenizer, vocab_size)
        counts = _add_tensors(writer, model, type)
        for tensor_name, array in extra:
            writer.add_tensor(tensor_name, array)
            counts["f32"] = counts.get("f32", 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
    return counts


def _verify(
    path: Path, model: Any, tokenizer: Any, type_name: str, tensor_count: int
) -> tuple[float, float, int, bool]:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise ExportError(f"verification failed: {path} does not re-read as GGUF ({e})") from None
    if len(reader.tensors) != tensor_count:
        raise ExportError(
            f"verification failed: {path} re-reads with {len(reader.tensors)} tensors, "
            f"{tensor_count} were written"
        )
    prompts = fixed_prompts(tokenizer, max_len=model.config.max_position_embeddings)
    source = prompt_logits(model, prompts)
    kwargs: dict[str, Any] = {"gguf_file": path.name, "dtype": torch.float32}
    params = _rope_parameters(model.config)
    if params.get("rope_type", "default") != "default":
        # transformers' GGUF reader ignores llama rope-scaling keys; hand them over.
        kwargs["rope_parameters"] = params
    reloaded = AutoModelForCausalLM.from_pretrained(str(path.parent), **kwargs).eval()
    logits = prompt_logits(reloaded, prompts)
    diff = max(float((a - b).abs().max()) for a, b in zip(source, logits, strict=True))
    agree = sum(
        int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(source, logits, strict=True)
    )
    positions = sum(len(p) for p in prompts)
    top1 = agree / positions
    tolerance = TOLERANCES[type_name]
    too_far = tolerance.max_abs_logit_diff is not None and diff > tolerance.max_abs_logit_diff
    if too_far or top1 < tolerance.min_top1_agreement:
        raise ExportError(
            f"verification failed for {type_name}: transformers reads the GGUF back with max "
            f"|Δlogit| = {diff:.3g} and top-1 agreement {top1:.1%} over {positions} positions "
            f"(allowed: {tolerance.max_abs_logit_diff}, {tolerance.min_top1_agreement:.0%}); "
            "no file was written — try a wider type (f16) or report a bug"
        )
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = [tokenizer.decode(p) for p in prompts]
    same = all(
        gguf_tokenizer(t, add_special_tokens=False)["input_ids"]
        == tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in texts
    )
    if not same:
        logger.warning("transformers tokenizes the GGUF's vocabulary differently on some prompts")
    return diff, top1, positions, same


def _source(spec: str, adapter: str | Path | None) -> tuple[Any, Any, Path | None]:
    if adapter is None and is_adapter_dir(spec):
        # a run directory: its recorded base + its adapter
        merged = merge_in_memory(None, spec)
        return merged.model, merged.tokenizer, Path(spec)
    if adapter is not None:
        merged = merge_in_memory(spec, adapter)
        return merged.model, merged.tokenizer, Path(adapter)
    model, tokenizer = load_base(spec)
    return model, tokenizer, None


def export_gguf(
    model_dir_or_run_dir: str | Path,
    output_path: str | Path,
    *,
    type: str = "f16",
    adapter: str | Path | None = None,
    verify: bool = True,
    modelfile: bool = True,
    system: str | None = None,
    overwrite: bool = False,
) -> GGUFReport:
    """Export a model (or base + LoRA adapter, merged) as a verified GGUF file."""
    if type not in TOLERANCES:
        raise ExportError(f"unknown GGUF type '{type}'; choose one of: {', '.join(GGUF_TYPES)}")
    output = Path(output_path)
    if output.suffix.lower() != ".gguf":
        raise ExportError(f"{output}: the output file name must end in .gguf")
    if output.exists() and not overwrite:
        raise ExportError(f"{output}: already exists; delete it or pick another name")
    model, tokenizer, merged_adapter = _source(str(model_dir_or_run_dir), adapter)
    _check_architecture(model.config)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(output.name + ".tmp")
    try:
        logger.info("writing %s (%s)", output, type)
        name = Path(str(model_dir_or_run_dir)).name
        counts = write_gguf(model, tokenizer, staging, type=type, name=name)
        tensor_count = sum(counts.values())
        result: tuple[float | None, float | None, int, bool | None] = (None, None, 0, None)
        if verify:
            result = _verify(staging, model, tokenizer, type, tensor_count)
        os.replace(staging, output)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    diff, top1, positions, same = result
    if diff is not None and top1 is not None:
        logger.info(
            "verified %s: max |Δlogit| = %.3g, top-1 agreement %.1f%%", type, diff, 100 * top1
        )
    written_modelfile = write_modelfile(output, tokenizer, system=system) if modelfile else None
    return GGUFReport(
        output_path=output,
        modelfile=written_modelfile,
        type=type,
        size_bytes=output.stat().st_size,
        tensor_count=tensor_count,
        tensor_types=counts,
        max_abs_logit_diff=diff,
        top1_agreement=top1,
        positions_checked=positions,
        tokenizer_match=same,
        merged_adapter=merged_adapter,
    )
