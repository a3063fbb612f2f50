"""Run configuration: typed sections, YAML loading with overrides, validation."""

from llamaforge.config.loader import config_to_dict, known_keys, load_run_config
from llamaforge.config.sections import (
    DataConfig,
    FinetuningConfig,
    GenerationConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)
from llamaforge.config.validate import validate_generation

__all__ = [
    "DataConfig",
    "FinetuningConfig",
    "GenerationConfig",
    "ModelConfig",
    "RunConfig",
    "TrainingConfig",
    "config_to_dict",
    "known_keys",
    "load_run_config",
    "validate_generation",
]
