"""Test-time adaptation: the trained network fine-tuned on the test scan's own patterns before inference.

The loss of a physics-informed network needs no truth, only the measured patterns, so a trained
bundle can keep learning on the very scan it is asked to reconstruct (what a supervised network
cannot do). ``infer.adapt_epochs`` > 0 does that: the bundle's model, in memory, is trained for
that many epochs on the test scan's groups (grouped as inference groups them) with the training
loss and schedule the bundle was trained with, at ``infer.adapt_learning_rate`` (small: the start is already a solution for
scans like the training ones). The bundle file is not changed; the adaptation's time is part of
`infer`'s time. It is an inference that trains: report it as its own method, not as the network.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from ptycho.bundle import Bundle
from ptycho.config import InferConfig, TrainConfig, section_from_mapping
from ptycho.errors import BundleError, ConfigError
from ptycho.data import PtychoDataset
from ptycho.grouping import grouped_tensors, make_groups


def trained_settings(bundle: Bundle) -> TrainConfig:
    """The `train:` settings the bundle was trained with (its config snapshot: loss, batch size,
    schedule, validation share), so that adaptation continues the same training; defaults for a
    bundle without them."""
    try:
        snapshot = json.loads(bundle.extras["config.json"]).get("train")
    except (KeyError, ValueError, AttributeError):
        snapshot = None
    if snapshot is None:
        return TrainConfig()
    try:
        return section_from_mapping(TrainConfig, "train", snapshot)
    except (ConfigError, TypeError, ValueError) as error:
        raise BundleError(f"bundle member 'config.json': its train settings cannot be read back ({error})") from error


def adapt(bundle: Bundle, data: PtychoDataset, config: InferConfig, n_neighbours: int) -> dict[str, float]:
    """Fine-tune ``bundle``'s model in place on ``data``'s own patterns for ``config.adapt_epochs``
    epochs; returns {"adapt_epochs", "adapt_s", "adapt_first_loss", "adapt_best_loss"} (the
    validation losses of the first and the best epoch, on a held-out tenth of the test groups)."""
    from ptycho import training

    started = time.perf_counter()
    architecture = bundle.architecture
    groups = make_groups(data.xcoords, data.ycoords, architecture.gridsize, n_neighbours,
                         np.random.default_rng(config.seed), architecture.grouping)
    amplitudes, offsets = grouped_tensors(data.amplitudes, groups)
    settings = dataclasses.replace(
        trained_settings(bundle), epochs=config.adapt_epochs, learning_rate=config.adapt_learning_rate, seed=config.seed,
        early_stopping_patience=config.adapt_epochs, max_wall_s=0.0, num_threads=torch.get_num_threads(),
        accelerator="cpu", devices="1", strategy="auto", precision="32-true",  # inference's machine, not the training's
    )
    mask = None if data.mask is None else torch.from_numpy(np.asarray(data.mask, dtype=bool))
    bundle.autoencoder.train()
    with tempfile.TemporaryDirectory(prefix="ptycho-adapt-") as checkpoints:
        result = training.fit(bundle.autoencoder, amplitudes, offsets, settings, checkpoints, mask=mask)
    bundle.autoencoder.eval()
    losses = [row["val_loss"] for row in result.history if "val_loss" in row]
    return {
        "adapt_epochs": config.adapt_epochs,
        "adapt_s": round(time.perf_counter() - started, 3),
        "adapt_first_loss": float(losses[0]) if losses else float("nan"),
        "adapt_best_loss": float(min(losses)) if losses else float("nan"),
    }
