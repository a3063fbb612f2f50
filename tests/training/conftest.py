"""Fixtures for training tests: a shared model cache, data files, hooks into the harness.

Every test in this directory shares one LLAMAFORGE_CACHE for the session, so the bundled
model is dequantized once (~30-50 s) however many real-model tests run, and subprocesses
started by the tests inherit it through the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import OVERFIT_RECORDS, AttachedModel, write_alpaca


@pytest.fixture(scope="session")
def training_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llamaforge-cache")


@pytest.fixture(autouse=True)
def _use_training_cache(training_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAFORGE_CACHE", str(training_cache))


@pytest.fixture(scope="session")
def smollm2_cached(training_cache: Path) -> Path:
    """The bundled model dequantized into the session cache, before any subprocess needs it.

    Subprocesses that start at once with an empty cache race to build it; at present one
    can delete the other's finished copy while it loads (models/gguf_cache.py).
    """
    from llamaforge.models.gguf_cache import cached_gguf_dir
    from llamaforge.models.loader import resolve_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMAFORGE_CACHE", str(training_cache))
        gguf = resolve_model("smollm2-135m").gguf_path
        assert gguf is not None
        return cached_gguf_dir(gguf)


@pytest.fixture
def overfit_data(tmp_path: Path) -> Path:
    return write_alpaca(tmp_path / "overfit.json", OVERFIT_RECORDS)


@pytest.fixture
def capture_attach(monkeypatch: pytest.MonkeyPatch) -> Iterator[AttachedModel]:
    """Record what `attach_adapter` hands to the trainer inside a stage (the harness)."""
    import llamaforge.training.harness as harness

    captured = AttachedModel()
    real = harness.attach_adapter

    def attach(model: Any, cfg: Any, **kwargs: Any) -> Any:
        model = real(model, cfg, **kwargs)
        captured.model = model
        for name, param in model.named_parameters():
            captured.before[name] = param.detach().clone()
            if param.requires_grad:
                captured.trainable.add(name)
        return model

    monkeypatch.setattr(harness, "attach_adapter", attach)
    yield captured


@pytest.fixture
def extra_callbacks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Callbacks appended here join the Trainer of any stage (added by the harness)."""
    import llamaforge.training.harness as harness

    callbacks: list[Any] = []
    real = harness.stage_callbacks

    def stage_callbacks(*args: Any, **kwargs: Any) -> Any:
        log, interrupt, own = real(*args, **kwargs)
        return log, interrupt, [*callbacks, *own]

    monkeypatch.setattr(harness, "stage_callbacks", stage_callbacks)
    return callbacks


@pytest.fixture
def record_grads(
    capture_attach: AttachedModel, extra_callbacks: list[Any]
) -> list[dict[str, torch.Tensor | None]]:
    """Per optimizer step, each trainable parameter's gradient just before the optimizer
    step (None: it got none). The pre-flight estimate's calibration passes don't count."""
    from transformers import TrainerCallback

    steps: list[dict[str, torch.Tensor | None]] = []

    class GradRecorder(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
            params = dict(capture_attach.model.named_parameters())
            steps.append(
                {
                    name: None if params[name].grad is None else params[name].grad.clone()
                    for name in sorted(capture_attach.trainable)
                }
            )

    extra_callbacks.append(GradRecorder())
    return steps
