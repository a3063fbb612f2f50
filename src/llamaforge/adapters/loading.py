"""Load a saved peft adapter (LoRA, DoRA, prefix, ...) on top of a base model for inference.

A training run directory works as an adapter directory: it holds ``adapter_config.json``
and ``adapter_model.safetensors`` at its root. A directory without ``adapter_config.json``,
or an adapter trained for a different base model, raises a one-line ModelError.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge.adapters.attach import PEFT_TASKS
from llamaforge.errors import ModelError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def _config_for_head(directory: Path, head: str | None) -> Any:
    """None (peft reads the saved config), or the saved config made task-free when the
    adapter was trained for a head other than ``head``."""
    if head is None:
        return None
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(directory))
    if config.task_type in (None, PEFT_TASKS[head][0]):
        return None
    config.task_type = None
    return config


def load_adapter(
    model: PreTrainedModel | PeftModel,
    path: str | Path,
    *,
    is_trainable: bool = False,
    adapter_name: str = "default",
    fix: str = "load it with the base model it was trained on",
    head: str | None = None,
) -> PeftModel:
    """Wrap ``model`` with the adapter saved in ``path`` (frozen unless ``is_trainable``).

    The one place a saved peft adapter is loaded. A model that is already a PeftModel
    gets the adapter added under ``adapter_name`` (several adapters on one base, as
    serving does). ``fix`` ends the error raised when the adapter does not fit the base.
    ``head``: the head ``model`` was built with (models.HEADS); an adapter trained for
    another head (an SFT adapter on a reward model's score head) is loaded task-free, as
    plain LoRA weights, which is what folding it into the base needs.
    """
    from peft import PeftModel

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelError(f"adapter directory not found: {directory}")
    if not (directory / "adapter_config.json").is_file():
        raise ModelError(
            f"{directory} has no adapter_config.json; pass a LoRA adapter or a training run "
            "directory"
        )
    logger.info("loading adapter %s", directory)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(directory, adapter_name=adapter_name, is_trainable=is_trainable)
            return model
        return PeftModel.from_pretrained(
            model,
            directory,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            config=_config_for_head(directory, head),
        )
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        # Shape mismatches (adapter trained on another base) surface as RuntimeError.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{directory}: adapter does not fit the base model ({first_line}); {fix}"
        ) from None
