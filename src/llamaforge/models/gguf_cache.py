"""GGUF file → a cached, dequantized HF model directory.

transformers dequantizes a GGUF file on every load (~15 s for the bundled 135M model on
2 cores). :func:`cached_gguf_dir` does it once and keeps the result as a plain HF
directory, ``<cache root>/gguf/<sha256 of the file>/``, holding:

- ``model.safetensors`` — the fp32 weights (``lm_head.weight`` dropped when embeddings are
  tied: transformers re-ties it on load and refuses a duplicate);
- ``config.json`` — without ``quantization_config`` and with
  ``architectures: ["LlamaForCausalLM"]``, so the directory loads like any HF model;
- tokenizer files and ``generation_config.json``.

The cache root is ``$LLAMAFORGE_CACHE`` or ``~/.cache/llamaforge``. A directory is built in
a temporary sibling and renamed into place, so a crash never leaves a half-written cache
entry. ``index.json`` maps (path, size, mtime) → sha256 so an unchanged file is not rehashed.
Reloading from the cache gives weights bit-identical to the GGUF load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llamaforge.errors import ModelError
from llamaforge.models.memory import release_freed_memory

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# Files the cache directory must hold to count as complete.
CACHE_FILES = ("model.safetensors", "config.json", "tokenizer_config.json")


def cache_root() -> Path:
    """Root of llamaforge's caches: ``$LLAMAFORGE_CACHE`` or ``~/.cache/llamaforge``."""
    root = os.environ.get("LLAMAFORGE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llamaforge"


def check_gguf_file(path: Path, *, full: bool = True) -> None:
    """Raise ModelError unless ``path`` is a readable GGUF file (``full``: and complete)."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read GGUF file {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a .gguf model "
            "file, an HF model directory or a cached hub id"
        )
    if not full:
        return
    from gguf import GGUFReader

    try:
        # Parses every tensor header (~2 s for 272 tensors, so only before building the
        # cache): catches truncated downloads before a 15 s dequantization fails halfway.
        GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ModelError(
            f"{path} is not a valid GGUF file ({e}); it may be truncated: download it again"
        ) from None


def _index_path() -> Path:
    return cache_root() / "gguf" / "index.json"


def _read_index() -> dict[str, Any]:
    try:
        data = json.loads(_index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is ordinary user data
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (resolved path, size, mtime) in the cache index."""
    path = path.resolve()
    stat = path.stat()
    key = str(path)
    entry = _read_index().get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
    ):
        return str(entry["sha256"])
    logger.info("hashing %s (%.0f MB) for the model cache", path, stat.st_size / 1e6)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    index = _read_index()  # re-read: another process may have added entries meanwhile
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        _write_json_atomic(_index_path(), index)
    except OSError as e:  # a read-only cache only costs a rehash next time
        logger.warning("could not update the hash index %s: %s", _index_path(), e)
    return sha


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CACHE_FILES)


def cached_gguf_dir(path: Path) -> Path:
    """The HF directory holding ``path``'s dequantized weights, built on first use."""
    check_gguf_file(path, full=False)
    target = cache_root() / "gguf" / file_sha256(path)
    if _is_complete(target):
        logger.debug("GGUF cache hit: %s", target)
        return target
    check_gguf_file(path)
    logger.info("dequantizing %s once; cached in %s", path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        _write_dequantized(path, tmp)
        # The dequantization peaks ~0.8 GB over the imports; glibc kept ~0.18 GB of it
        # resident in the process that goes on to load and train.
        release_freed_memory()
        if _is_complete(target):
            return target  # another process finished the same entry while we worked
        if target.exists():  # an incomplete leftover (never ours: we rename whole dirs)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same entry first; its copy is as good as ours.
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_dequantized(path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(f"cannot load GGUF file {path}: {e}") from None
    # save_pretrained refuses GGUF-loaded models ("not serializable"), so write the parts.
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "source.json").write_text(
        json.dumps({"gguf_file": str(path.resolve())}, indent=2), encoding="utf-8"
    )
