"""Adapters: our config → peft adapters, and loading saved adapters for inference."""

from llamaforge.adapters.loading import load_adapter

__all__ = ["load_adapter"]
