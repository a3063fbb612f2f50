"""Each fine-tuning kind on a tiny random Llama: the loss falls, exactly the trainable
parameters change, and what is saved is what was trained."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import AttachedModel, logged_losses, tiny_config

from llamaforge.methods.sft import run_sft

# A random tiny Llama's logits are nearly uniform (loss ≈ ln 49152 = 10.80) and only full
# fine-tuning moves them fast; the rates below make 6 full-batch steps lower the loss
# at every step. Measured drops from step 1 to 6: full 25 %, lora 2.9 %, freeze 3.1 %,
# prefix 1.2 %, prompt 0.23 % (0.025 nats; a frozen run repeats its loss exactly).
KINDS = {
    # kind: (extra config, minimum relative drop of the loss from step 1 to step 6)
    "lora": ({"learning_rate": 1e-2, "lora_dropout": 0.0}, 0.02),
    "full": ({"learning_rate": 1e-2}, 0.2),
    "freeze": ({"learning_rate": 1e-2, "freeze_trainable_layers": 1}, 0.02),
    "prefix": ({"learning_rate": 3e-1, "num_virtual_tokens": 4}, 0.008),
    "prompt": ({"learning_rate": 3e-1, "num_virtual_tokens": 4}, 0.0015),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_lowers_loss_and_changes_only_trainable_parameters(
    kind: str, tiny_model_dir, overfit_data, tmp_path, capture_attach: AttachedModel
):
    extra, min_drop = KINDS[kind]
    run_dir = run_sft(
        tiny_config(tiny_model_dir, overfit_data, tmp_path / "run", finetuning=kind, **extra)
    )

    losses = logged_losses(run_dir)
    assert len(losses) == 6
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] * (1 - min_drop), losses

    trainable, changed = capture_attach.trainable, capture_attach.changed()
    assert trainable, "nothing was trainable"
    assert changed == trainable  # every trainable parameter moved, no frozen one did
    names = set(capture_attach.before)
    if kind == "full":
        assert trainable == names
    elif kind == "freeze":
        assert trainable == {n for n in names if ".layers.1." in n}  # the last 1 of 2 layers
    elif kind == "lora":
        # LoRA B starts at zero: it moved, and A moved once B was non-zero.
        assert {n for n in trainable if "lora_B" in n}
        assert all(("lora_A" in n or "lora_B" in n) for n in trainable)
        assert len([n for n in trainable if "lora_A" in n]) == len(
            [n for n in trainable if "lora_B" in n]
        )
    else:  # prefix / prompt: one table of virtual-token embeddings, nothing of the base
        assert all("prompt_encoder" in n for n in trainable), trainable


@pytest.mark.parametrize("kind", ["lora", "prefix", "prompt"])
def test_saved_adapter_holds_the_trained_weights(
    kind: str, tiny_model_dir, overfit_data, tmp_path, capture_attach: AttachedModel
):
    extra, _ = KINDS[kind]
    run_dir = run_sft(
        tiny_config(
            tiny_model_dir, overfit_data, tmp_path / "run", finetuning=kind, max_steps=2, **extra
        )
    )
    saved = load_file(run_dir / "adapter_model.safetensors")
    from peft import get_peft_model_state_dict

    trained = get_peft_model_state_dict(capture_attach.model)
    assert set(saved) == set(trained)
    for name, value in trained.items():
        assert torch.equal(saved[name], value), name
    # ...and they are the moved weights, not the initial ones.
    assert capture_attach.changed()


def test_training_is_reproducible_in_one_process(tiny_model_dir, overfit_data, tmp_path):
    """`seed` fixes the adapter's initialisation too: random numbers drawn by earlier work
    in the same process (another run, a sampling generate) must not change the result."""
    first = run_sft(tiny_config(tiny_model_dir, overfit_data, tmp_path / "a", max_steps=2))
    torch.rand(1000)
    second = run_sft(tiny_config(tiny_model_dir, overfit_data, tmp_path / "b", max_steps=2))
    a = load_file(first / "adapter_model.safetensors")
    b = load_file(second / "adapter_model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert logged_losses(first) == logged_losses(second)
