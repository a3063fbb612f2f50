"""Stage rm: the score is read at the answer's end-of-turn token (not before it, as pad = EOS
would make transformers do), the head trains and is saved, the run directory reloads in
plain transformers + peft to the same scores, accuracy rises on held-out pairs, a run
resumes exactly, and an rm run started from an SFT run starts from the SFT weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import logged_losses, read_log, tiny_config

from llamaforge.cli import main
from llamaforge.config.sections import ModelConfig
from llamaforge.data import Preference, get_template, read_records
from llamaforge.data.formats import Message
from llamaforge.data.preference import encode_pairs, score_pad_token
from llamaforge.errors import DataError
from llamaforge.evaluation.reward_scores import score_pairs
from llamaforge.methods import run_training
from llamaforge.models import load_model

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def separable_pairs(path: Path, n: int = 48) -> Path:
    """Pairs a tiny model can learn: the chosen answer ends in a word the rejected lacks."""
    words = ["red", "blue", "green", "cat", "dog", "sun", "tree", "milk"]
    rows = [
        {
            "prompt": f"Say something about {words[i % 8]} number {i}.",
            "chosen": f"{words[(i * 3) % 8]} {i} yes",
            "rejected": f"{words[(i * 5) % 8]} {i} no",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_score_is_read_at_the_end_of_turn_token_not_before_it(smollm2_tokenizer, make_tiny_llama):
    from transformers import LlamaForSequenceClassification

    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    pair = Preference((Message("user", "2+2?"),), "Answer: 4", "four")
    (encoded,) = encode_pairs([pair], tok, get_template("chatml"))
    chosen, rejected = encoded.sequence("chosen"), encoded.sequence("rejected")
    assert chosen[-1] == rejected[-1] == tok.eos_token_id  # answers end at <|im_end|>
    assert tok.decode(encoded.chosen) == "Answer: 4<|im_end|>"
    pad = score_pad_token(tok, [chosen, rejected])
    assert pad == "<|endoftext|>" and tok.convert_tokens_to_ids(pad) not in chosen + rejected

    causal = make_tiny_llama()
    model = LlamaForSequenceClassification(causal.config).eval()
    model.model.load_state_dict(causal.model.state_dict())
    batch = torch.tensor(
        [
            s + [tok.convert_tokens_to_ids(pad)] * (max(map(len, (chosen, rejected))) - len(s))
            for s in (chosen, rejected)
        ]
    )
    with torch.no_grad():
        hidden = model.model(input_ids=batch).last_hidden_state
        per_token = model.score(hidden)[..., 0]  # [B, T]
        last = [len(chosen) - 1, len(rejected) - 1]
        wanted = per_token[torch.arange(2), torch.tensor(last)]
        model.config.pad_token_id = tok.convert_tokens_to_ids(pad)
        assert torch.allclose(model(input_ids=batch).logits[:, 0], wanted)
        # The bug: with pad = <|im_end|> the score is read one token before the end of turn.
        model.config.pad_token_id = tok.eos_token_id
        eos_padded = batch.masked_fill(batch == tok.convert_tokens_to_ids(pad), tok.eos_token_id)
        wrong = model(input_ids=eos_padded).logits[:, 0]
        before = per_token[torch.arange(2), torch.tensor(last) - 1]
        assert torch.allclose(wrong, before) and not torch.allclose(wrong, wanted)


def rm_config(model_dir, data, run_dir, **values):
    defaults = dict(
        stage="rm",
        val_set_size=16,
        max_steps=12,
        eval_steps=12,
        save_steps=6,
        learning_rate=5e-3,
        micro_batch_size=8,
        batch_size=8,
        cutoff_len=64,
    )
    defaults.update(values)
    return tiny_config(model_dir, data, run_dir, **defaults)


def test_rm_trains_saves_the_head_and_reloads_in_plain_peft(
    tiny_model_dir, tmp_path, capture_attach, capsys
):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = separable_pairs(tmp_path / "pairs.json")
    run_dir = run_training(rm_config(tiny_model_dir, data, tmp_path / "run"))

    evals = [r for r in read_log(run_dir) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 12]  # 0: the untrained head
    assert evals[-1]["eval_accuracy"] >= 0.9, evals
    assert evals[-1]["eval_loss"] < 0.5 * evals[0]["eval_loss"]  # from log 2 ≈ 0.69
    assert evals[-1]["eval_margin"] > 1.0 > 0.1 > abs(evals[0]["eval_margin"])
    assert "accuracy" in read_log(run_dir)[1] and "margin" in read_log(run_dir)[1]
    changed = capture_attach.changed()
    assert changed == capture_attach.trainable  # every trainable tensor moved, nothing else
    assert any("score" in n for n in changed) and any("lora_A" in n for n in changed)
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in saved

    records = read_records(data)[-16:]
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert tokenizer.pad_token == "<|endoftext|>"  # the run's pad, saved with it
    ours, _ = load_model(ModelConfig(model=str(run_dir)), head="score")
    cfg = rm_config(tiny_model_dir, data, tmp_path / "unused")
    expected = score_pairs(ours, tokenizer, records, cfg)
    plain = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    plain = PeftModel.from_pretrained(plain, run_dir).eval()
    got = score_pairs(plain, tokenizer, records, cfg)
    assert got.chosen == pytest.approx(expected.chosen, abs=1e-5)
    assert got.rejected == pytest.approx(expected.rejected, abs=1e-5)
    trained = capture_attach.model.eval()
    assert score_pairs(trained, tokenizer, records, cfg).chosen == pytest.approx(
        expected.chosen, abs=1e-5
    )

    # The command: one JSONL line per pair, and the summary on stdout.
    held_out = tmp_path / "held_out.json"
    held_out.write_text(json.dumps(json.loads(data.read_text())[-16:]))
    out = tmp_path / "scores.jsonl"
    args = ["score", "--model", str(run_dir), "--data", str(held_out), "--output", str(out)]
    assert main([*args, "--cutoff-len", "64"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["chosen_score"] for line in lines] == pytest.approx(expected.chosen, abs=1e-5)
    assert f"16 pairs: accuracy {expected.accuracy:.4f}" in capsys.readouterr().out


def test_rm_refuses_records_that_are_not_pairs(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps([{"instruction": "hi", "output": "hello"}] * 4))
    with pytest.raises(DataError, match=r"record 1 .*stage rm trains on preference pairs"):
        run_training(rm_config(tiny_model_dir, data, tmp_path / "run", val_set_size=0))


def test_rm_resumes_exactly(tiny_model_dir, tmp_path):
    data = separable_pairs(tmp_path / "pairs.json")
    full = run_training(rm_config(tiny_model_dir, data, tmp_path / "full", val_set_size=0))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for child in part.iterdir():  # keep the step-6 checkpoint only, as if killed after it
        if child.name.startswith("checkpoint-") and child.name != "checkpoint-6":
            shutil.rmtree(child)
    (part / "adapter_model.safetensors").unlink()
    resumed = run_training(
        rm_config(tiny_model_dir, data, part, val_set_size=0, resume_from_checkpoint="auto")
    )
    assert len(logged_losses(resumed)) == 12
    assert logged_losses(resumed) == pytest.approx(logged_losses(full), abs=1e-6)


def test_rm_on_an_sft_run_starts_from_the_sft_weights_and_merges(
    tiny_model_dir, overfit_data, tmp_path, capture_attach
):
    from transformers import AutoModelForSequenceClassification

    from llamaforge.export.merge import merge_adapter

    sft = run_training(tiny_config(tiny_model_dir, overfit_data, tmp_path / "sft", max_steps=3))
    folded, _ = load_model(ModelConfig(model=str(sft)))
    folded = folded.merge_and_unload()
    name = "model.layers.0.self_attn.q_proj.weight"
    sft_weight = folded.get_parameter(name)
    base_weight = load_model(ModelConfig(model=str(tiny_model_dir)))[0].get_parameter(name)
    assert not torch.equal(sft_weight, base_weight)

    data = separable_pairs(tmp_path / "pairs.json")
    rm = run_training(rm_config(str(sft), data, tmp_path / "rm", val_set_size=0, max_steps=4))
    start = capture_attach.before[
        "base_model.model." + name.replace(".weight", ".base_layer.weight")
    ]
    assert torch.equal(start, sft_weight)  # the SFT adapter folded in, a new one on top
    assert not any(
        "default" in n and "lora" in n and n not in capture_attach.trainable
        for n in capture_attach.before
    )  # one adapter only

    # The run directory records the SFT run as its base: export merge rebuilds
    # base + SFT adapter + reward adapter + head, and plain transformers reads it.
    report = merge_adapter(None, rm, tmp_path / "merged")
    assert report.max_abs_logit_diff is not None
    records = read_records(data)[:8]
    cfg = rm_config(str(rm), data, tmp_path / "unused")
    ours, tokenizer = load_model(ModelConfig(model=str(rm)), head="score")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.pad_token_id == tokenizer.pad_token_id
    expected = score_pairs(ours, tokenizer, records, cfg)
    got = score_pairs(merged, tokenizer, records, cfg)
    assert got.chosen == pytest.approx(expected.chosen, abs=1e-4)


@pytest.mark.slow
def test_rm_on_the_bundled_model_learns_the_house_format(tmp_path, smollm2_cached):
    """A short real run on a subset of the quickstart pairs: held-out accuracy rises."""
    cfg = rm_config(
        "smollm2-135m",
        QUICKSTART / "train_pairs.json",
        tmp_path / "run",
        max_samples=48,
        val_set_size=0,
        max_steps=6,
        eval_steps=None,
        save_steps=6,
        learning_rate=1e-3,
        cutoff_len=96,
        precision="auto",
    )
    run_dir = run_training(cfg)
    held_out = read_records(QUICKSTART / "held_out_pairs.json")[:32]
    model, tokenizer = load_model(ModelConfig(model=str(run_dir)), head="score")
    scores = score_pairs(model, tokenizer, held_out, cfg)
    torch.manual_seed(0)
    base, base_tokenizer = load_model(ModelConfig(model="smollm2-135m"), head="score")
    base_tokenizer.pad_token = tokenizer.pad_token  # read at the same token as the run
    base.config.pad_token_id = tokenizer.pad_token_id
    before = score_pairs(base, base_tokenizer, held_out, cfg)
    assert scores.accuracy >= 0.8 and scores.accuracy > before.accuracy + 0.2, (before, scores)
