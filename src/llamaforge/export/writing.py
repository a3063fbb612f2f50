"""Writing a model directory: staged (renamed into place only when complete) and in plain
safetensors (GGUF-loaded models refuse ``save_pretrained``). Used by merge, conversion,
vocabulary extension and quantized export."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llamaforge.errors import ExportError
from llamaforge.rundir import make_ordinary


def is_tied(model: Any) -> bool:
    """Whether lm_head is the input embedding matrix itself."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


@contextmanager
def staged_dir(output: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A hidden sibling directory that becomes ``output`` only if the block succeeds."""
    check_output_dir(output, overwrite=overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    )
    try:
        yield staging
        make_ordinary(staging)
        if output.exists():
            old = staging.with_suffix(".old")
            os.replace(output, old)
            os.replace(staging, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_dir(output: Path, *, overwrite: bool) -> None:
    if output.is_file():
        raise ExportError(f"{output}: is a file; pass a directory path for the merged model")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"{output}: already exists and is not empty; delete it or pick another")


def save_hf_model(model: Any, tokenizer: Any, directory: Path, *, shard_size: str = "2GB") -> list:
    """Write weights (sharded safetensors), config, generation config and tokenizer."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers import GenerationConfig

    tied = is_tied(model)
    embed_ptr = model.get_input_embeddings().weight.data_ptr()
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.data_ptr()
        if tied and ptr == embed_ptr and ptr in seen:
            continue  # the tied lm_head: transformers re-ties it from embed_tokens on load
        # safetensors refuses tensors that share storage; any other sharing is copied out.
        state[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        save_file(
            {n: state[n] for n in names}, str(directory / filename), metadata={"format": "pt"}
        )
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    config = copy.deepcopy(model.config)
    # A GGUF-loaded config says quant_method=gguf; the weights we write are plain floats.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.tie_word_embeddings = tied
    config.dtype = str(model.dtype).removeprefix("torch.")
    config.name_or_path = str(directory)
    config.save_pretrained(str(directory))
    generation = copy.deepcopy(getattr(model, "generation_config", None))
    if generation is None:
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return sorted(p.name for p in directory.iterdir())
