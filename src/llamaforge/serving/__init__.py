"""Serving: the OpenAI-compatible HTTP API of ``llamaforge serve`` over the batch scheduler.

- :mod:`llamaforge.serving.requests`: what goes into the scheduler (requests, served models)
  and what comes out (text pieces, finished results, failures).
- :mod:`llamaforge.serving.sampling`: per-request sampling, as ``model.generate`` samples.
- :mod:`llamaforge.serving.batching`: the continuous-batching scheduler thread.
- :mod:`llamaforge.serving.model_pool`: the base model and its adapters, loaded once.
- :mod:`llamaforge.serving.schema`: API request bodies and their translation to our types.
- :mod:`llamaforge.serving.runtime`: server state, the gate middleware, a request's rows.
- :mod:`llamaforge.serving.routes`: the FastAPI app and its endpoints.
- :mod:`llamaforge.serving.server`: bind, load in the background, serve, drain on SIGTERM.

Built on :mod:`llamaforge.inference` (the engine, stop strings); never imports the web UI.
"""
