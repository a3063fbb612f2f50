"""The stage harness: the seed reaches training, our config decides TRL's precision and
checkpointing defaults, the run plan is recorded, and the finetuning table is what runs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import tiny_config

from llamaforge.config import load_run_config
from llamaforge.config.finetuning import FINETUNING
from llamaforge.methods import run_training
from llamaforge.training.harness import plan_run, training_arguments
from llamaforge.training.trainer import TrainedPositionsTrainer

RECORDS = [
    {"instruction": f"Question number {i}?", "input": "", "output": f"Answer {i}."}
    for i in range(12)
]


@pytest.fixture
def order_data(tmp_path):
    from training_helpers import write_alpaca

    return write_alpaca(tmp_path / "order.json", RECORDS)


@pytest.fixture
def first_batches(monkeypatch):
    """The input ids of each training micro-batch (not the pre-flight's calibration)."""
    seen: list[list[int]] = []
    real = TrainedPositionsTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if num_items_in_batch is not None:
            seen.append(inputs["input_ids"].flatten().tolist())
        return real(self, model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(TrainedPositionsTrainer, "compute_loss", compute_loss)
    return seen


def _train(tiny_model_dir, data, run_dir, seed: int, seen: list) -> tuple[dict, list]:
    seen.clear()
    cfg = tiny_config(
        tiny_model_dir,
        data,
        run_dir,
        seed=seed,
        max_steps=2,
        batch_size=2,
        micro_batch_size=2,
        lora_dropout=0.0,
    )
    out = run_training(cfg)
    return load_file(out / "adapter_model.safetensors"), list(seen)


def test_seed_changes_lora_init_and_data_order_and_the_same_seed_reproduces(
    tiny_model_dir, order_data, tmp_path, first_batches, capture_attach
):
    a, order_a = _train(tiny_model_dir, order_data, tmp_path / "a", 7, first_batches)
    init_a = {k: v for k, v in capture_attach.before.items() if "lora_A" in k}
    again, order_again = _train(tiny_model_dir, order_data, tmp_path / "b", 7, first_batches)
    init_again = {k: v for k, v in capture_attach.before.items() if "lora_A" in k}
    other, order_other = _train(tiny_model_dir, order_data, tmp_path / "c", 8, first_batches)
    init_other = {k: v for k, v in capture_attach.before.items() if "lora_A" in k}

    assert init_a and all(torch.equal(init_a[k], init_again[k]) for k in init_a)
    assert not any(torch.equal(init_a[k], init_other[k]) for k in init_a)
    assert order_a == order_again and order_a != order_other
    assert all(torch.equal(a[k], again[k]) for k in a)  # the same seed: the same run
    assert not all(torch.equal(a[k], other[k]) for k in a)
    metadata = json.loads((tmp_path / "a" / "run_metadata.json").read_text())
    assert metadata["seed"] == 7


def test_run_plan_is_resolved_once_and_recorded(tiny_model_dir, overfit_data, tmp_path):
    cfg = tiny_config(tiny_model_dir, overfit_data, tmp_path / "run", max_steps=1)
    run_dir = run_training(cfg)
    plan = json.loads((run_dir / "run_metadata.json").read_text())["plan"]
    assert plan == {
        "stage": "sft",
        "run_dir": str(tmp_path / "run"),
        "precision": "fp32",
        "base_dtype": "auto",
        "quantization_bit": None,
        "packing": True,
        "world_size": 1,
        "resume": None,
        "sharded": False,
        "continues_adapter": False,
    }


@pytest.mark.parametrize("kind", ["prefix", "prompt", "qlora", "lora"])
def test_the_finetuning_table_decides_packing_and_quantization(tmp_path, kind):
    cfg = load_run_config(
        None, [f"finetuning={kind}", "dataset=x.json", f"output_dir={tmp_path / 'run'}"]
    )
    plan = plan_run(cfg, packing=True)
    assert plan.packing == FINETUNING[kind].packable
    assert plan.quantization_bit == FINETUNING[kind].quantization_bit
    assert plan.model_config(cfg).quantization_bit == FINETUNING[kind].quantization_bit


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trl_configs_take_precision_and_checkpointing_from_our_config(
    tmp_path, gradient_checkpointing
):
    """TRL's configs default bf16=True and gradient_checkpointing=True; ours decides both."""
    from trl import DPOConfig, RewardConfig

    cfg = load_run_config(
        None,
        [
            "precision=fp32",
            f"gradient_checkpointing={str(gradient_checkpointing).lower()}",
            "dataset=x.json",
            f"output_dir={tmp_path / 'run'}",
            "seed=5",
        ],
    )
    plan = plan_run(cfg, packing=False)
    for config_class in (DPOConfig, RewardConfig):
        args = training_arguments(cfg, plan, config_class, has_eval=False)
        assert isinstance(args, config_class)
        assert args.bf16 is False and args.fp16 is False
        assert args.gradient_checkpointing is gradient_checkpointing
        assert args.activation_checkpointing is gradient_checkpointing
        assert args.seed == 5 and args.output_dir == str(tmp_path / "run")
    dpo = training_arguments(cfg, plan, DPOConfig, has_eval=False, beta=0.3)
    assert dpo.beta == 0.3


def test_each_finetuning_kind_trains_what_the_table_says(tiny_llama):
    import copy

    from llamaforge.adapters.attach import attach_adapter
    from llamaforge.config.sections import FinetuningConfig

    base_names = {name for name, _ in tiny_llama.named_parameters()}
    for name, kind in FINETUNING.items():
        if kind.quantization_bit:
            continue  # needs a quantized load: tests/training/test_qlora.py
        model = attach_adapter(
            copy.deepcopy(tiny_llama), FinetuningConfig(finetuning=name, num_virtual_tokens=2)
        )
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        base_trained = {n.removeprefix("base_model.model.") for n in trained} & base_names
        assert trained, name
        if kind.frozen_base:
            assert not base_trained, (name, sorted(base_trained)[:3])
        elif kind.partial:
            assert base_trained and base_trained != base_names, name
        else:
            assert base_trained == base_names, name


def test_adapter_input_cast_is_switched_off_and_restored_with_trainable_tokens(tiny_llama):
    """Under autocast the harness turns peft's per-layer input cast off; a model holding a
    TrainableTokensLayer (pt's train_new_tokens), which has no such switch, must work too
    (peft's own helper raises AttributeError on it)."""
    from peft import LoraConfig, get_peft_model

    from llamaforge.training.harness import no_adapter_input_cast

    config = LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[5, 6])
    model = get_peft_model(tiny_llama, config)
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and any(type(m).__name__ == "TrainableTokensLayer" for m in model.modules())
    with no_adapter_input_cast(model, active=True):
        assert not any(m.cast_input_dtype_enabled for m in layers)
    assert all(m.cast_input_dtype_enabled for m in layers)
    with no_adapter_input_cast(model, active=False):
        assert all(m.cast_input_dtype_enabled for m in layers)
