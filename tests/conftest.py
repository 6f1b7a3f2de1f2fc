"""Shared small configurations and a once-per-session trained model for the slower tests."""

import dataclasses

import pytest

from ptycho import workflows
from ptycho.config import EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, TrainConfig

# N = 32 patterns of small objects with a small probe: seconds, not minutes, per training run.
SMALL_PREPARE = PrepareConfig(
    N=32, train_object_px=112, test_object_px=72, step_px=4.0, probe_diameter_px=8.0,
    feature_px=4.0, nphotons=1e5, seed=5,
    detector_crop_px=0,  # the test figures were set on these 32 px patterns (an auto crop would take them to 20 px)
)
SMALL_MODEL = ModelConfig(gridsize=1, n_filters_scale=0.25, unrolled_sweeps=3)  # 3 learned sweeps: refine.engine learned
SMALL_TRAIN = TrainConfig(epochs=12, batch_size=16, learning_rate=2e-3, early_stopping_patience=20, seed=3, unrolled_steps=20)


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    folder: object
    train_path: object
    test_path: object
    bundle_path: object
    summary: object


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Prepare small data and train once; tests read the files but never modify them."""
    folder = tmp_path_factory.mktemp("trained")
    train_path, test_path = folder / "train.npz", folder / "test.npz"
    workflows.prepare(SMALL_PREPARE, train_path, test_path, folder / "preview.png")
    from ptycho.data import load_dataset

    summary = workflows.train(
        load_dataset(train_path), SMALL_MODEL, SMALL_TRAIN, folder / "wts.h5.zip",
        folder / "history.csv", folder / "train_metrics.json", folder / "checkpoints",
    )
    return TrainedRun(folder, train_path, test_path, folder / "wts.h5.zip", summary)


@pytest.fixture(scope="session")
def small_infer_config():
    return InferConfig(batch_size=16)


@pytest.fixture(scope="session")
def small_evaluate_config():
    return EvaluateConfig(margin_px=2)


@pytest.fixture(scope="session")
def evaluated_run(trained_run, small_infer_config, small_evaluate_config):
    """The trained run carried through infer and evaluate (files in the same folder)."""
    from ptycho.data import load_dataset

    folder = trained_run.folder
    test = load_dataset(trained_run.test_path)
    workflows.infer(test, trained_run.bundle_path, small_infer_config, folder / "reconstruction.npz", folder / "reconstruction.png", folder / "infer_stats.json")
    report = workflows.evaluate(
        test, {"pinn": folder / "reconstruction.npz"}, {"pinn": folder / "infer_stats.json"},
        small_evaluate_config, folder / "metrics.json", folder / "frc.csv", folder / "comparison.png",
    )
    return trained_run, report
