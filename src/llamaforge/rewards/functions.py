"""Reward functions of the user's own, named ``module:function``, and the check every
reward's values pass.

A user function is imported by its module name, or, when no installed module has that
name, from ``<module>.py`` next to the config file (dots are folders). It is called as TRL
calls reward functions, with keyword arguments: ``prompts`` (the rendered prompt texts),
``completions`` (texts), ``completion_ids``, the dataset's columns per completion
(``answer``: the reference answer, ``messages``: the conversation before it) and TRL's
``trainer_state``, ``log_extra`` and ``log_metric``, and returns one number per
completion (None: no opinion on that one). :class:`CheckedReward` wraps every reward: a
function that raises, returns the wrong number of values or a value that is not a finite
number stops the run with a :class:`~llamaforge.errors.ConfigError` naming the reward and
the step; checkpoints and the log written before stay as they are, so the run resumes
(``resume_from_checkpoint=auto``) once the function is fixed.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from llamaforge.errors import ConfigError, LlamaforgeError

RewardFunction = Callable[..., Sequence[Any]]


def _module_file(module: str, base_dir: Path | None) -> Path | None:
    if base_dir is None:
        return None
    path = base_dir.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def import_function(spec: str, base_dir: Path | None) -> RewardFunction:
    """The function ``module:function`` names (see the module docstring)."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        path = _module_file(module_name, base_dir)
        if path is None or not (e.name and module_name.startswith(e.name)):
            where = f" or as {base_dir}/{module_name.replace('.', '/')}.py" if base_dir else ""
            raise ConfigError(
                f"key 'rewards': reward '{spec}': no module '{module_name}' is installed{where}"
            ) from None
        module = _import_file(module_name, path, spec)
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(
            f"key 'rewards': reward '{spec}': importing {module_name} raised "
            f"{type(e).__name__}: {e}"
        ) from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(
            f"key 'rewards': reward '{spec}': {module.__file__} has no function '{function_name}'"
        )
    return function


def _import_file(name: str, path: Path, spec: str) -> Any:
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None and loader_spec.loader is not None  # a .py file
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(
            f"key 'rewards': reward '{spec}': importing {path} raised {type(e).__name__}: {e}"
        ) from e
    return module


class CheckedReward:
    """``function`` under the reward ``name``, its values checked (module docstring)."""

    def __init__(self, name: str, function: RewardFunction) -> None:
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self.function = function

    def __call__(self, *, completions: Sequence[str], **kwargs: Any) -> list[float | None]:
        state = kwargs.get("trainer_state")
        at = f" at step {state.global_step + 1}" if state is not None else ""
        fix = "fix it and run again (resume_from_checkpoint=auto continues from a checkpoint)"
        try:
            values = self.function(completions=completions, **kwargs)
        except LlamaforgeError:
            raise
        except Exception as e:
            raise ConfigError(
                f"reward '{self.__name__}' raised {type(e).__name__}: {e}{at}; {fix}"
            ) from e
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError(
                f"reward '{self.__name__}' returned {type(values).__name__}{at}, not a list of "
                f"{len(completions)} numbers (one per completion); {fix}"
            )
        if len(values) != len(completions):
            raise ConfigError(
                f"reward '{self.__name__}' returned {len(values)} values for "
                f"{len(completions)} completions{at} (one number per completion); {fix}"
            )
        checked: list[float | None] = []
        for i, value in enumerate(values):
            if value is not None and not (isinstance(value, Real) and math.isfinite(value)):
                raise ConfigError(
                    f"reward '{self.__name__}' returned {value!r} for completion {i + 1}{at}; "
                    f"return finite numbers (or None for no opinion); {fix}"
                )
            checked.append(None if value is None else float(value))
        return checked
