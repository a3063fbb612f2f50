"""`llamaforge <command> ...`: argument parsing only; each command lives in its own module.

User errors (LlamaforgeError) print one message and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from llamaforge.config.sections import RunConfig
from llamaforge.errors import LlamaforgeError

logger = logging.getLogger("llamaforge")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="base model: smollm2-135m, HF dir, .gguf, cached hub id"
    )
    p.add_argument("--adapter", default=None, help="LoRA adapter or run directory")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None, dest="sampling_seed", help="sampling seed")
    p.add_argument("--template", default=None, help="chat (default), alpaca, vigogne, llama3, ...")
    p.add_argument("--system", default=None, help="system prompt")


def _config_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, object]:
    """Command-line flags that were given, as config keys (dashes → underscores)."""
    values = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return values


MODEL_FLAGS = ("model", "adapter", "dtype")
GENERATION_FLAGS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "repetition_penalty",
    "do_sample",
    "stop",
    "sampling_seed",
    "template",
    "system_prompt",
)


def _load_config(args: argparse.Namespace, flags: Sequence[str]) -> RunConfig:
    from llamaforge.config import load_run_config

    if getattr(args, "system", None) is not None:
        args.system_prompt = args.system
    return load_run_config(
        getattr(args, "config", None), getattr(args, "overrides", ()), **_config_values(args, flags)
    )


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _load_config(args, (*MODEL_FLAGS, *GENERATION_FLAGS))
    from llamaforge.inference.commands import run_generate

    return run_generate(
        cfg, prompt=args.prompt, input_path=args.input, output_path=args.output, raw=args.raw
    )


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = _load_config(args, (*MODEL_FLAGS, *GENERATION_FLAGS))
    from llamaforge.inference.chat_cli import run_chat

    return run_chat(cfg)


def cmd_data_preview(args: argparse.Namespace) -> int:
    cfg = _load_config(
        args,
        ("model", "template", "cutoff_len", "train_on_inputs", "format", "dataset_dir", "dataset"),
    )
    from llamaforge.data.preview import preview_dataset
    from llamaforge.models import load_tokenizer

    def tokenizer() -> object:
        return load_tokenizer(cfg.model.model, trust_remote_code=cfg.model.trust_remote_code)

    report = preview_dataset(cfg, num_examples=args.num_examples, load_tokenizer=tokenizer)
    sys.stdout.write(report + "\n")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    cfg = _load_config(args, ("model", "dtype", "template", "cutoff_len", "dataset_dir"))
    from llamaforge.evaluation.reward_scores import run_score

    return run_score(cfg, args.data, args.output)


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = _load_config(args, (*MODEL_FLAGS, "template", "dataset_dir"))
    from llamaforge.evaluation.commands import EvalOptions, run_eval

    options = EvalOptions(
        suite=args.suite,
        data=args.data,
        shots=args.shots,
        split=args.split,
        output=args.output,
        batch_size=args.batch_size,
        limit=args.limit,
        subjects=tuple(s for s in (args.subjects or "").split(",") if s),
        prompt_style=args.prompt_style,
        block_size=args.block_size,
    )
    return run_eval(cfg, options)


def cmd_train(args: argparse.Namespace) -> int:
    from llamaforge.config import load_run_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]  # `llamaforge train key=value ...`
    cfg = load_run_config(config, overrides)
    from llamaforge.methods import run_training

    run_training(cfg)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from llamaforge.pipeline import run_pipeline

    output = run_pipeline(args.file, dry_run=args.dry_run)
    if not args.dry_run:
        sys.stdout.write(f"pipeline complete: {output}\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load_config(args, ("model", "dtype"))  # --adapter is a list here, not one adapter
    from llamaforge.serving.server import run_serve

    return run_serve(
        cfg,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_concurrent=args.max_concurrent,
        adapters=args.adapter or [],
        threads=args.threads,
    )


def cmd_selfinstruct(args: argparse.Namespace) -> int:
    from llamaforge.selfinstruct import SelfInstructOptions, describe_run, run_selfinstruct

    names = SelfInstructOptions.__dataclass_fields__
    options = SelfInstructOptions(**{k: v for k, v in vars(args).items() if k in names})
    sys.stdout.write(describe_run(options.output, run_selfinstruct(options)) + "\n")
    return 0


def cmd_webui(args: argparse.Namespace) -> int:
    cfg = _load_config(args, ("model",))
    from llamaforge.webui.app import run_webui

    return run_webui(cfg, host=args.host, port=args.port, runs_dir=args.runs_dir)


def cmd_export_merge(args: argparse.Namespace) -> int:
    from llamaforge.export.commands import run_export_merge

    return run_export_merge(
        args.model, args.adapter, args.output, shard_size=args.shard_size, overwrite=args.overwrite
    )


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from llamaforge.export.commands import run_export_gguf

    return run_export_gguf(
        args.model,
        args.output,
        args.type,
        args.adapter,
        system=args.system,
        modelfile=not args.no_modelfile,
        overwrite=args.overwrite,
    )


def cmd_export_quantize(args: argparse.Namespace) -> int:
    from llamaforge.export.commands import run_export_quantize

    return run_export_quantize(
        args.model, args.output, args.bits, args.adapter, overwrite=args.overwrite
    )


def cmd_tokenizer_extend(args: argparse.Namespace) -> int:
    from llamaforge.export.extend import extend_model

    report = extend_model(
        args.model,
        args.corpus,
        args.add,
        args.output,
        heldout=args.heldout or (),
        min_frequency=args.min_frequency,
        overwrite=args.overwrite,
    )
    sys.stdout.write(report.summary() + "\n")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    from llamaforge.config.docs import describe_keys

    sys.stdout.write(describe_keys() + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamaforge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="fine-tune a model: llamaforge train CONFIG.yaml [key=value ...]"
    )
    p.add_argument("config", nargs="?", help="YAML config (optional when overrides say enough)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, values parsed as YAML")
    p.set_defaults(command_key="train")

    p = sub.add_parser(
        "pipeline",
        help="run a staged recipe (e.g. pt -> sft) as one command; skips finished stages, "
        "resumes an interrupted one",
    )
    p.add_argument("file", help="pipeline YAML: output_dir and a list of stages")
    p.add_argument("--dry-run", action="store_true", help="list the stages and what they do")
    p.set_defaults(command_key="pipeline")

    p = sub.add_parser(
        "generate", help="generate answers for one prompt or a JSONL file of prompts"
    )
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--prompt", help="user message (formatted with the chat/prompt template)")
    p.add_argument("--input", help="JSONL of prompts ({'prompt': ...} or {'messages': [...]})")
    p.add_argument("--output", help="JSONL file for predictions (with --input)")
    p.add_argument("--raw", action="store_true", help="send the prompt text as-is, no template")
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="generate", overrides=())

    p = sub.add_parser("chat", help="interactive multi-turn chat in the terminal")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="chat", overrides=())

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "preview", help="validate a dataset and show records as the model sees them"
    )
    p.add_argument("dataset", help="a file path or a registry name")
    p.add_argument("--model", default=None)
    p.add_argument("--template", default=None)
    p.add_argument("--cutoff-len", type=int, default=None)
    p.add_argument("--train-on-inputs", action="store_true", default=None)
    p.add_argument("--format", default=None)
    p.add_argument("--dataset-dir", default=None)
    p.add_argument("--num-examples", type=int, default=3)
    p.set_defaults(command_key="data preview", overrides=())

    p = sub.add_parser(
        "score", help="score preference pairs (accuracy, margin) or responses with a reward model"
    )
    p.add_argument("--model", required=True, help="a reward-model run directory (stage rm)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--data", required=True, help="pairs or responses: a file or registry name")
    p.add_argument("--output", default=None, help="JSONL of scores, one line per record")
    p.add_argument("--template", default=None, help="default: the run's own")
    p.add_argument("--cutoff-len", type=int, default=None)
    p.add_argument("--dataset-dir", default=None)
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="score", overrides=())

    p = sub.add_parser(
        "eval", help="score a model: multiple-choice suites (MMLU/C-Eval/CMMLU CSVs), perplexity"
    )
    _add_model_args(p)
    p.add_argument("--suite", required=True, help="suite folder (dev/ + test/ CSVs) or 'ppl'")
    p.add_argument("--data", default=None, help="--suite ppl: text, JSONL or dataset to score")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples from dev/ (first K)")
    p.add_argument("--split", default="test", help="split folder scored (test, val, dev)")
    p.add_argument("--subjects", default=None, help="comma-separated subjects (default: all)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each subject")
    p.add_argument("--batch-size", type=int, default=16, help="questions (rows) per forward")
    p.add_argument(
        "--prompt-style", default="auto", help="auto | mmlu | cmmlu | ceval (auto: by language)"
    )
    p.add_argument("--block-size", type=int, default=None, help="ppl: tokens per window")
    p.add_argument("--template", default=None, help="ppl on conversations: prompt template")
    p.add_argument("--dataset-dir", default=None, help="ppl: folder of dataset_info.json")
    p.add_argument("--output", default=None, help="directory for results.json")
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="eval", overrides=())

    p = sub.add_parser("serve", help="OpenAI-compatible API server (/v1/chat/completions, ...)")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--adapter", action="append", default=None, help="DIR or NAME=DIR (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--max-concurrent", type=int, default=32, help="requests beyond get 429")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 helps on busy CPUs)")
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="serve", overrides=())

    p = sub.add_parser(
        "selfinstruct",
        help="generate instruction data from seed tasks with a chat model (resumable)",
    )
    p.add_argument("--output", type=Path, required=True, help="Alpaca JSON file to write")
    p.add_argument("--num", type=int, default=100, help="records to keep")
    p.add_argument("--lang", default="en", help="en | zh")
    p.add_argument("--seeds", type=Path, help="seed_tasks.jsonl (default: the shipped ones)")
    p.add_argument("--prompts", type=Path, help="directory of <name>.txt prompts to use instead")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (default: serve --model here)")
    p.add_argument("--model", help="model to request (no --endpoint: model to serve)")
    p.add_argument("--api-key")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    p.add_argument("--max-requests", type=int, help="request budget (default: 50 per record)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=300.0, help="s/request")
    p.add_argument("--max-retries", type=int, default=4)
    p.add_argument("--retry-backoff", dest="backoff_s", type=float, default=1.0, help="first, s")
    p.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L above this: dropped")
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=150)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", dest="instance_tokens", type=int, default=256, help="answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads of the local server")
    p.add_argument("--overwrite", action="store_true", help="start again, discarding progress")
    p.set_defaults(command_key="selfinstruct")

    p = sub.add_parser("webui", help="Gradio web UI: chat, train, data preview, export")
    p.add_argument("--model", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--config", help="optional YAML config")
    p.set_defaults(command_key="webui", overrides=())

    export = sub.add_parser("export", help="merge, GGUF, quantize").add_subparsers(
        dest="export_command", required=True
    )
    p = export.add_parser("merge", help="merge a LoRA adapter into its base: a standalone HF model")
    p.add_argument("--model", help="base model (default: the adapter's run directory says)")
    p.add_argument("--adapter", help="adapter or run directory")
    p.add_argument("--output", required=True)
    p.add_argument("--shard-size", default="2GB")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(command_key="export merge")
    p = export.add_parser("gguf", help="write a verified GGUF file (+ Ollama Modelfile)")
    p.add_argument("--model", required=True, help="HF dir, run directory or model spec")
    p.add_argument("--adapter", default=None)
    p.add_argument("--output", required=True, help="FILE.gguf")
    p.add_argument(
        "--type", default="f16", help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1"
    )
    p.add_argument("--system", default=None, help="SYSTEM line for the Modelfile")
    p.add_argument("--no-modelfile", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(command_key="export gguf")
    p = export.add_parser("quantize", help="save a bitsandbytes 4/8-bit checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--output", required=True)
    p.add_argument("--bits", type=int, choices=(4, 8), default=4)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(command_key="export quantize")

    tokenizer = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(
        dest="tokenizer_command", required=True
    )
    p = tokenizer.add_parser(
        "extend",
        help="learn N new tokens from a corpus (byte-level BPE merges), grow the embeddings",
    )
    p.add_argument("--model", required=True, help="smollm2-135m, HF dir or .gguf")
    p.add_argument(
        "--corpus", nargs="+", required=True, help="text/JSONL/Alpaca/... files or folders"
    )
    p.add_argument("--add", type=int, required=True, help="number of new tokens")
    p.add_argument("--output", required=True, help="directory for the extended model")
    p.add_argument("--heldout", nargs="+", help="files to report tokens per character on")
    p.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merge")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(command_key="tokenizer extend")

    cfg = sub.add_parser("config", help="config tools").add_subparsers(
        dest="config_command", required=True
    )
    p = cfg.add_parser("keys", help="list every config key with its default and meaning")
    p.set_defaults(command_key="config keys")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "pipeline": cmd_pipeline,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "data preview": cmd_data_preview,
    "score": cmd_score,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "selfinstruct": cmd_selfinstruct,
    "webui": cmd_webui,
    "export merge": cmd_export_merge,
    "export gguf": cmd_export_gguf,
    "export quantize": cmd_export_quantize,
    "config keys": cmd_config_keys,
    "tokenizer extend": cmd_tokenizer_extend,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    try:
        return int(COMMANDS[args.command_key](args) or 0)
    except LlamaforgeError as e:
        if args.debug:
            raise
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
