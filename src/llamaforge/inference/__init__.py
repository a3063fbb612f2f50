"""Inference: the generation engine and the commands built on it (generate, chat)."""

from llamaforge.inference.engine import GenerationEngine, GenerationResult, TokenStream

__all__ = ["GenerationEngine", "GenerationResult", "TokenStream"]
