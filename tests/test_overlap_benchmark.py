"""The overlap benchmark's driver (ptycho.benchmarks.overlap): its variants and --set parsing."""

import pytest

from ptycho.benchmarks.overlap import VARIANTS, parse_settings
from ptycho.config import ModelConfig, PrepareConfig, TrainConfig


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_a_valid_configuration(name):
    spec = VARIANTS[name]
    assert set(spec) <= {"model", "train", "train_data", "adapt_epochs"}
    ModelConfig(**spec.get("model", {})).check()
    TrainConfig(**spec.get("train", {})).check()
    PrepareConfig(**spec.get("train_data", {})).check()


def test_set_parses_yaml_values_per_section_and_refuses_other_keys():
    assert parse_settings(["model.window_share=0.99", "train.epochs=60", "model.grouping=canonical"]) == {
        "model": {"window_share": 0.99, "grouping": "canonical"}, "train": {"epochs": 60}}
    for bad in ("prepare.N=32", "window_share=0.99", "model.window_share="):
        with pytest.raises(SystemExit, match="--set"):
            parse_settings([bad])
