"""`fsdp` on CPU is refused: accelerate (1.15) creates its FSDP plugin only for GPU-type
process groups, so under torchrun on CPU (gloo) the Trainer accepted `fsdp: "full_shard
auto_wrap"`, wrapped the model in plain DistributedDataParallel and trained every weight on
every rank (measured: loss and weights identical to one process, `is_fsdp_enabled` False).
torch's own FSDP (1 and 2) does run on CPU/gloo; it is the Trainer path that drops it."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest
import torch
from training_helpers import tiny_config

from llamaforge.errors import ConfigError
from llamaforge.methods import run_training


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP is allowed on CUDA")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_is_refused_on_cpu(method, tiny_model_dir, overfit_data, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        overfit_data,
        tmp_path / "run",
        finetuning=method,
        fsdp="full_shard auto_wrap",
    )
    with pytest.raises(ConfigError, match="key 'fsdp': FSDP needs CUDA GPUs"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# What the refusal rests on; when accelerate starts sharding on CPU this fails, and the
# refusal in check_hardware (training/harness.py) can give way to a test like test_distributed's.
ACCELERATE_ON_CPU = textwrap.dedent(
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin())
    state = accelerator.state
    assert state.num_processes == 2, state.num_processes
    assert state.distributed_type == DistributedType.MULTI_CPU, state.distributed_type
    assert getattr(state, "fsdp_plugin", None) is None, "accelerate now keeps FSDP on CPU"
    """
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")
@pytest.mark.skipif(torch.cuda.is_available(), reason="about CPU process groups")
def test_accelerate_drops_fsdp_on_cpu(tmp_path):
    script = tmp_path / "accelerate_on_cpu.py"
    script.write_text(ACCELERATE_ON_CPU)
    done = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
