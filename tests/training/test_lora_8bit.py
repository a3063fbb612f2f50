"""LoRA on an 8-bit base (`quantization_bit: 8`, bitsandbytes LLM.int8) trains on CPU: the
base really is int8 and stays frozen, every LoRA weight moves, the loss falls — also after
an evaluation, the moment 4-bit layers once stopped passing gradients (test_qlora.py)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from training_helpers import read_log, tiny_config

from llamaforge.methods import run_training

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
)


@pytest.fixture
def trainer_model(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The model each transformers Trainer is built with, and its parameters at that time."""
    import transformers

    captured: dict[str, Any] = {}
    real_init = transformers.Trainer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        captured["model"] = self.model
        captured["before"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    monkeypatch.setattr(transformers.Trainer, "__init__", init)
    return captured


def test_lora_on_an_8bit_base_trains(tiny_model_dir, overfit_data, tmp_path, trainer_model):
    from bitsandbytes.nn import Linear8bitLt

    run_dir = run_training(
        tiny_config(
            tiny_model_dir,
            overfit_data,
            tmp_path / "run",
            finetuning="lora",
            quantization_bit=8,
            lora_dropout=0.0,
            max_steps=6,
            save_steps=1000,
            val_set_size=1,
            eval_steps=2,
        )
    )
    model = trainer_model["model"]
    int8 = [name for name, m in model.named_modules() if isinstance(m, Linear8bitLt)]
    assert len(int8) == 14  # 7 projections × 2 layers, each wrapped by LoRA
    after = dict(model.named_parameters())
    changed = {
        n for n, before in trainer_model["before"].items() if not torch.equal(before, after[n])
    }
    lora = {n for n in after if "lora_" in n}
    assert lora and changed == lora  # every LoRA weight moved; nothing of the base did
    assert all(after[f"{name}.weight"].dtype == torch.int8 for name in int8)

    log = read_log(run_dir)
    train = [r for r in log if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 4, 6]
    assert all(r["grad_norm"] > 0 for r in train)  # also after each evaluation
    assert train[-1]["loss"] < train[0]["loss"] - 0.1, train
