"""One workflow function per pipeline stage: the DVC stage scripts, the CLI and the tests call these."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from ptycho import figures, training
from ptycho.bundle import save_bundle
from ptycho.config import ModelConfig, PrepareConfig, Source, TrainConfig
from ptycho.grouping import grouped_tensors, make_groups
from ptycho.model import Architecture, build_models, intensity_scale_of
from ptycho.data import PtychoDataset, load_dataset, save_dataset, validate
from ptycho.errors import DataError
from ptycho.simulate import simulate_train_test


def split_spatially(dataset: PtychoDataset, test_fraction: float, source: str) -> tuple[PtychoDataset, PtychoDataset]:
    """Split one scan into train (small x) and test (large x) parts, with a guard band.

    The positions with the largest x (column) make the test set: those at or beyond the
    (1 - test_fraction) quantile of x. Training keeps positions at least N/2 pixels to the left
    of that cut, so the central N/2-wide windows that the network predicts never overlap
    between train and test: the test region is object the network has not seen.
    """
    size = dataset.pattern_size
    cut = float(np.quantile(dataset.xcoords, 1.0 - test_fraction))
    test_indices = np.flatnonzero(dataset.xcoords >= cut)
    train_indices = np.flatnonzero(dataset.xcoords < cut - size / 2)
    if len(train_indices) == 0 or len(test_indices) == 0:
        raise DataError(
            f"{source}: key 'xcoords': cannot split {dataset.n_patterns} positions spatially with "
            f"test_fraction={test_fraction} and a guard band of N/2={size // 2} px "
            f"(train {len(train_indices)}, test {len(test_indices)}); give prepare.test_file instead"
        )
    split = {"split": f"spatial: test x >= {cut:.2f}, train x < {cut - size / 2:.2f}"}
    train, test = dataset.subset(train_indices), dataset.subset(test_indices)
    return (
        dataclasses.replace(train, metadata={**train.metadata, **split, "role": "train"}),
        dataclasses.replace(test, metadata={**test.metadata, **split, "role": "test"}),
    )


def prepare(config: PrepareConfig, train_path: str | Path, test_path: str | Path, preview_path: str | Path) -> tuple[PtychoDataset, PtychoDataset]:
    """Simulate or ingest a scan and write canonical train/test NPZ files plus a preview PNG.

    Everything is read and checked before anything is written, so bad input leaves no output.
    """
    if config.source is Source.SIMULATE:
        train, test = simulate_train_test(config)
    elif config.test_file:
        train, test = load_dataset(config.train_file), load_dataset(config.test_file)
        if test.pattern_size != train.pattern_size:
            raise DataError(
                f"{config.test_file}: key 'diffraction': pattern size {test.pattern_size} differs "
                f"from the training file's {train.pattern_size} ({config.train_file})"
            )
    else:
        train, test = split_spatially(load_dataset(config.train_file), config.test_fraction, config.train_file)
    validate(train, str(train_path))
    validate(test, str(test_path))
    save_dataset(train, train_path)
    save_dataset(test, test_path)
    figures.dataset_preview(train, preview_path, f"training data ({config.source.value})")
    return train, test


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    history: list[dict[str, float]]
    metrics: dict[str, float]


def _history_csv(rows: list[dict[str, float]]) -> bytes:
    columns = sorted({key for row in rows for key in row}, key=lambda key: (key != "epoch", key))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _write_text(path: str | Path, content: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def train(
    train_data: PtychoDataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    bundle_path: str | Path,
    history_path: str | Path,
    metrics_path: str | Path,
    checkpoint_dir: str | Path,
    resume: bool = False,
) -> TrainSummary:
    """Fit the PINN on the training scan and write the bundle, the history CSV and final metrics.

    The one training code path: the `train` stage, `ptycho train` and the tests call it, and it
    always ends by writing ``bundle_path`` (wts.h5.zip).
    """
    started = time.perf_counter()
    architecture = Architecture(N=train_data.pattern_size, gridsize=model_config.gridsize, n_filters_scale=model_config.n_filters_scale)
    groups = make_groups(
        train_data.xcoords, train_data.ycoords, model_config.gridsize, model_config.n_neighbours,
        np.random.default_rng(train_config.seed),
    )
    amplitudes, offsets = grouped_tensors(train_data.amplitudes, groups)
    autoencoder, diffraction_to_obj = build_models(architecture, train_data.probe, intensity_scale_of(train_data.amplitudes))
    result = training.fit(autoencoder, amplitudes, offsets, train_config, checkpoint_dir, resume)
    history = _history_csv(result.history)
    config_snapshot = json.dumps(
        {"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)}, sort_keys=True, indent=2, default=str
    ).encode()
    save_bundle(bundle_path, autoencoder, diffraction_to_obj, architecture, extras={"history.csv": history, "config.json": config_snapshot})
    last = result.history[-1]
    metrics = {
        "final_train_loss": last.get("train_loss", float("nan")),
        "final_val_loss": last.get("val_loss", float("nan")),
        "best_val_loss": result.best_val_loss,
        "final_val_amplitude_mae": last.get("val_amplitude_mae", float("nan")),
        "epochs_run": result.epochs_run,
        "n_groups": groups.n_groups,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    _write_text(history_path, history)
    _write_text(metrics_path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    return TrainSummary(history=result.history, metrics=metrics)
