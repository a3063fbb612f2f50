"""Process-group facts for torchrun / accelerate / DeepSpeed runs (we never roll our own)."""

from __future__ import annotations

import os

import torch.distributed as dist

from llamaforge.errors import ConfigError


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_launch() -> None:
    """Before anything is set up: WORLD_SIZE > 1 needs the rendezvous a launcher provides.

    Without it, accelerate fails deep inside TrainingArguments with a traceback about
    MASTER_ADDR (e.g. a stray WORLD_SIZE exported in the shell, or `python -m` instead
    of torchrun).
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not a process count")
    asked = int(raw)
    missing = [
        k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if asked > 1 and missing:
        raise ConfigError(
            f"WORLD_SIZE={asked} is set but {', '.join(missing)} not: launch with `torchrun "
            f"--nproc_per_node {asked} -m llamaforge train ...`, or unset WORLD_SIZE"
        )


def check_world_size(trainer_world_size: int) -> None:
    """Refuse to train when we got fewer processes than were launched.

    `accelerate launch --cpu --num_processes 2` silently runs one process (see NOTES.md);
    a run that thinks it is data-parallel but is not would train on the wrong batch size.
    """
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    got = (
        dist.get_world_size()
        if dist.is_available() and dist.is_initialized()
        else trainer_world_size
    )
    if asked != got or trainer_world_size != asked:
        raise ConfigError(
            f"launched with WORLD_SIZE={asked} but the trainer runs {trainer_world_size} "
            f"process(es) (process group: {got}); on CPU use `torchrun --nproc_per_node N -m "
            "llamaforge train ...`"
        )
