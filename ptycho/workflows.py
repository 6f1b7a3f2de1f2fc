"""One workflow function per pipeline stage: the DVC stage scripts, the CLI and the tests call these."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ptycho import figures
from ptycho.config import PrepareConfig, Source
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
