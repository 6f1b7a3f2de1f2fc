"""Training: the loss falls, the workflow always writes the bundle, runs are byte-reproducible."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL_MODEL, SMALL_PREPARE, SMALL_TRAIN
from ptycho import physics, training, workflows
from ptycho.bundle import load_bundle
from ptycho.grouping import grouped_tensors, make_groups
from ptycho.model import Architecture, build_models, intensity_scale_of
from ptycho.simulate import simulate_train_test


def fit_small(gridsize, epochs, tmp_path):
    train, _ = simulate_train_test(SMALL_PREPARE)
    groups = make_groups(train.xcoords, train.ycoords, gridsize, 7, np.random.default_rng(0))
    amplitudes, offsets = grouped_tensors(train.amplitudes, groups)
    autoencoder, _ = build_models(Architecture(32, gridsize, 0.25), train.probe, intensity_scale_of(train.amplitudes))
    config = dataclasses.replace(SMALL_TRAIN, epochs=epochs)
    return training.fit(autoencoder, amplitudes, offsets, config, tmp_path / "checkpoints")


def test_training_loss_falls_for_gridsize_one(tmp_path):
    history = fit_small(1, 8, tmp_path).history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_amplitude_mae"] < history[0]["val_amplitude_mae"]


def test_training_loss_falls_for_gridsize_two(tmp_path):
    history = fit_small(2, 3, tmp_path).history
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_train_workflow_writes_a_loadable_bundle_and_history(trained_run):
    bundle = load_bundle(trained_run.bundle_path)
    assert isinstance(bundle.autoencoder, nn.Module) and isinstance(bundle.diffraction_to_obj, nn.Module)
    assert bundle.architecture == Architecture(32, 1, 0.25)
    history = (trained_run.folder / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 1 + trained_run.summary.metrics["epochs_run"]
    assert bundle.extras["history.csv"].decode().splitlines() == history
    assert np.isfinite(trained_run.summary.metrics["best_val_loss"])


def test_two_identical_cpu_runs_give_byte_identical_bundles(tmp_path, trained_run):
    from ptycho.data import load_dataset

    again = tmp_path / "wts.h5.zip"
    workflows.train(
        load_dataset(trained_run.train_path), SMALL_MODEL, SMALL_TRAIN, again,
        tmp_path / "history.csv", tmp_path / "metrics.json", tmp_path / "checkpoints",
    )
    assert again.read_bytes() == trained_run.bundle_path.read_bytes()


def test_best_validation_weights_are_kept(tmp_path):
    # With this learning rate the validation loss is lowest at epoch 3 of 4, so the weights of
    # the last epoch and of the best one differ; the model fit returns must be the best one.
    train, _ = simulate_train_test(SMALL_PREPARE)
    groups = make_groups(train.xcoords, train.ycoords, 1, 7, np.random.default_rng(0))
    amplitudes, offsets = grouped_tensors(train.amplitudes, groups)
    autoencoder, _ = build_models(Architecture(32, 1, 0.25), train.probe, intensity_scale_of(train.amplitudes))
    config = dataclasses.replace(SMALL_TRAIN, epochs=4, learning_rate=0.02)
    result = training.fit(autoencoder, amplitudes, offsets, config, tmp_path / "checkpoints")
    val_losses = [row["val_loss"] for row in result.history]
    best = int(np.argmin(val_losses))
    assert best < len(val_losses) - 1, f"setup: the last epoch is the best one {val_losses}; pick other settings"
    _, val = training.split_train_val(amplitudes.shape[0], config.val_fraction, config.seed)
    with torch.no_grad():
        returned = float(physics.poisson_nll(autoencoder(amplitudes[val], offsets[val])[1], amplitudes[val]))
    assert returned == pytest.approx(val_losses[best], rel=1e-5)
    assert returned != pytest.approx(val_losses[-1], rel=1e-5)
    assert result.best_val_loss == pytest.approx(val_losses[best])


def test_split_train_val_is_seeded_and_disjoint():
    train, val = training.split_train_val(100, 0.1, seed=4)
    again, _ = training.split_train_val(100, 0.1, seed=4)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    np.testing.assert_array_equal(train, again)
