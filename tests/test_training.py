"""Training: the loss falls, the workflow always writes the bundle, runs are byte-reproducible."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL_MODEL, SMALL_PREPARE, SMALL_TRAIN
from ptycho import files, physics, training, workflows
from ptycho.config import Schedule
from ptycho.bundle import load_bundle
from ptycho.grouping import grouped_tensors, make_groups
from ptycho.model import Architecture, build_models, intensity_scale_of
from ptycho.simulate import simulate_train_test


def fit_small(gridsize, epochs, tmp_path):
    train, _ = simulate_train_test(SMALL_PREPARE)
    groups = make_groups(train.xcoords, train.ycoords, gridsize, 7, np.random.default_rng(0))
    amplitudes, offsets = grouped_tensors(train.amplitudes, groups)
    torch.manual_seed(0)  # the initial weights (imports such as lightning's draw from the global generator)
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
    from ptycho.data import load_dataset

    window = physics.probe_window(load_dataset(trained_run.train_path).probe, SMALL_MODEL.window_share)
    assert bundle.architecture == Architecture(32, 1, 0.25, window_px=window, unrolled_sweeps=3)
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
    # With this learning rate and these initial weights the validation loss is lowest at epoch 3
    # of 4, so the weights of the last epoch and of the best one differ; the model fit returns
    # must be the best one.
    train, _ = simulate_train_test(SMALL_PREPARE)
    groups = make_groups(train.xcoords, train.ycoords, 1, 7, np.random.default_rng(0))
    amplitudes, offsets = grouped_tensors(train.amplitudes, groups)
    torch.manual_seed(0)  # the initial weights: without it they depend on what ran before in this process
    autoencoder, _ = build_models(Architecture(32, 1, 0.25), train.probe, intensity_scale_of(train.amplitudes))
    config = dataclasses.replace(SMALL_TRAIN, epochs=4, learning_rate=0.02, schedule=Schedule.PLATEAU)
    result = training.fit(autoencoder, amplitudes, offsets, config, tmp_path / "checkpoints")
    val_losses = [row["val_loss"] for row in result.history]
    best = int(np.argmin(val_losses))
    assert best < len(val_losses) - 1, f"setup: the last epoch is the best one {val_losses}; pick other settings"
    _, val = training.split_train_val(amplitudes.shape[0], config.val_fraction, config.seed)
    with torch.no_grad():
        returned = float(physics.poisson_nll(autoencoder(amplitudes[val], offsets[val])[1], amplitudes[val]))
    assert returned == pytest.approx(val_losses[best], rel=1e-5)
    assert returned != pytest.approx(val_losses[-1], rel=1e-5)
    assert result.best_val_loss == pytest.approx(val_losses[best]) and result.best_epoch == best + 1


def test_split_train_val_is_seeded_and_disjoint():
    train, val = training.split_train_val(100, 0.1, seed=4)
    again, _ = training.split_train_val(100, 0.1, seed=4)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    np.testing.assert_array_equal(train, again)


# ---- resume, checkpoints, failures, global state ----------------------------------------------

import json
import os
import random
import warnings
from types import SimpleNamespace

import lightning as L

from ptycho.config import Schedule, TrainConfig
from ptycho.errors import ConfigError, TrainingError, TrainingWarning

# 96 of the small scan's patterns, 3 epochs: about a second per epoch.
TINY_TRAIN = dataclasses.replace(SMALL_TRAIN, epochs=3)


@pytest.fixture(scope="module")
def tiny_data():
    train, _ = simulate_train_test(SMALL_PREPARE)
    return train.subset(np.arange(96))


class Interrupted(Exception):
    """Stands for a kill: raised from inside training, it ends the run where it is."""


class Interrupt(L.Callback):
    """Raises ``Interrupted`` after batch ``batch`` (from 1) of epoch ``epoch`` (from 1)."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        if trainer.current_epoch + 1 == self.epoch and batch_index + 1 == self.batch:
            raise Interrupted


class FailOnTrainStart(L.Callback):
    def on_train_start(self, trainer, module):
        raise AssertionError("training started")


def run_train(data, folder, config=TINY_TRAIN, **keywords):
    return workflows.train(
        data, SMALL_MODEL, config, folder / "wts.h5.zip", folder / "history.csv", folder / "train_metrics.json",
        folder / "checkpoints", **keywords,
    )


@pytest.mark.parametrize("config", [
    # patience 0: the rate drops after epoch 2 only if the plateau state of epoch 1 came back from the checkpoint
    dataclasses.replace(TINY_TRAIN, schedule=Schedule.PLATEAU, lr_patience=0, learning_rate=0.02),
    dataclasses.replace(TINY_TRAIN, schedule=Schedule.ONECYCLE),  # per-batch LR and momentum
], ids=["plateau", "onecycle"])
def test_a_run_killed_mid_epoch_and_resumed_gives_the_same_bundle_bytes(tiny_data, tmp_path, config):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train(tiny_data, whole, config)
    with pytest.raises(Interrupted):
        run_train(tiny_data, killed, config, callbacks=[Interrupt(epoch=2, batch=3)])
    assert not (killed / "wts.h5.zip").exists()
    saved = training.read_checkpoint_state(killed / "checkpoints" / "last.ckpt")
    assert [row["epoch"] for row in saved["HistoryAndBest"]["rows"]] == [1]  # written after epoch 1, not only at the end
    resumed = run_train(tiny_data, killed, config, resume=True)
    assert (killed / "wts.h5.zip").read_bytes() == (whole / "wts.h5.zip").read_bytes()
    assert (killed / "history.csv").read_text() == (whole / "history.csv").read_text()
    assert resumed.metrics["epochs_run"] == 3 and resumed.stop_reason == "epochs"
    if config.schedule is Schedule.PLATEAU:
        rates = [row["learning_rate"] for row in resumed.history]
        assert rates[-1] < rates[0], f"setup: the plateau schedule should lower the rate in this run {rates}"


def test_resume_without_a_checkpoint_warns_and_trains_from_the_start(tiny_data, tmp_path):
    with pytest.warns(TrainingWarning, match="no checkpoint .*last.ckpt; training from the start"):
        summary = run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, epochs=1), resume=True)
    assert summary.metrics["epochs_run"] == 1 and (tmp_path / "wts.h5.zip").is_file()


def test_resume_of_a_finished_run_rewrites_its_bundle_without_training(tiny_data, tmp_path):
    config = dataclasses.replace(TINY_TRAIN, epochs=2)
    first = run_train(tiny_data, tmp_path, config)
    original = (tmp_path / "wts.h5.zip").read_bytes()
    (tmp_path / "wts.h5.zip").unlink()
    with pytest.warns(TrainingWarning, match=r"nothing to resume.*finished at epoch 2 \(all epochs\).*best weights \(epoch \d\) without training"):
        again = run_train(tiny_data, tmp_path, config, resume=True, callbacks=[FailOnTrainStart()])
    assert (tmp_path / "wts.h5.zip").read_bytes() == original
    assert again.history == first.history and again.metrics["best_val_loss"] == first.metrics["best_val_loss"]


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_data, tmp_path):
    with pytest.raises(Interrupted):
        run_train(tiny_data, tmp_path, callbacks=[Interrupt(epoch=2, batch=1)])
    with pytest.raises(TrainingError, match=r"belongs to another run \(train.learning_rate 0.002 -> 0.001\); train without --resume"):
        run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, learning_rate=1e-3), resume=True)
    with pytest.raises(TrainingError, match="the training data or the model settings differ"):
        run_train(tiny_data.subset(np.arange(90)), tmp_path, resume=True)


def test_a_fresh_run_replaces_an_old_checkpoint(tiny_data, tmp_path):
    with pytest.raises(Interrupted):
        run_train(tiny_data, tmp_path, callbacks=[Interrupt(epoch=2, batch=1)])
    with pytest.raises(Interrupted):  # a new run without --resume, killed before its first checkpoint
        run_train(tiny_data, tmp_path, callbacks=[Interrupt(epoch=1, batch=1)])
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_a_non_finite_loss_stops_training_naming_the_epoch_and_writes_nothing(tiny_data, tmp_path):
    class Poison(L.Callback):  # what a diverging optimiser does to the weights, on cue
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    next(module.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"train: the train loss is nan at epoch 2, batch 1: the optimisation diverged, nothing was written; lower train.learning_rate"):
        run_train(tiny_data, tmp_path, callbacks=[Poison()])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints"]


def test_stale_temp_files_of_a_killed_run_are_removed(tiny_data, tmp_path):
    stale = [tmp_path / ".wts.h5.zip.0a1b2c.tmp", tmp_path / ".history.csv.ff00.tmp", tmp_path / "checkpoints" / ".last.ckpt.1234abcd.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".wts.h5.zip.backup"]
    (tmp_path / "checkpoints").mkdir()
    for path in stale + kept:
        path.write_bytes(b"x")
    run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, epochs=1))
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert not [path for path in tmp_path.rglob("*.tmp") if path not in kept]


def global_state():
    return {
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "environment": {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")},
        "random": (random.random(), float(np.random.random()), float(torch.rand(1))),
    }


def test_training_leaves_no_global_state_changed(tiny_data, tmp_path):
    config = dataclasses.replace(TINY_TRAIN, epochs=1, num_threads=1)
    torch.set_num_threads(3)
    state = {"random": (random.getstate(), np.random.get_state(), torch.get_rng_state())}
    before = global_state()
    random.setstate(state["random"][0]), np.random.set_state(state["random"][1]), torch.set_rng_state(state["random"][2])
    try:
        run_train(tiny_data, tmp_path, config)
        assert global_state() == before
    finally:
        torch.set_num_threads(2)


def test_training_prints_no_lightning_advertisement_and_counts_epochs_from_one(tiny_data, tmp_path, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Lightning's LeafSpec deprecation would fail the run
        summary = run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, epochs=2))
    output = capfd.readouterr()
    text = output.out + output.err
    for noise in ("Tip:", "litlogger", "GPU available", "TPU available", "LeafSpec"):
        assert noise not in text
    assert [row["epoch"] for row in summary.history] == [1, 2]
    assert (tmp_path / "history.csv").read_text().splitlines()[1].startswith("1,")
    bar = training.EpochFromOneRichBar()
    bar._trainer = SimpleNamespace(max_epochs=2)
    assert bar._get_train_description(0).strip() == "Epoch 1/2" and bar._get_train_description(1).strip() == "Epoch 2/2"


@pytest.mark.parametrize("n_patterns", [2, 3])
def test_two_or_three_patterns_train(tiny_data, tmp_path, n_patterns):
    summary = run_train(tiny_data.subset(np.arange(n_patterns)), tmp_path, dataclasses.replace(TINY_TRAIN, epochs=1))
    assert summary.metrics["n_groups"] == n_patterns and load_bundle(tmp_path / "wts.h5.zip")


def test_metrics_json_holds_null_for_a_number_that_is_not_finite():
    text = files.json_bytes({"a": float("nan"), "b": {"c": float("inf"), "d": [1.5, -float("inf")]}, "e": 2}).decode()
    assert json.loads(text) == {"a": None, "b": {"c": None, "d": [1.5, None]}, "e": 2}
    assert "NaN" not in text and "Infinity" not in text


def test_train_metrics_json_is_strict_json(trained_run):
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    report = json.loads((trained_run.folder / "train_metrics.json").read_text(), parse_constant=refuse)
    assert report["epochs_run"] == len(trained_run.summary.history) and 1 <= report["best_epoch"] <= report["epochs_run"]


# ---- schedules and stopping --------------------------------------------------------------------


def learning_rates(config, total_steps):
    module = training.PINNModule(nn.Linear(1, 1), config)
    module._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    optimiser_config = module.configure_optimizers()
    scheduler = optimiser_config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total_steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return np.array(rates)


def test_cosine_decays_from_the_learning_rate_to_zero():
    rates = learning_rates(TrainConfig(schedule=Schedule.COSINE, learning_rate=1e-3), 100)
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < 1e-6 and np.all(np.diff(rates) < 0)
    assert rates[50] == pytest.approx(0.5e-3, rel=1e-6)


def test_onecycle_rises_over_the_warm_phase_then_decays():
    rates = learning_rates(TrainConfig(schedule=Schedule.ONECYCLE, learning_rate=1e-3, warmup_fraction=0.3), 100)
    peak = int(np.argmax(rates))
    assert peak in (29, 30) and rates[peak] == pytest.approx(1e-3, rel=1e-3)
    assert rates[0] == pytest.approx(1e-3 / 25) and rates[-1] < 1e-6
    assert np.all(np.diff(rates[: peak + 1]) > 0) and np.all(np.diff(rates[peak:]) < 0)


def run_stopping(stopping, val_losses, max_epochs=100, seconds_per_epoch=0.0, clock=None):
    """Feeds ``Stopping`` one validation loss per epoch; returns the epoch (from 1) it stopped after, or None."""
    trainer = SimpleNamespace(max_epochs=max_epochs, should_stop=False, current_epoch=0, callback_metrics={})
    stopping.on_train_start(trainer, None)
    for epoch, loss in enumerate(val_losses):
        trainer.current_epoch = epoch
        stopping.on_train_epoch_start(trainer, None)
        if clock is not None:
            clock[0] += seconds_per_epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(loss)}
        stopping.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            return epoch + 1
    return None


def test_early_stopping_never_stops_a_loss_that_still_falls():
    slowly = [-600.0 - 1e-4 * epoch for epoch in range(60)]  # a new best every epoch, however small
    stopping = training.Stopping(patience=2, warm_epochs=0, max_wall_s=0)
    assert run_stopping(stopping, slowly, max_epochs=60) == 60 and stopping.reason == "epochs"


def test_early_stopping_counts_patience_only_after_the_warm_phase():
    losses = [5.0, 6.0, 7.0, 8.0, 4.0, 5.0, 6.0, 7.0]  # worse during the warm phase (epochs 1-3), best at 5
    stopping = training.Stopping(patience=2, warm_epochs=3, max_wall_s=0)
    assert run_stopping(stopping, losses) == 7 and stopping.reason == "early_stopping"
    assert run_stopping(training.Stopping(patience=2, warm_epochs=0, max_wall_s=0), losses) == 3


def test_wall_time_budget_ends_the_run_at_an_epoch_boundary(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    stopping = training.Stopping(patience=100, warm_epochs=0, max_wall_s=35.0)
    # 10 s per epoch: after epoch 3 (30 s) another epoch would end at 40 s > 35 s
    assert run_stopping(stopping, [-float(epoch) for epoch in range(10)], seconds_per_epoch=10.0, clock=clock) == 3
    assert stopping.reason == "wall_time"
    stopping.load_state_dict(stopping.state_dict())
    assert stopping.reason == ""  # a resumed run gets a fresh budget


def test_warm_epochs_of_each_schedule():
    assert training.warm_epochs(TrainConfig(schedule=Schedule.ONECYCLE, epochs=30, warmup_fraction=0.3)) == 9
    assert training.warm_epochs(TrainConfig(schedule=Schedule.COSINE, epochs=30)) == 0
    assert training.warm_epochs(TrainConfig(schedule=Schedule.PLATEAU, epochs=30)) == 0


def test_lightning_refusing_a_device_setting_is_a_config_error_naming_the_key(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"^train.accelerator: Lightning cannot run with accelerator='gpu'"):
        run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, accelerator="gpu"))


def test_an_accelerator_whose_package_is_missing_is_a_config_error(tiny_data, tmp_path):
    # tpu needs torch_xla (not installed with the CPU build of torch): a traceback before
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed")
    with pytest.raises(ConfigError, match=r"^train.accelerator: 'tpu' needs a package that is not installed \(.*torch_xla"):
        run_train(tiny_data, tmp_path, dataclasses.replace(TINY_TRAIN, accelerator="tpu"))
    assert not (tmp_path / "wts.h5.zip").exists()


def test_masked_detector_pixels_are_left_out_of_the_training_losses(tmp_path):
    # Masked pixels hold 0 in prepared data (dead, hot, beam stop); the loss must not ask the
    # network to predict 0 there.
    train, _ = simulate_train_test(SMALL_PREPARE)
    groups = make_groups(train.xcoords, train.ycoords, 1, 7, np.random.default_rng(0))
    amplitudes, offsets = grouped_tensors(train.amplitudes, groups)
    torch.manual_seed(0)
    autoencoder, _ = build_models(Architecture(32, 1, 0.25), train.probe, intensity_scale_of(train.amplitudes))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[14:18, 14:18] = False  # a beam stop over the brightest pixels
    module = training.PINNModule(autoencoder, SMALL_TRAIN, mask)
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value.detach()))
    batch = (amplitudes[:8].clone(), offsets[:8])
    batch[0][..., ~mask] = 0.0
    loss = float(module._step(batch, 0, "train"))
    with torch.no_grad():
        _, predicted = autoencoder(*batch)
    assert loss == pytest.approx(float(physics.poisson_nll(predicted, batch[0], mask=mask)), rel=1e-6)
    assert loss != pytest.approx(float(physics.poisson_nll(predicted, batch[0])), rel=1e-3)
    assert logged["train_amplitude_mae"] == pytest.approx(float(physics.amplitude_mae(predicted, batch[0], mask=mask)), rel=1e-6)
    # The mask is part of the run's identity: a checkpoint of an unmasked run is not resumed with one.
    assert training.fingerprint(autoencoder, *batch, SMALL_TRAIN, mask)[0] != training.fingerprint(autoencoder, *batch, SMALL_TRAIN)[0]
