"""NEFTune through our trainer: noisy embeddings while training, clean ones in eval mode
and after training (transformers attaches its hook in train() and removes it after)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from training_helpers import tiny_config

from llamaforge.methods.sft import run_sft

IDS = torch.tensor([[1, 504, 3458, 314, 253, 1789, 30, 2]])  # [1, 8]
ALPHA = 5.0


def test_neftune_noise_only_in_training_mode(
    tiny_model_dir, overfit_data, tmp_path, extra_callbacks, capture_attach
):
    from transformers import TrainerCallback

    seen: dict[str, Any] = {"training": [], "probing": False}

    def record(module: Any, inputs: Any, output: torch.Tensor) -> None:
        # Runs after NEFTune's hook (registered earlier, in train()): sees the noisy output.
        if seen["probing"]:
            return
        (ids,) = inputs
        seen["training"].append((ids.shape, (output - F.embedding(ids, module.weight)).detach()))

    class Probe(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any, **kwargs: Any):
            seen["handle"] = model.get_input_embeddings().register_forward_hook(record)

        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any, **kwargs: Any):
            embeddings = model.get_input_embeddings()
            clean = F.embedding(IDS, embeddings.weight).detach()
            assert embeddings.training
            seen["probing"] = True
            with torch.no_grad():
                first, second = embeddings(IDS), embeddings(IDS)
                embeddings.eval()
                evaluated = embeddings(IDS)
                embeddings.train()
            seen["probing"] = False
            seen.update(clean=clean, first=first, second=second, evaluated=evaluated)

    extra_callbacks.append(Probe())
    run_sft(
        tiny_config(
            tiny_model_dir, overfit_data, tmp_path / "run", max_steps=1, neftune_noise_alpha=ALPHA
        )
    )

    clean, first, second = seen["clean"], seen["first"], seen["second"]
    assert not torch.equal(first, second)  # fresh noise on every training forward
    bound = ALPHA / math.sqrt(IDS.shape[1] * clean.shape[-1])  # alpha / sqrt(L * d)
    for noisy in (first, second):
        noise = (noisy - clean).abs()
        assert noise.max() <= bound * (1 + 1e-5)
        assert noise.mean() > bound / 4  # uniform on [-bound, bound]: mean |noise| = bound / 2
    assert torch.equal(seen["evaluated"], clean)

    # The training forward itself: 4 examples padded to one length, not one packed row, so
    # the noise bound alpha / sqrt(L * d) is the per-example one NEFTune prescribes.
    seen.pop("handle").remove()
    shape, noise = seen["training"][-1]
    assert shape[0] == 4 and shape[1] < 60  # packed, the row would be ~4 times longer
    bound = ALPHA / math.sqrt(shape[1] * noise.shape[-1])
    assert bound / 4 < noise.abs().mean() and noise.abs().max() <= bound * (1 + 1e-5)

    # After training the hook is gone: the saved/returned model embeds cleanly even in train mode.
    embeddings = capture_attach.model.get_input_embeddings()
    embeddings.train()
    with torch.no_grad():
        assert torch.equal(embeddings(IDS), F.embedding(IDS, embeddings.weight))


def test_no_noise_without_neftune(tiny_model_dir, overfit_data, tmp_path, extra_callbacks):
    from transformers import TrainerCallback

    outputs: list[torch.Tensor] = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any, **kwargs: Any):
            embeddings = model.get_input_embeddings()
            with torch.no_grad():
                outputs.append(embeddings(IDS) - F.embedding(IDS, embeddings.weight))

    extra_callbacks.append(Probe())
    run_sft(tiny_config(tiny_model_dir, overfit_data, tmp_path / "run", max_steps=1))
    assert outputs and torch.count_nonzero(outputs[0]) == 0
