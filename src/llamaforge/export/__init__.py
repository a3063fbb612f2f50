"""Export: verified LoRA merge (HF safetensors), GGUF writer, quantized saves.

Heavy imports (torch, transformers, peft, gguf) happen inside the submodules, which the CLI
imports only when an export command runs.
"""
