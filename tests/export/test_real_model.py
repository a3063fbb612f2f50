"""Acceptance on the real bundled SmolLM2-135M after a short LoRA run: verified merge, GGUF
f16/q8_0 through transformers' GGUF loader and (when installed) llama.cpp.

Figures are printed (run with -s to see them). One module-scoped run, merge and export each.

The merge check's bound scales with depth and logit size (``RTOL_PER_STAGE`` in
export/merge.py): the absolute 1e-4 it replaces refused a real 6-step run on this model
(`llamaforge train finetuning=lora lora_target_modules=all-linear learning_rate=1e-3
max_steps=6`, 16 Alpaca records: max |Δlogit| = 1.11e-4). The run below is of that kind
(all-linear, 4 steps at lr 2e-3); a merge that is wrong in one tensor by 10 % of its delta
must still be refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import llamaforge.export.merge as merge_module
from llamaforge.errors import ExportError
from llamaforge.export.gguf import export_gguf
from llamaforge.export.merge import FP32_EPS, RTOL_PER_STAGE, merge_adapter

pytestmark = pytest.mark.slow

TRAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary color.", "Red is a primary color."),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("Translate 'cat' to French.", "'Cat' in French is 'chat'."),
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
]
TEXTS = [
    "The Industrial Revolution began in Britain in the late eighteenth century. Steam engines, "
    "powered by coal, drove factories, mills and locomotives, and cities grew quickly as people "
    "moved from farms to find work. Working conditions were often harsh, and children worked "
    "long hours.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint([fibonacci(i) for i in range(10)])",
    "春天来了，花儿开了，小鸟在树上唱歌。我们一起去公园散步吧。",
]


def _chat(tokenizer, user: str, assistant: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=assistant is None
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smollm2_cache):
    """A run directory after 4 LoRA steps (all-linear, r=8) on four chat examples."""
    from peft import LoraConfig, get_peft_model

    from llamaforge.export.sources import load_base

    model, tokenizer = load_base("smollm2-135m")
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    peft_model.train()
    losses = []
    for step in range(4):
        ids = torch.tensor([_chat(tokenizer, *TRAIN[step % len(TRAIN)])])
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(float(loss), 3))
    print(f"\nLoRA steps, loss: {losses}")
    path = tmp_path_factory.mktemp("real") / "run"
    peft_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "config.yaml").write_text("model:\n  model: smollm2-135m\ndata:\n  template: chat\n")
    return path


@pytest.fixture(scope="module")
def merged(run_dir):
    out = run_dir.parent / "merged"
    return merge_adapter(None, run_dir, out), out


@pytest.fixture(scope="module")
def source(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = merged
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def gguf_files(merged):
    _, out = merged
    cache = {}

    def get(type_name: str):
        if type_name not in cache:
            path = out.parent / type_name / f"smollm2-sft-{type_name}.gguf"
            # verified: a transformers reload compared with the merged model
            report = export_gguf(out, path, type=type_name)
            cache[type_name] = (report, path)
        return cache[type_name]

    return get


@pytest.fixture(scope="module")
def source_greedy(source):
    model, tokenizer = source
    return [_greedy(model, _chat(tokenizer, p)) for p in CHAT_PROMPTS]


def _greedy(model, ids, n=12):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=2)
    return out[0, len(ids) :].tolist()


def _margin(model, ids, continuation, position) -> float:
    """Source model's top-1 minus top-2 logit where two continuations part."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + continuation[:position]])).logits[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def _compare_greedy(source_model, tokenizer, source_continuations, other_continuations):
    same, flips = 0, []
    for prompt, expected, other in zip(
        CHAT_PROMPTS, source_continuations, other_continuations, strict=True
    ):
        ids = _chat(tokenizer, prompt)
        if other == expected:
            same += 1
            continue
        at = next(
            (i for i, (a, b) in enumerate(zip(expected, other, strict=False)) if a != b), len(other)
        )
        flips.append(
            f"{prompt!r}: token {at}, source margin {_margin(source_model, ids, expected, at):.3f}"
            f" ({tokenizer.decode(expected)!r} vs {tokenizer.decode(other)!r})"
        )
    return same, flips


def test_real_merge_matches_base_plus_adapter(merged):
    report, out = merged
    assert report.max_abs_logit_diff is not None and report.relative_logit_diff is not None
    assert report.logit_tolerance is not None
    print(
        f"\nmerge: max |Δlogit| = {report.max_abs_logit_diff:.2e} = "
        f"{report.relative_logit_diff / FP32_EPS:.1f} eps × max |logit| (allowed: "
        f"{RTOL_PER_STAGE * 32:.0f}, i.e. {report.logit_tolerance:.2e}) over "
        f"{report.positions_checked} positions, {report.changed_tensors} tensors changed, "
        f"||ΔW||/||W|| = {report.relative_delta:.2e}"
    )
    # 30 layers + 2: RTOL_PER_STAGE x eps x 32 x max |logit| of base+adapter
    scale = report.max_abs_logit_diff / report.relative_logit_diff
    assert report.logit_tolerance == pytest.approx(RTOL_PER_STAGE * FP32_EPS * 32 * scale)
    assert report.max_abs_logit_diff <= report.logit_tolerance
    assert report.changed_tensors == 30 * 7  # all-linear: 7 projections x 30 layers
    assert report.tied_embeddings is True
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()


def _lora_delta(run_dir, module: str) -> torch.Tensor:
    """The weight delta the saved adapter adds to ``module``: (alpha / r) · B @ A."""
    config = json.loads((run_dir / "adapter_config.json").read_text())
    prefix = f"base_model.model.{module}"
    with safe_open(str(run_dir / "adapter_model.safetensors"), "pt") as f:
        a = f.get_tensor(f"{prefix}.lora_A.weight")
        b = f.get_tensor(f"{prefix}.lora_B.weight")
    return config["lora_alpha"] / config["r"] * (b @ a)


# On a real 6-step run, the one of its 210 merged tensors whose delta mattered least to the
# logits: the hardest single-tensor error to see.
CORRUPTED = "model.layers.28.self_attn.o_proj"


def test_real_merge_wrong_by_a_little_is_refused(run_dir, tmp_path, monkeypatch):
    """One merged tensor keeps only 90 % of its LoRA delta: refused, nothing written."""
    delta = _lora_delta(run_dir, CORRUPTED)
    real_merge = merge_module.merge_in_memory

    def corrupted(*args, **kwargs):
        merged = real_merge(*args, **kwargs)
        with torch.no_grad():
            merged.model.get_parameter(f"{CORRUPTED}.weight").sub_(0.1 * delta)
        return merged

    monkeypatch.setattr(merge_module, "merge_in_memory", corrupted)
    out = tmp_path / "merged"
    with pytest.raises(ExportError, match=r"verification failed.*max \|Δlogit\| = ") as error:
        merge_adapter(None, run_dir, out)
    print(f"\n0.9 x the delta of {CORRUPTED}: {error.value}")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either


@pytest.mark.parametrize(("type_name", "min_top1"), [("f16", 0.99), ("q8_0", 0.95)])
def test_real_gguf_through_transformers(gguf_files, type_name, min_top1):
    """The export's own verification: transformers' GGUF loader reads the file back and its
    logits are compared with the merged model's (a second reload here would cost ~40 s and
    check the same thing; greedy continuations are compared through llama.cpp below)."""
    report, path = gguf_files(type_name)
    print(
        f"\n{type_name}: {report.size_bytes / 2**20:.0f} MiB, max |Δlogit| = "
        f"{report.max_abs_logit_diff:.4f}, top-1 {report.top1_agreement:.2%} over "
        f"{report.positions_checked} positions"
    )
    assert report.positions_checked >= 100 and report.top1_agreement >= min_top1
    assert report.tokenizer_match is True and path.stat().st_size == report.size_bytes
    if type_name == "f16":
        assert report.max_abs_logit_diff <= 0.1


def test_real_gguf_f16_through_llama_cpp(llama_cpp, source, source_greedy, gguf_files):
    model, tokenizer = source
    _, path = gguf_files("f16")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    try:
        for text in [*TEXTS, tokenizer.decode(_chat(tokenizer, CHAT_PROMPTS[0]))]:
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
        continuations = []
        for prompt in CHAT_PROMPTS:
            llm.reset()
            tokens = []
            for token in llm.generate(
                _chat(tokenizer, prompt), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True
            ):
                tokens.append(token)
                if len(tokens) == 12 or token == llm.token_eos():
                    break
            continuations.append(tokens)
    finally:
        llm.close()
    same, flips = _compare_greedy(model, tokenizer, source_greedy, continuations)
    print(f"\nllama.cpp f16: greedy identical {same}/5; flips: {flips}")
    assert same >= 4, flips
