"""``llamaforge webui``: a Gradio app with Chat, Train, Data and Export tabs.

Contract: :func:`build_app` lays out the tabs over the Gradio-free back ends in
:mod:`llamaforge.webui`; :func:`run_webui` serves it on ``host:port`` (127.0.0.1 unless
told) until Ctrl-C, then stops a running training job (it saves a checkpoint) and the chat
scheduler. The app serves no user files: ``allowed_paths`` is empty, there are no upload
components, and Gradio (>= 6.16) answers path-traversal probes on its file routes with 403.
Errors a user can cause show as a one-line message in the page, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ConfigError, LlamaforgeError
from llamaforge.webui.chat import NO_ADAPTER, ChatBackend, find_runs
from llamaforge.webui.export import GGUF_TYPES, KINDS, export_command, run_export
from llamaforge.webui.train import JobStatus, TrainingJob, build_overrides

if TYPE_CHECKING:
    from llamaforge.config import RunConfig

logger = logging.getLogger(__name__)

POLL_S = 1.0
CSS = """
mark.trained { background: #b9f0c4; color: inherit; padding: 0; }
.llamaforge-preview { white-space: pre-wrap; font-size: 0.85em; }
"""
# Train-form fields → config keys (the order they appear in the form).
TRAIN_KEYS = (
    "model",
    "dataset",
    "dataset_dir",
    "finetuning",
    "template",
    "learning_rate",
    "num_epochs",
    "max_steps",
    "micro_batch_size",
    "batch_size",
    "cutoff_len",
    "lora_r",
    "lora_alpha",
    "val_set_size",
    "logging_steps",
    "output_dir",
)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show LlamaforgeErrors as a Gradio error message (no traceback)."""
    import gradio as gr

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except LlamaforgeError as e:
                raise gr.Error(str(e)) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlamaforgeError as e:
            raise gr.Error(str(e)) from None

    return wrapper


def loss_frame(status: JobStatus) -> Any:
    """trainer_log rows → a long table (step, loss, series) for the line plot; None if empty."""
    import pandas as pd

    rows = []
    for row in status.log:
        if "loss" in row:
            rows.append({"step": row["step"], "loss": row["loss"], "series": "train"})
        if "eval_loss" in row:
            rows.append({"step": row["step"], "loss": row["eval_loss"], "series": "eval"})
    if not rows:
        # None, not an empty frame: Gradio 6.31 fixes a colored plot's encoding at its first
        # data frame, and from an empty one it never draws lines.
        return None
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def status_line(status: JobStatus) -> str:
    if status.state == "idle":
        return "No training run yet."
    parts = [f"**{status.state}**", f"`{status.run_dir}`"]
    last = status.last_loss
    if last is not None:
        parts.append(f"step {last[0]} · loss {last[1]:.4f}")
    if status.returncode not in (None, 0):
        parts.append(f"exit code {status.returncode}")
    return " — ".join(parts)


def build_app(cfg: RunConfig, *, runs_dir: str | Path = "runs") -> Any:
    """The Gradio Blocks app; ``app.llamaforge_job`` / ``app.llamaforge_chat`` are its back ends."""
    import gradio as gr

    from llamaforge.config import load_run_config
    from llamaforge.config.validate import CHOICES
    from llamaforge.data.templates import TEMPLATES

    chat = ChatBackend(cfg)
    job = TrainingJob(runs_dir)
    gen_defaults = cfg.generation
    templates = ["", *TEMPLATES]

    with gr.Blocks(title="llamaforge", analytics_enabled=False) as app:
        gr.Markdown("# llamaforge")
        with gr.Tabs():
            # ------------------------------------------------------------------ Chat
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    model_box = gr.Dropdown(
                        [cfg.model.model],
                        value=cfg.model.model,
                        label="Model",
                        allow_custom_value=True,
                        scale=3,
                    )
                    adapter_box = gr.Dropdown(
                        [NO_ADAPTER, *find_runs(runs_dir)],
                        value=cfg.model.adapter or NO_ADAPTER,
                        label="Adapter (run directory)",
                        allow_custom_value=True,
                        scale=3,
                    )
                    refresh = gr.Button("↻ Runs", scale=0)
                    load = gr.Button("Load", variant="secondary", scale=0)
                model_status = gr.Markdown("no model loaded (the first message loads it)")
                with gr.Accordion("System prompt and sampling", open=False):
                    system_box = gr.Textbox(cfg.data.system_prompt or "", label="System prompt")
                    with gr.Row():
                        temperature = gr.Slider(
                            0,
                            2,
                            gen_defaults.temperature,
                            step=0.05,
                            label="Temperature",
                            elem_id="chat-temperature",
                        )
                        top_p = gr.Slider(0.05, 1, gen_defaults.top_p, step=0.05, label="Top-p")
                        top_k = gr.Slider(0, 200, gen_defaults.top_k, step=1, label="Top-k")
                        max_tokens = gr.Slider(
                            1, 2048, gen_defaults.max_new_tokens, step=1, label="Max new tokens"
                        )
                        penalty = gr.Slider(
                            1,
                            2,
                            gen_defaults.repetition_penalty,
                            step=0.05,
                            label="Repetition penalty",
                        )
                chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=420)
                with gr.Row():
                    message = gr.Textbox(
                        placeholder="Type a message and press Enter",
                        show_label=False,
                        elem_id="chat-input",
                        scale=6,
                    )
                    send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
                    stop = gr.Button("Stop", elem_id="chat-stop", scale=1)
                    clear = gr.Button("Clear", scale=1)

            def on_refresh() -> Any:
                runs = [NO_ADAPTER, *find_runs(runs_dir)]
                return gr.update(choices=runs), gr.update(choices=runs[1:])

            @_user_errors
            def on_load(model: str, adapter: str) -> str:
                return chat.load(model, adapter)

            def add_user(text: str, history: list[dict[str, Any]]) -> tuple[str, list]:
                if not text.strip():
                    raise gr.Error("type a message first")
                return "", [*history, {"role": "user", "content": text}]

            @_user_errors
            def respond(history, system, temp, p, k, n, rep):  # type: ignore[no-untyped-def]
                gen = dataclasses.replace(
                    gen_defaults,
                    temperature=float(temp),
                    top_p=float(p),
                    top_k=int(k),
                    max_new_tokens=int(n),
                    repetition_penalty=float(rep),
                    do_sample=None,
                    num_beams=1,
                )
                yield from chat.reply(history, gen, system or "")

            load.click(on_load, [model_box, adapter_box], model_status)
            sampling = [system_box, temperature, top_p, top_k, max_tokens, penalty]
            answering = []
            for trigger in (message.submit, send.click):
                event = trigger(add_user, [message, chatbot], [message, chatbot]).then(
                    respond, [chatbot, *sampling], chatbot
                )
                event.then(lambda: chat.status(), None, model_status)
                answering.append(event)
            stop.click(None, cancels=answering)
            clear.click(lambda: [], None, chatbot, cancels=answering)

            # ------------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    t_model = gr.Textbox(cfg.model.model, label="Base model", elem_id="train-model")
                    t_dataset = gr.Textbox(
                        ", ".join(cfg.data.dataset),
                        label="Dataset (file or registry name)",
                        elem_id="train-dataset",
                    )
                    t_dataset_dir = gr.Textbox(cfg.data.dataset_dir or "", label="Dataset dir")
                with gr.Row():
                    t_method = gr.Dropdown(
                        list(CHOICES["finetuning"]),
                        value=cfg.finetuning.finetuning,
                        label="Finetuning",
                    )
                    t_template = gr.Dropdown(
                        templates,
                        value=cfg.data.template or "",
                        label="Template",
                        allow_custom_value=True,
                    )
                    t_lr = gr.Number(cfg.training.learning_rate, label="Learning rate")
                    t_epochs = gr.Number(cfg.training.num_epochs, label="Epochs")
                    t_steps = gr.Number(
                        cfg.training.max_steps, label="Max steps (-1: epochs)", precision=0
                    )
                with gr.Row():
                    t_micro = gr.Number(
                        cfg.training.micro_batch_size, label="Micro-batch", precision=0
                    )
                    t_batch = gr.Number(cfg.training.batch_size, label="Batch size", precision=0)
                    t_cutoff = gr.Number(cfg.data.cutoff_len, label="Cutoff length", precision=0)
                    t_rank = gr.Number(cfg.finetuning.lora_r, label="LoRA r", precision=0)
                    t_alpha = gr.Number(cfg.finetuning.lora_alpha, label="LoRA alpha", precision=0)
                    t_val = gr.Number(cfg.data.val_set_size, label="Validation size")
                    t_logging = gr.Number(
                        cfg.training.logging_steps, label="Log every", precision=0
                    )
                t_output = gr.Textbox(
                    "", label="Run directory (blank: runs/webui-<time>)", elem_id="train-output"
                )
                t_extra = gr.Textbox(
                    "",
                    lines=3,
                    label="More settings, one key=value per line (see `llamaforge config keys`)",
                    elem_id="train-extra",
                )
                with gr.Row():
                    t_start = gr.Button("Start training", variant="primary", elem_id="train-start")
                    t_stop = gr.Button("Stop", elem_id="train-stop")
                t_status = gr.Markdown("No training run yet.", elem_id="train-status")
                t_plot = gr.LinePlot(
                    None,
                    x="step",
                    y="loss",
                    color="series",
                    title="Loss",
                    elem_id="loss-plot",
                    height=300,
                )
                t_console = gr.Textbox(
                    "",
                    lines=12,
                    max_lines=12,
                    label="Console",
                    elem_id="train-log",
                    autoscroll=True,
                )
                timer = gr.Timer(POLL_S)

            form = [
                t_model,
                t_dataset,
                t_dataset_dir,
                t_method,
                t_template,
                t_lr,
                t_epochs,
                t_steps,
                t_micro,
                t_batch,
                t_cutoff,
                t_rank,
                t_alpha,
                t_val,
                t_logging,
                t_output,
            ]

            def refresh_job() -> tuple[str, Any, str]:
                status = job.poll()
                return status_line(status), loss_frame(status), status.console

            @_user_errors
            def on_start(*values: Any) -> tuple[str, Any, str]:
                *fields, extra = values
                form_values = dict(zip(TRAIN_KEYS, fields, strict=True))
                datasets = [d.strip() for d in str(form_values["dataset"] or "").split(",")]
                form_values["dataset"] = (
                    "[" + ", ".join(d for d in datasets if d) + "]" if any(datasets) else None
                )
                job.start(build_overrides(form_values, extra or ""))
                return refresh_job()

            def on_stop() -> tuple[str, Any, str]:
                job.stop()
                return refresh_job()

            outputs = [t_status, t_plot, t_console]
            t_start.click(on_start, [*form, t_extra], outputs)
            t_stop.click(on_stop, None, outputs)
            timer.tick(refresh_job, None, outputs)

            # ------------------------------------------------------------------ Data
            with gr.Tab("Data", id="data"):
                with gr.Row():
                    d_dataset = gr.Textbox(
                        cfg.data.dataset[0] if cfg.data.dataset else "",
                        label="Dataset (file or registry name)",
                        elem_id="data-dataset",
                    )
                    d_dataset_dir = gr.Textbox(cfg.data.dataset_dir or "", label="Dataset dir")
                    d_model = gr.Textbox(cfg.model.model, label="Tokenizer of model")
                with gr.Row():
                    d_template = gr.Dropdown(
                        templates,
                        value=cfg.data.template or "",
                        label="Template",
                        allow_custom_value=True,
                    )
                    d_cutoff = gr.Number(cfg.data.cutoff_len, label="Cutoff length", precision=0)
                    d_inputs = gr.Checkbox(cfg.data.train_on_inputs, label="Train on inputs")
                    d_count = gr.Slider(1, 20, 3, step=1, label="Records shown")
                d_go = gr.Button("Preview", variant="primary", elem_id="data-preview-button")
                d_out = gr.HTML(elem_id="data-preview")

            @_user_errors
            def on_preview(dataset, dataset_dir, model, template, cutoff, inputs, count):  # type: ignore[no-untyped-def]
                if not (dataset or "").strip():
                    raise ConfigError("name a dataset file or registry entry to preview")
                overrides = {
                    "model": model or cfg.model.model,
                    "dataset": [dataset.strip()],
                    "cutoff_len": int(cutoff),
                    "train_on_inputs": bool(inputs),
                }
                if dataset_dir:
                    overrides["dataset_dir"] = dataset_dir
                if template:
                    overrides["template"] = template
                from llamaforge.webui.data import preview_html

                preview_cfg = load_run_config(None, (), **overrides)
                return preview_html(preview_cfg, num_examples=int(count))

            d_go.click(
                on_preview,
                [d_dataset, d_dataset_dir, d_model, d_template, d_cutoff, d_inputs, d_count],
                d_out,
            )

            # ------------------------------------------------------------------ Export
            with gr.Tab("Export", id="export"):
                with gr.Row():
                    e_model = gr.Dropdown(
                        find_runs(runs_dir),
                        label="Run directory or model",
                        allow_custom_value=True,
                        elem_id="export-model",
                    )
                    e_kind = gr.Radio(list(KINDS), value="merge", label="Export")
                    e_type = gr.Dropdown(list(GGUF_TYPES), value="f16", label="GGUF type")
                with gr.Row():
                    e_output = gr.Textbox(
                        "",
                        label="Output (a directory for merge, FILE.gguf for GGUF)",
                        elem_id="export-output",
                    )
                    e_overwrite = gr.Checkbox(False, label="Overwrite")
                e_go = gr.Button("Export", variant="primary", elem_id="export-button")
                e_log = gr.Textbox("", lines=12, label="Log", elem_id="export-log")

            @_user_errors
            def on_export(model, kind, gguf_type, output, overwrite):  # type: ignore[no-untyped-def]
                command = export_command(
                    kind, model or "", output or "", gguf_type=gguf_type, overwrite=bool(overwrite)
                )
                yield from run_export(command)

            e_go.click(on_export, [e_model, e_kind, e_type, e_output, e_overwrite], e_log)
            refresh.click(on_refresh, None, [adapter_box, e_model])

    app.llamaforge_job = job
    app.llamaforge_chat = chat
    return app


def launch(app: Any, *, host: str, port: int, block: bool) -> None:
    """Serve ``app``; no shared links, no user files."""
    import gradio as gr

    app.queue(default_concurrency_limit=16)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            allowed_paths=[],
            prevent_thread_lock=not block,
            theme=gr.themes.Default(),
            css=CSS,
            quiet=True,
            footer_links=[],
        )
    except OSError as e:
        raise ConfigError(
            f"cannot serve the web UI on {host}:{port} ({e}); pick another --port"
        ) from None


def run_webui(cfg: RunConfig, *, host: str, port: int, runs_dir: str = "runs") -> int:
    """The ``webui`` command: serve until Ctrl-C; returns the exit code."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "llamaforge webui needs the serve extra: pip install 'llamaforge[serve]'"
        ) from None
    app = build_app(cfg, runs_dir=runs_dir)
    logger.info("web UI on http://%s:%d", host, port)
    try:
        launch(app, host=host, port=port, block=True)
    finally:
        app.llamaforge_job.stop()
        app.llamaforge_chat.close()
    return 0
