"""What each ``finetuning:`` kind trains, as one table: ``FINETUNING``.

Everything that differs between kinds is a field here, so code asks the table
(``FINETUNING[name].packable``) instead of keeping lists of names. The peft configs are
built in ``adapters/attach.py`` from ``adapter``; the config only needs the facts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuningKind:
    summary: str
    adapter: str | None
    """The peft adapter added and trained (lora | prefix | prompt); None: the model's own
    weights are trained."""
    frozen_base: bool
    """No weight of the base model is trained, so it may be stored in bf16 for bf16 training."""
    packable: bool
    """Examples can be packed into one row. Prompt and prefix tuning prepend virtual tokens,
    which packed position ids cannot describe."""
    partial: bool = False
    """Only some of the model's own weights train (``freeze_trainable_layers/modules``)."""
    quantization_bit: int | None = None
    """The base is loaded quantized with bitsandbytes at this width unless set otherwise."""


FINETUNING: dict[str, FinetuningKind] = {
    "lora": FinetuningKind("low-rank adapters on the chosen linear layers", "lora", True, True),
    "qlora": FinetuningKind("LoRA on a 4-bit (NF4) base", "lora", True, True, quantization_bit=4),
    "full": FinetuningKind("every weight of the model", None, False, True),
    "freeze": FinetuningKind(
        "only the last N decoder layers (or named parameters)", None, False, True, partial=True
    ),
    "prefix": FinetuningKind("prefix tuning (virtual keys/values)", "prefix", True, False),
    "prompt": FinetuningKind("prompt tuning (virtual input tokens)", "prompt", True, False),
}
