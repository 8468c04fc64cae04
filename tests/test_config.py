"""The config is typed and strict: mistakes are caught before any work starts, with a fix."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.orchestration.preflight import preflight, registry_problems

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_round_trip():
    config = load_config(None)
    assert PipelineConfig.model_validate(config.to_dict()) == config


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")))
def test_every_shipped_config_is_valid_and_passes_the_preflight(name):
    path = CONFIGS / name
    if "variants" in (yaml.safe_load(path.read_text()) or {}):  # a sweep file (pipeline/orchestration/sweep.py)
        from pipeline.orchestration.sweep import load_sweep

        variants = {run.variant: run.config for run in load_sweep(path, seeds=1).runs}
        for variant, config in variants.items():
            preflight(config, f"{name} variant '{variant}'")
        return
    config = load_config(path)
    if config.task == "classification" and config.data.root is not None:
        assert not registry_problems(config)  # its class list is read from the dataset, which is not here
    else:
        preflight(config, name)


def test_misspelt_key_names_the_key_and_the_closest_valid_one(tmp_path):
    path = write(tmp_path, "teacher:\n  train:\n    epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'teacher\.train\.epoch'; did you mean 'teacher\.train\.epochs'"):
        load_config(path)


def test_misspelt_section_is_caught(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'distil'; did you mean 'distill'"):
        load_config(write(tmp_path, "distil: {}\n"))


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.train\.lr: .*number.*'fast'"):
        load_config(write(tmp_path, "student:\n  train:\n    lr: fast\n"))


def test_impossible_value_is_rejected():
    with pytest.raises(ConfigError, match=r"teacher\.train\.epochs"):
        load_config(None, ["teacher.train.epochs=0"])


def test_dotted_overrides_apply_with_yaml_types():
    config = load_config(None, ["distill.ce_weight=0.5", "data.augment.hflip=false", "run.name=x1"])
    assert config.distill.ce_weight == 0.5
    assert config.data.augment.hflip is False
    assert config.run.name == "x1"


def test_override_of_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'benchmark\.warmup'"):
        load_config(None, ["benchmark.warmpu=3"])


def test_override_without_equals_sign_explains_the_form():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["distill.ce_weight"])


def test_unknown_distillation_method_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"distill\.methods\[0\]\.name: unknown distillation method 'kdd'; did you mean 'kd'"):
        preflight(load_config(None, ["distill.methods=[{name: kdd}]"]))


def test_unknown_method_option_is_an_error():
    with pytest.raises(ConfigError, match=r"distill\.methods\[0\]\.temprature: unknown option of 'kd'; did you mean 'temperature'"):
        preflight(load_config(None, ["distill.methods=[{name: kd, temprature: 2}]"]))


def test_method_options_are_validated():
    with pytest.raises(ConfigError, match="temperature"):
        preflight(load_config(None, ["distill.methods=[{name: kd, temperature: -1}]"]))


@pytest.mark.parametrize("override, message", [
    ("data.dataset=vocc", r"data\.dataset: unknown dataset 'vocc'; did you mean 'voc'\? valid datasets: "),
    ("student.model.backbone=resnet19", r"student\.model\.backbone: unknown backbone 'resnet19'; did you mean 'resnet18'"),
    ("task=segmentaton", r"task: unknown task 'segmentaton'; did you mean 'segmentation'"),
])
def test_names_the_registries_define_are_checked_before_any_work(override, message):
    config = load_config(None, [override])  # the schema does not know the registries ...
    with pytest.raises(ConfigError, match=message):
        preflight(config)  # ... the preflight does, naming the key and the closest valid name


def test_preflight_lists_every_problem_at_once():
    config = load_config(None, ["data.dataset=vocc", "distill.methods=[{name: kdd}]"])
    with pytest.raises(ConfigError) as error:
        preflight(config, "my.yaml")
    assert str(error.value).startswith("my.yaml: invalid configuration")
    assert "data.dataset" in str(error.value) and "distill.methods[0].name" in str(error.value)


def test_width_mult_only_for_mobilenet():
    with pytest.raises(ConfigError, match="width_mult applies to backbone 'mobilenet_v2' only"):
        load_config(None, ["teacher.model.width_mult=0.5"])


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_section_reads_resolved_values():
    config = load_config(None, ["validate.atol=0.001"])
    assert config.section("validate.atol") == 0.001
    assert config.section("teacher.model")["backbone"] == "resnet50"


def test_a_partial_model_section_keeps_its_roles_default_backbone():
    config = load_config(None, ["teacher.model.decoder_channels=128", "student.model.dropout=0.2"])
    assert config.teacher.model.backbone == "resnet50"
    assert config.student.model.backbone == "mobilenet_v2"
