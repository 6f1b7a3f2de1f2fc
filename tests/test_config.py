"""Configuration sections: defaults, type checks, value checks, unknown keys."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from ptycho import config
from ptycho.config import BaselineConfig, CheckConfig, EvaluateConfig, InferConfig, LossKind, ModelConfig, PrepareConfig, TrainConfig
from ptycho.errors import ConfigError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("section", sorted(config.SECTIONS))
def test_dataclass_defaults_are_the_values_of_params_yaml(section):
    # One source for each default: params.yaml lists every field, with the dataclass's default.
    cls = config.SECTIONS[section]
    in_file = config.read_params(PARAMS)[section]
    assert sorted(in_file) == sorted(field.name for field in dataclasses.fields(cls))
    assert config.load_section(PARAMS, section) == cls()


def test_params_yaml_has_exactly_the_known_sections():
    assert sorted(config.read_params(PARAMS)) == sorted(config.SECTIONS)


def test_values_are_typed_and_enums_resolved():
    prepare = config.section_from_mapping(PrepareConfig, "prepare", {"N": 32, "nphotons": 1000, "scan_kind": "spiral"})
    assert prepare.N == 32 and isinstance(prepare.nphotons, float)
    assert prepare.scan_kind is config.ScanKind.SPIRAL


@pytest.mark.parametrize(
    "cls, section, mapping, key, needle",
    [
        (PrepareConfig, "prepare", {"N": 63}, "prepare.N", "even"),
        (PrepareConfig, "prepare", {"N": "64"}, "prepare.N", "integer"),
        (PrepareConfig, "prepare", {"nphotons": -1.0}, "prepare.nphotons", "> 0"),
        (PrepareConfig, "prepare", {"noise": "yes"}, "prepare.noise", "true or false"),
        (PrepareConfig, "prepare", {"object_kind": "cat"}, "prepare.object_kind", "'grf', 'lines'"),
        (PrepareConfig, "prepare", {"source": "npz"}, "prepare.train_file", "required"),
        (PrepareConfig, "prepare", {"stepsize": 3}, "prepare.stepsize", "allowed keys"),
        (PrepareConfig, "prepare", {"N": 64, "test_object_px": 60}, "prepare.test_object_px", "exceed"),
        (ModelConfig, "model", {"gridsize": 3}, "model.gridsize", "1, 2"),
        (ModelConfig, "model", {"gridsize": 2, "n_neighbours": 3}, "model.n_neighbours", ">= gridsize**2"),
        (TrainConfig, "train", {"epochs": 0}, "train.epochs", ">= 1"),
        (TrainConfig, "train", {"batch_size": True}, "train.batch_size", "integer"),
        (TrainConfig, "train", {"loss": "mse"}, "train.loss", "'poisson', 'mae'"),
        (TrainConfig, "train", {"schedule": "linear"}, "train.schedule", "'plateau', 'cosine', 'onecycle'"),
        (TrainConfig, "train", {"max_wall_s": -1}, "train.max_wall_s", "0 = no limit"),
        (TrainConfig, "train", {"warmup_fraction": 1.0}, "train.warmup_fraction", "(0, 1)"),
        (TrainConfig, "train", {"accelerator": "gpux"}, "train.accelerator", "'cpu'"),
        (TrainConfig, "train", {"precision": "33-true"}, "train.precision", "'bf16-mixed'"),
        (TrainConfig, "train", {"strategy": "dpp"}, "train.strategy", "'ddp'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(cls, section, mapping, key, needle):
    with pytest.raises(ConfigError) as error:
        config.section_from_mapping(cls, section, mapping)
    assert key in str(error.value)
    assert needle in str(error.value)


NON_FINITE_AND_OTHER_BAD_VALUES = [
    (PrepareConfig, {"N": 63}, "prepare.N", "even"),
    (PrepareConfig, {"N": 8}, "prepare.N", ">= 16"),
    (PrepareConfig, {"N": 64.0}, "prepare.N", "integer"),
    (PrepareConfig, {"nphotons": -1}, "prepare.nphotons", "> 0"),
    (PrepareConfig, {"nphotons": float("inf")}, "prepare.nphotons", "finite"),
    (PrepareConfig, {"nphotons": "inf"}, "prepare.nphotons", "finite"),
    (PrepareConfig, {"step_px": float("inf")}, "prepare.step_px", "finite"),
    (PrepareConfig, {"feature_px": float("nan")}, "prepare.feature_px", "finite"),
    (PrepareConfig, {"nphotons": 10**400}, "prepare.nphotons", "too large"),
    (PrepareConfig, {"scan_kind": "fermat"}, "prepare.scan_kind", "'grid', 'random', 'spiral'"),
    (PrepareConfig, {"scan_kind": 1}, "prepare.scan_kind", "allowed values"),
    (TrainConfig, {"loss": "mse"}, "train.loss", "'poisson', 'mae'"),
    (TrainConfig, {"learning_rate": float("inf")}, "train.learning_rate", "finite"),
    (TrainConfig, {"epochs": np.float64(3)}, "train.epochs", "integer"),
    (ModelConfig, {"n_filters_scale": float("nan")}, "model.n_filters_scale", "finite"),
    (InferConfig, {"batch_size": 0}, "infer.batch_size", ">= 1"),
    (EvaluateConfig, {"coverage_fraction": float("inf")}, "evaluate.coverage_fraction", "finite"),
    (CheckConfig, {"max_r_factor": float("inf")}, "check.max_r_factor", "finite"),
    (BaselineConfig, {"rpie_alpha": float("nan")}, "baseline.rpie_alpha", "finite"),
    (BaselineConfig, {"algorithm": "dm"}, "baseline.algorithm", "'epie', 'rpie'"),
]


@pytest.mark.parametrize("cls, mapping, key, needle", NON_FINITE_AND_OTHER_BAD_VALUES)
def test_direct_construction_is_checked_like_params_yaml(cls, mapping, key, needle):
    messages = []
    for build in (lambda: cls(**mapping), lambda: config.section_from_mapping(cls, cls.SECTION, mapping),
                  lambda: dataclasses.replace(cls(), **mapping)):
        with pytest.raises(ConfigError) as error:
            build()
        messages.append(str(error.value))
    assert len(set(messages)) == 1, messages  # one validation path, one message
    assert key in messages[0] and needle in messages[0]


@pytest.mark.parametrize("key", ["nphotons", "step_px", "feature_px"])
def test_yaml_infinity_is_refused(tmp_path, key):
    path = tmp_path / "params.yaml"
    path.write_text(f"prepare:\n  {key}: .inf\n")
    with pytest.raises(ConfigError, match=f"prepare.{key}: must be a finite number"):
        config.load_section(path, "prepare")


def test_direct_construction_converts_like_params_yaml():
    train = TrainConfig(loss="mae", learning_rate=1)
    assert train.loss is LossKind.MAE and isinstance(train.learning_rate, float)
    assert TrainConfig(loss="poisson").loss is LossKind.POISSON  # was a str, so `is POISSON` was False
    prepare = PrepareConfig(nphotons="1e5", seed=np.int64(3), scan_kind="spiral")
    assert prepare.nphotons == 1e5 and type(prepare.seed) is int and prepare.scan_kind is config.ScanKind.SPIRAL
    assert dataclasses.replace(prepare, scan_kind="random").scan_kind is config.ScanKind.RANDOM


def test_unknown_key_lists_the_allowed_keys():
    with pytest.raises(ConfigError, match="allowed keys are .*'step_px'"):
        config.section_from_mapping(PrepareConfig, "prepare", {"step": 3})


def test_configuration_objects_are_frozen():
    prepare = PrepareConfig()
    with pytest.raises(AttributeError):
        prepare.N = 128


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load_section(tmp_path / "nope.yaml", "prepare")
    broken = tmp_path / "broken.yaml"
    broken.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_section(broken, "prepare")
    listed = tmp_path / "listed.yaml"
    listed.write_text(yaml.safe_dump({"prepare": [1, 2]}))
    with pytest.raises(ConfigError, match="prepare: expected a mapping"):
        config.load_section(listed, "prepare")
    with pytest.raises(ConfigError, match="unknown section"):
        config.load_section(listed, "preparation")


def test_lightning_spellings_of_devices_settings_are_accepted():
    for mapping in ({"precision": "32"}, {"precision": "bf16-mixed"}, {"accelerator": "gpu"}, {"accelerator": "auto"}, {"strategy": "ddp"}):
        config.section_from_mapping(TrainConfig, "train", mapping)


def test_the_old_params_key_architecture_is_read_as_backbone():
    # model.architecture was the key before it became model.backbone; old params files still work
    old = config.section_from_mapping(ModelConfig, "model", {"architecture": "projection_unet"})
    assert old == config.section_from_mapping(ModelConfig, "model", {"backbone": "projection_unet"})
    assert old.backbone == "projection_unet"
    with pytest.raises(ConfigError, match=r"model\.architecture: the old name of model\.backbone"):
        config.section_from_mapping(ModelConfig, "model", {"architecture": "cnn", "backbone": "cnn"})
    with pytest.raises(ConfigError, match=r"model\.backbone: allowed values"):
        config.section_from_mapping(ModelConfig, "model", {"architecture": "resnet"})


def test_canonical_3x3_needs_no_n_neighbours_and_offset_planes_need_the_cnn():
    ModelConfig(gridsize=3, grouping="canonical").check()  # n_neighbours 7 < 9: unused by the canonical grouping
    with pytest.raises(ConfigError, match="model.offset_input"):
        ModelConfig(gridsize=2, grouping="canonical", offset_input="planes", backbone="projection_unet").check()
    with pytest.raises(ConfigError, match="model.offset_input"):
        ModelConfig(offset_input="rings").check()
