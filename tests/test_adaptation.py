"""infer.adapt_epochs: the network fine-tuned on the test scan's own patterns explains them better, the bundle file untouched."""

import dataclasses
import json

import pytest

from ptycho import workflows
from ptycho.config import InferConfig
from ptycho.data import load_dataset
from ptycho.errors import ConfigError
from ptycho.scoring import data_consistency
from ptycho.reconstruction import load_reconstruction


def test_adaptation_lowers_the_data_error_on_the_test_scan_and_leaves_the_bundle_as_it_was(trained_run, small_infer_config, tmp_path):
    test = load_dataset(trained_run.test_path)
    before = trained_run.bundle_path.read_bytes()
    r_factors = {}
    for epochs in (0, 8):
        # the network's own patches (no single-pattern fit after it, which would hide what adaptation did)
        config = dataclasses.replace(small_infer_config, adapt_epochs=epochs, adapt_learning_rate=1e-3, consistency_iterations=0)
        folder = tmp_path / str(epochs)
        workflows.infer(test, trained_run.bundle_path, config, folder / "r.npz", folder / "r.png", folder / "s.json")
        r_factors[epochs] = data_consistency(load_reconstruction(folder / "r.npz"), test)["r_factor"]
        stats = json.loads((folder / "s.json").read_text())
        assert ("adapt_s" in stats) == (epochs > 0)
    assert stats["adapt_epochs"] == 8 and stats["adapt_best_loss"] <= stats["adapt_first_loss"]
    assert r_factors[8] < 0.95 * r_factors[0]  # it fits the scan it was asked to reconstruct better
    assert trained_run.bundle_path.read_bytes() == before


@pytest.mark.parametrize("key, value, message", [("adapt_epochs", -1, "must be >= 0"), ("adapt_learning_rate", 0.0, "must be a finite number > 0")])
def test_bad_adaptation_settings_are_named(key, value, message):
    with pytest.raises(ConfigError, match=f"infer.{key}: {message}"):
        InferConfig(**{key: value})


def test_adaptation_continues_with_the_settings_the_bundle_was_trained_with(trained_run):
    from conftest import SMALL_TRAIN
    from ptycho.adaptation import trained_settings
    from ptycho.bundle import load_bundle

    settings = trained_settings(load_bundle(trained_run.bundle_path))
    assert (settings.loss, settings.batch_size, settings.learning_rate, settings.schedule) == (
        SMALL_TRAIN.loss, SMALL_TRAIN.batch_size, SMALL_TRAIN.learning_rate, SMALL_TRAIN.schedule)
    assert settings.learning_rate != InferConfig().adapt_learning_rate  # the fine-tuning's own rate replaces it
