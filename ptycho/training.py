"""Lightning training of the autoencoder: loss, optimiser, schedule, early stopping, history.

The ``LightningModule`` here only trains; building the models and writing the bundle are the
job of ``ptycho.workflows.train``. Loss (DESIGN.md §2): Poisson negative log-likelihood of the
measured counts k = A**2 given the expected counts lambda = A_pred**2. The stored amplitudes
are sqrt(photon counts) by the data contract and the probe is photon-calibrated, so the scale
s of DESIGN.md §2 is 1 here; the network's own input scale (``intensity_scale``, from the
training data) only conditions the input and never enters the likelihood.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from ptycho import physics
from ptycho.config import LossKind, TrainConfig
from ptycho.model import Autoencoder


class PINNModule(L.LightningModule):
    """Trains an ``Autoencoder`` by comparing its predicted diffraction with the measured one."""

    def __init__(self, autoencoder: Autoencoder, loss: LossKind, learning_rate: float, lr_patience: int, lr_factor: float):
        super().__init__()
        self.autoencoder = autoencoder
        self.loss_kind = loss
        self.learning_rate = learning_rate
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        amplitudes, offsets = batch
        _, predicted = self.autoencoder(amplitudes, offsets)
        nll = physics.poisson_nll(predicted, amplitudes)
        mae = physics.amplitude_mae(predicted, amplitudes)
        loss = nll if self.loss_kind is LossKind.POISSON else mae
        batch_size = amplitudes.shape[0]
        # sync_dist: under DDP every rank logs the loss averaged over all ranks (no-op on one device)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}_amplitude_mae", mae, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        return loss

    def training_step(self, batch, batch_index):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_index):
        self._step(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=self.lr_factor, patience=self.lr_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


class HistoryAndBest(Callback):
    """Records one row of losses per epoch and keeps the weights of the best validation epoch."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer, module):
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for name in ("train_loss", "val_loss", "train_amplitude_mae", "val_amplitude_mae"):
            if name in metrics:
                row[name] = float(metrics[name])
        row["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows.append(row)
        if row.get("val_loss", math.inf) < self.best_loss:
            self.best_loss = row["val_loss"]
            self.best_state = copy.deepcopy(module.autoencoder.state_dict())


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, float]]  # one row per epoch
    best_val_loss: float
    epochs_run: int
    is_global_zero: bool  # False on the other ranks of a multi-GPU (DDP) run: they write nothing


def split_train_val(n_groups: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of group indices into (train, validation); at least one of each."""
    order = np.random.default_rng(seed).permutation(n_groups)
    n_val = min(max(1, int(round(val_fraction * n_groups))), n_groups - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit(
    autoencoder: Autoencoder,
    amplitudes: torch.Tensor,
    offsets: torch.Tensor,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    resume: bool = False,
) -> FitResult:
    """Train in place on grouped amplitudes (G, C, N, N) and offsets (G, C, 2); best weights kept.

    Runs are seeded and deterministic on the CPU for a fixed ``num_threads``. Lightning
    checkpoints (``last.ckpt``) go to ``checkpoint_dir`` so that ``resume=True`` continues an
    interrupted run; they are never the tracked model.
    """
    torch.set_num_threads(config.num_threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_indices, val_indices = split_train_val(amplitudes.shape[0], config.val_fraction, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        TensorDataset(amplitudes[train_indices], offsets[train_indices]),
        batch_size=config.batch_size, shuffle=True, generator=generator,
    )
    val_loader = DataLoader(TensorDataset(amplitudes[val_indices], offsets[val_indices]), batch_size=config.batch_size)
    module = PINNModule(autoencoder, config.loss, config.learning_rate, config.lr_patience, config.lr_factor)
    checkpoint_dir = Path(checkpoint_dir)
    history = HistoryAndBest()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        strategy=config.strategy,
        precision=config.precision,
        # grid_sample's backward has no deterministic CUDA kernel: insist on the CPU, warn on GPUs.
        deterministic=True if config.accelerator == "cpu" else "warn",
        num_sanity_val_steps=0,
        logger=CSVLogger(checkpoint_dir, name="logs"),
        callbacks=[
            EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
            ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, enable_version_counter=False),
            history,
        ],
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    last = checkpoint_dir / "last.ckpt"
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume and last.exists() else None)
    if history.best_state is not None:
        autoencoder.load_state_dict(history.best_state)
    autoencoder.cpu().eval()
    return FitResult(
        history=history.rows, best_val_loss=history.best_loss, epochs_run=len(history.rows),
        is_global_zero=trainer.is_global_zero,
    )


def _devices(devices: str) -> int | str | list[int]:
    """Lightning's devices argument from its params.yaml spelling: "1", "0,1" or "auto"."""
    if devices == "auto":
        return devices
    if "," in devices:
        return [int(part) for part in devices.split(",") if part.strip()]
    return int(devices)
