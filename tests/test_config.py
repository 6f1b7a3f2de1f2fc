"""Configuration sections: defaults, type checks, value checks, unknown keys."""

import pytest
import yaml

from ptycho import config
from ptycho.config import ModelConfig, PrepareConfig, TrainConfig
from ptycho.errors import ConfigError


def test_repository_params_file_is_valid():
    for section in config.SECTIONS:
        assert config.load_section("params.yaml", section) is not None


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
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(cls, section, mapping, key, needle):
    with pytest.raises(ConfigError) as error:
        config.section_from_mapping(cls, section, mapping)
    assert key in str(error.value)
    assert needle in str(error.value)


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
