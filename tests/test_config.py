"""Config loading: YAML + overrides, aliases, types, did-you-mean, all errors at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llamaforge.cli import main
from llamaforge.config import config_to_dict, load_run_config
from llamaforge.config.sections import PretrainConfig
from llamaforge.errors import ConfigError
from llamaforge.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_alone_build_a_config() -> None:
    cfg = load_run_config(
        None, ["learning_rate=1e-4", "lora_target_modules=[q_proj,v_proj]", "dataset=a.json"]
    )
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.finetuning.lora_target_modules == ("q_proj", "v_proj")
    assert cfg.data.dataset == ("a.json",)
    assert cfg.source is None


def test_yaml_flat_and_sectioned_forms_agree(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "model: smollm2-135m\nlearning_rate: 3.0e-4\ncutoff_len: 128\nfinetuning: qlora\n"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "model: {model: smollm2-135m}\ntraining: {learning_rate: 3.0e-4}\n"
        "data: {cutoff_len: 128}\nfinetuning: {finetuning: qlora}\n"
    )
    a, b = load_run_config(flat), load_run_config(nested)
    assert config_to_dict(a) == config_to_dict(b)
    assert a.finetuning.finetuning == "qlora" and a.data.cutoff_len == 128


def test_override_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    assert load_run_config(path, ["learning_rate=0.2"]).training.learning_rate == 0.2


def test_alpaca_lora_flat_keys_are_aliases(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_lora.yaml"
    path.write_text(
        "base_model: smollm2-135m\ndata_path: data.json\noutput_dir: out\nbatch_size: 128\n"
        "micro_batch_size: 4\nnum_epochs: 3\nlearning_rate: 3e-4\ncutoff_len: 256\n"
        "val_set_size: 2000\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.05\n"
        "lora_target_modules: [q_proj, v_proj]\ntrain_on_inputs: true\nadd_eos_token: false\n"
        "group_by_length: false\nresume_from_checkpoint: null\nprompt_template_name: alpaca\n"
        "wandb_project: ''\n"
    )
    cfg = load_run_config(path)
    assert cfg.model.model == "smollm2-135m"
    assert cfg.data.dataset == ("data.json",)
    assert cfg.data.template == "alpaca"
    assert cfg.training.learning_rate == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.gradient_accumulation_steps == 32
    assert cfg.data.val_set_size == 2000
    assert cfg.data.train_on_inputs and not cfg.data.add_eos_token


def test_every_error_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lerning_rate: 1e-4\ncutoff_len: many\ntop_p: 2\nfinetuning: lorra\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    lines = str(info.value).splitlines()
    assert f"{path}:1: unknown key 'lerning_rate'; did you mean 'learning_rate'?" in lines
    assert any(
        line.startswith(f"{path}:2: key 'cutoff_len': expected an integer") for line in lines
    )
    assert "key 'top_p' must be in (0, 1], got 2.0" in lines
    assert any("'lorra' is not one of: lora, qlora" in line for line in lines)
    assert len(lines) == 4


def test_wrong_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  cutoff_len: 12\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml:2: key 'training.cutoff_len' belongs in section 'data'"
    ):
        load_run_config(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_run_config(path)


def test_batch_size_must_be_a_multiple_of_micro_batch() -> None:
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size 4"):
        load_run_config(None, ["batch_size=10"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("temperature=-1", "temperature"),
        ("num_beams=0", "num_beams"),
        ("max_new_tokens=0", "max_new_tokens"),
        ("repetition_penalty=0", "repetition_penalty"),
    ],
)
def test_nonsensical_generation_parameters(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


def test_cli_reports_config_errors_in_one_line_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["train", "lerning_rate=1e-4", "dataset=x.json"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == "error: override 'lerning_rate=1e-4': unknown key 'lerning_rate'; did you mean 'learning_rate'?\n"
    )


def test_cli_generation_flag_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "hi", "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_every_shipped_yaml_validates() -> None:
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs, "no shipped configs found"
    for path in configs:
        assert path.read_text().startswith("# llamaforge "), (
            f"{path} must start with the command that runs it"
        )
        if "\nstages:" in path.read_text():
            run_pipeline(path, dry_run=True)  # checks every stage's settings, runs nothing
        else:
            load_run_config(path)


def test_seed_is_the_training_seed_and_sampling_has_its_own_key(tmp_path: Path) -> None:
    for cfg in (
        load_run_config(None, ["seed=7"]),
        load_run_config(None, ["training.seed=7"]),
        _yaml_config(tmp_path, "seed: 7\n"),
        _yaml_config(tmp_path, "training: {seed: 7}\n"),
    ):
        assert cfg.training.seed == 7 and cfg.generation.sampling_seed is None
    cfg = load_run_config(None, ["sampling_seed=3"])
    assert cfg.generation.sampling_seed == 3 and cfg.training.seed == 42


def test_a_key_name_in_two_sections_is_refused_when_the_key_map_is_built() -> None:
    import dataclasses

    from llamaforge.config.loader import field_sections
    from llamaforge.config.sections import SECTIONS

    @dataclasses.dataclass(frozen=True)
    class Clash:
        seed: int = 0

    with pytest.raises(TypeError, match="'seed' is defined in sections 'training' and 'clash'"):
        field_sections({**SECTIONS, "clash": Clash})


def _yaml_config(tmp_path: Path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_run_config(path)


def test_a_stage_option_given_to_another_stage_names_its_stage(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage: pt\nneftune_noise_alpha: 5\npt:\n  train_embeddings: true\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == (
        f"{path}:2: key 'neftune_noise_alpha' belongs to stage 'sft', not 'pt'; "
        "set stage: sft or remove it"
    )
    cfg = load_run_config(None, ["stage=pt", "pt.train_embeddings=true"])
    assert cfg.options.train_embeddings is True
    assert config_to_dict(cfg)["pt"] == {
        **dataclasses.asdict(PretrainConfig()),
        "train_embeddings": True,
    }
    assert "sft" not in config_to_dict(cfg)
    with pytest.raises(ConfigError, match=r"'stage': 'dpo2' is not one of: sft, pt\b"):
        load_run_config(None, ["stage=dpo2"])


def test_every_stage_entry_point_exists_and_config_keys_lists_keys_by_stage(capsys) -> None:
    import importlib

    from llamaforge.config.stages import STAGES

    for name, stage in STAGES.items():
        module, _, function = stage.entry.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "[sft] stage sft only" in out and "[pt] stage pt only" in out
    assert out.index("[pt] stage pt only") < out.index("  train_embeddings = False")


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_a_saved_run_config_loads_back_unchanged(tmp_path: Path, stage: str) -> None:
    import yaml

    cfg = load_run_config(None, [f"stage={stage}", "seed=3", "dataset=a.json"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert config_to_dict(load_run_config(path)) == config_to_dict(cfg)


def test_rope_parameters_is_transformers_name_for_rope_scaling():
    cfg = load_run_config(None, (), rope_parameters={"rope_type": "linear", "factor": 2.0})
    assert cfg.model.rope_scaling == {"rope_type": "linear", "factor": 2.0}
