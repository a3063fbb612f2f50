"""Inference: the generation engine and the commands built on it (generate, chat).

Messages in, streamed tokens out: :mod:`~llamaforge.inference.engine`, its stop strings
(:mod:`~llamaforge.inference.stops`), ``chat_cli`` and ``commands``. The HTTP server is
:mod:`llamaforge.serving` and the web UI :mod:`llamaforge.webui`; neither is imported here.
"""

from llamaforge.inference.engine import GenerationEngine, GenerationResult, TokenStream

__all__ = ["GenerationEngine", "GenerationResult", "TokenStream"]
