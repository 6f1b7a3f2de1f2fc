"""Backbones (ptycho/nn) for every pattern size that prepare accepts (issue 20, item 1)."""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import SMALL_MODEL, SMALL_PREPARE
from ptycho import physics, workflows
from ptycho.config import TrainConfig
from ptycho.data import load_dataset
from ptycho.model import Architecture, build_models
from ptycho.nn import NAMES
from ptycho.nn.cnn import CNN, padding_to_multiple

EVEN_SIZES = range(16, 257, 2)


@pytest.mark.parametrize("network", NAMES)
def test_every_backbone_gives_n_by_n_patches_for_every_even_n(network):
    torch.manual_seed(0)
    wrong = []
    for size in EVEN_SIZES:
        # the narrowest window (N/2, or N/2 + 1 when N/2 is odd) and the widest (N)
        for window in sorted({physics.smallest_window(size), size}):
            architecture = Architecture(N=size, gridsize=1, n_filters_scale=0.125, backbone=network, window_px=window)
            autoencoder, _ = build_models(architecture, torch.ones(size, size, dtype=torch.complex64), 1.0)
            with torch.no_grad():
                patches, amplitudes = autoencoder(torch.rand(1, 1, size, size), torch.zeros(1, 1, 2))
            if patches.shape != (1, 1, size, size) or amplitudes.shape != (1, 1, size, size) or not torch.isfinite(amplitudes).all():
                wrong.append((size, window, tuple(patches.shape)))
    assert wrong == []


def test_default_window_is_even_and_at_least_half_of_n():
    assert Architecture(N=64, gridsize=1).window_px == 32  # unchanged where N/2 is even
    assert Architecture(N=100, gridsize=1).window_px == 50
    assert Architecture(N=50, gridsize=1).window_px == 26  # N/2 = 25 is odd: one pixel more
    assert physics.probe_window(np.ones((50, 50), np.complex64), 0.01) == 26


def test_padding_keeps_the_cnn_unchanged_where_n_is_a_multiple_of_its_poolings():
    assert padding_to_multiple(64, 8) == (0, 0)
    assert padding_to_multiple(100, 16) == (6, 6)
    before, after = padding_to_multiple(50, 4)
    assert (before % 2, (50 + before + after) % 4) == (0, 0)
    # the same weights at N = 64 (no padding) and the padded N = 60 network: the parameters do not depend on N
    assert [p.shape for p in CNN(64, 1, 0.25, False).parameters()] == [p.shape for p in CNN(60, 1, 0.25, False).parameters()]


def test_cnn_output_pixels_are_those_of_the_unpadded_input():
    """A padded CNN (N = 60, padded to 64) gives the crop of what the N = 64 CNN gives on the zero-padded input."""
    torch.manual_seed(1)
    padded, small = CNN(64, 1, 0.25, True), CNN(60, 1, 0.25, True)
    small.load_state_dict(padded.state_dict())
    inputs = torch.rand(1, 1, 60, 60)
    before, after = small.padding
    with torch.no_grad():
        expected = padded(torch.nn.functional.pad(inputs, (before, after, before, after)))[0]
        found = small(inputs)[0]
    torch.testing.assert_close(found, expected[..., before : before + 60, before : before + 60])


def prepare_and_train(tmp_path, size, networks):
    prepare = dataclasses.replace(
        SMALL_PREPARE, N=size, train_object_px=2 * size, test_object_px=size + size // 2, probe_diameter_px=size / 4, step_px=size / 6,
    )
    workflows.prepare(prepare, tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "preview.png")
    for network in networks:
        summary = workflows.train(
            load_dataset(tmp_path / "train.npz"), dataclasses.replace(SMALL_MODEL, backbone=network, n_filters_scale=0.125, unrolled_sweeps=0),
            TrainConfig(epochs=1, batch_size=16, seed=3), tmp_path / f"{network}.h5.zip",
            tmp_path / "history.csv", tmp_path / "metrics.json", tmp_path / "checkpoints",
        )
        assert (tmp_path / f"{network}.h5.zip").is_file() and np.isfinite(summary.history[-1]["train_loss"])


@pytest.mark.parametrize("size", [50, 100])
def test_prepare_and_train_work_at_sizes_the_cnn_used_to_refuse(tmp_path, size):
    """N = 100 crashed in train (51 against 100) and N = 50 (2 mod 4) was refused by both backbones."""
    prepare_and_train(tmp_path, size, NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("size", EVEN_SIZES)
def test_prepare_and_train_work_for_every_even_n(tmp_path, size):
    prepare_and_train(tmp_path, size, NAMES)
