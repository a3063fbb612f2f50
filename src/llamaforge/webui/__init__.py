"""The web UI: a Gradio app (:mod:`llamaforge.webui.app`) over back ends free of Gradio, so
they can be tested on their own.

- :mod:`llamaforge.webui.chat`: a loaded model (+ adapter) behind the batch scheduler;
  replies stream as growing chat histories.
- :mod:`llamaforge.webui.train`: a training run as a ``llamaforge train`` subprocess,
  followed through its run directory (``trainer_log.jsonl``).
- :mod:`llamaforge.webui.data`: the dataset preview with trained tokens highlighted.
- :mod:`llamaforge.webui.export`: merge / GGUF export as ``llamaforge export`` subprocesses.

The Gradio layout that wires them together is :mod:`llamaforge.webui.app`. The web UI may
use :mod:`llamaforge.inference` and :mod:`llamaforge.serving`; neither imports it.
"""
