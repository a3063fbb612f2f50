"""Self-instruct: grow an instruction dataset from a few seed tasks with any chat model.

``run_selfinstruct(SelfInstructOptions(...))`` is the ``llamaforge selfinstruct`` command
(:mod:`llamaforge.selfinstruct.generate`); the seed files and prompts it ships are data in
``seeds/`` and ``prompts/<lang>/``.
"""

from llamaforge.selfinstruct.generate import run_selfinstruct
from llamaforge.selfinstruct.options import SelfInstructOptions
from llamaforge.selfinstruct.outputs import describe_run

__all__ = ["SelfInstructOptions", "describe_run", "run_selfinstruct"]
