"""Lightning training of the autoencoder: loss, optimiser, schedule, stopping, checkpoints, history.

The ``LightningModule`` here only trains; building the models and writing the bundle are the
job of ``ptycho.workflows.train``. Loss (DESIGN.md §2): Poisson negative log-likelihood of the
measured counts k = A**2 given the expected counts lambda = A_pred**2. The stored amplitudes
are sqrt(photon counts) by the data contract and the probe is photon-calibrated, so the scale
s of DESIGN.md §2 is 1 here; the network's own input scale (``intensity_scale``, from the
training data) only conditions the input and never enters the likelihood. The likelihood
leaves out the constant log(k!) term, so its values are negative and only differences matter.

Epochs are counted from 1 wherever a person reads them (progress bar, history, messages);
Lightning's ``current_epoch`` counts from 0.

Resuming (``fit(resume=True)``): ``last.ckpt`` is written atomically at the end of every epoch
and holds everything the next epoch depends on: weights, optimiser and schedule, the history
and the best weights so far (``HistoryAndBest``), the stopping state (``Stopping``), the
shuffling generator (``ShuffleState``) and a fingerprint of the run's settings and data. A run
killed after epoch k and resumed therefore repeats exactly the uninterrupted run's epochs
k + 1, ... (on the CPU, for a fixed ``num_threads``): same weights, same bundle bytes.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import os
import random
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from ptycho import physics
from ptycho.config import LossKind, Schedule, TrainConfig
from ptycho.errors import ConfigError, TrainingError, TrainingWarning
from ptycho.files import remove_stale_temp_files, temp_path
from ptycho.model import Autoencoder

LAST_CHECKPOINT = "last.ckpt"

# Settings a resumed run may change: where and how fast it runs, and its wall-time budget.
# Everything else in TrainConfig shapes the trajectory and must match the checkpoint's run.
RESUMABLE_CHANGES = ("max_wall_s", "accelerator", "devices", "strategy", "num_threads")

FINISHED = ("epochs", "early_stopping")  # stop reasons after which there is nothing to resume


class PINNModule(L.LightningModule):
    """Trains an ``Autoencoder`` by comparing its predicted diffraction with the measured one.

    Schedules (``TrainConfig.schedule``): ``plateau`` multiplies the learning rate by
    ``lr_factor`` after ``lr_patience`` epochs without a better validation loss (stepped here,
    at the end of each epoch, so that the checkpoint of that epoch holds the stepped state);
    ``cosine`` decays it per batch from ``learning_rate`` to 0 over all epochs; ``onecycle``
    raises it from learning_rate / 25 to ``learning_rate`` over ``warmup_fraction`` of the
    batches, then decays it to learning_rate / 2.5e5 (``torch.optim.lr_scheduler.OneCycleLR``,
    which also cycles Adam's beta1 between 0.95 and 0.85).
    """

    def __init__(self, autoencoder: Autoencoder, config: TrainConfig, mask: torch.Tensor | None = None):
        super().__init__()
        self.autoencoder = autoencoder
        self.config = config
        # (N, N) bool, True = valid detector pixel; invalid ones are left out of the losses. A
        # non-persistent buffer: it moves with the module to the device and stays out of checkpoints.
        self.register_buffer("mask", mask, persistent=False)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None  # from a checkpoint, applied once the scheduler exists

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int, stage: str) -> torch.Tensor:
        amplitudes, offsets = batch
        _, predicted = self.autoencoder(amplitudes, offsets)
        # A masked pixel holds 0 in the data (dead, hot or under the beam stop), not a measurement
        nll = physics.poisson_nll(predicted, amplitudes, mask=self.mask)
        mae = physics.amplitude_mae(predicted, amplitudes, mask=self.mask)
        loss = nll if self.config.loss is LossKind.POISSON else mae
        if not torch.isfinite(loss):
            learning_rate = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise TrainingError(
                f"train: the {stage} loss is {float(loss.detach())} at epoch {self.current_epoch + 1}, batch {batch_index + 1}: "
                f"the optimisation diverged, nothing was written; lower train.learning_rate "
                f"(now {self.config.learning_rate:g}, {learning_rate:.3g} at that step, schedule {self.config.schedule.value})"
            )
        batch_size = amplitudes.shape[0]
        # sync_dist: under DDP every rank logs the loss averaged over all ranks (no-op on one device)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}_amplitude_mae", mae, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        return loss

    def training_step(self, batch, batch_index):
        return self._step(batch, batch_index, "train")

    def validation_step(self, batch, batch_index):
        self._step(batch, batch_index, "val")

    def configure_optimizers(self):
        config = self.config
        optimizer = torch.optim.Adam(self.parameters(), lr=config.learning_rate)
        match config.schedule:
            case Schedule.PLATEAU:
                self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_factor, patience=config.lr_patience)
                if self._plateau_state is not None:
                    self.plateau.load_state_dict(self._plateau_state)
                return optimizer
            case Schedule.COSINE:
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
            case Schedule.ONECYCLE:
                scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer, max_lr=config.learning_rate, total_steps=self.trainer.estimated_stepping_batches,
                    pct_start=config.warmup_fraction,
                )
            case _:
                raise ConfigError(f"train.schedule: allowed values are {[s.value for s in Schedule]}; got {config.schedule!r}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_end(self):
        if self.plateau is not None:
            self.plateau.step(float(self.trainer.callback_metrics["val_loss"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint["plateau_scheduler"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau_scheduler")


def warm_epochs(config: TrainConfig) -> int:
    """Epochs of the schedule's warm phase (the rising learning rate of onecycle), during which a
    validation loss that does not improve does not count towards early stopping."""
    return math.ceil(config.warmup_fraction * config.epochs) if config.schedule is Schedule.ONECYCLE else 0


class HistoryAndBest(Callback):
    """Records one row of losses per epoch (epochs counted from 1) and keeps the weights of the
    best validation epoch. Its state is part of every checkpoint, so a resumed run keeps both."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer, module):
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        for name in ("train_loss", "val_loss", "train_amplitude_mae", "val_amplitude_mae"):
            if name in metrics:
                row[name] = float(metrics[name])
        row["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows.append(row)
        if row.get("val_loss", math.inf) < self.best_loss:
            self.best_loss = row["val_loss"]
            self.best_epoch = row["epoch"]
            self.best_state = {name: value.detach().cpu().clone() for name, value in module.autoencoder.state_dict().items()}

    def state_dict(self) -> dict:
        return {"rows": copy.deepcopy(self.rows), "best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [dict(row) for row in state_dict["rows"]]
        self.best_loss = float(state_dict["best_loss"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.best_state = state_dict["best_state"]


class Stopping(Callback):
    """Ends the run and says why: ``epochs`` (all of them ran), ``early_stopping`` (the validation
    loss has not improved for ``patience`` epochs, counted after the warm phase) or
    ``wall_time`` (another epoch would end after ``max_wall_s`` seconds of this invocation's
    epochs; at least one epoch always runs). Any new best resets the count, so a validation loss
    that still falls, however slowly, is never stopped: no min_delta, because the Poisson
    likelihood's offset is arbitrary (a relative delta means nothing) and its scale follows the
    photon count (an absolute one would have to as well)."""

    def __init__(self, patience: int, warm_epochs: int, max_wall_s: float):
        self.patience = patience
        self.warm_epochs = warm_epochs
        self.max_wall_s = max_wall_s
        self.best = math.inf
        self.wait = 0
        self.reason = ""  # empty while the run goes on
        self._started = 0.0
        self._epoch_started = 0.0

    def on_train_start(self, trainer, module):
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer, module):
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer, module):
        epoch = trainer.current_epoch + 1
        val_loss = float(trainer.callback_metrics["val_loss"])
        if val_loss < self.best:
            self.best, self.wait = val_loss, 0
        elif epoch > self.warm_epochs:
            self.wait += 1
        now = time.monotonic()
        if epoch >= trainer.max_epochs:
            self.reason = "epochs"
        elif self.wait >= self.patience:
            self.reason = "early_stopping"
        elif self.max_wall_s and (now - self._started) + (now - self._epoch_started) > self.max_wall_s:
            self.reason = "wall_time"
        if self.reason:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "reason": self.reason}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.wait, self.reason = float(state_dict["best"]), int(state_dict["wait"]), str(state_dict["reason"])
        if self.reason == "wall_time":
            self.reason = ""  # resumed with a fresh budget


class ShuffleState(Callback):
    """Checkpoints the generator that shuffles the training batches, so that a resumed run draws
    the same batch order for its next epoch as the uninterrupted run would have."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.generator.set_state(state_dict["generator"])


class RunIdentity(Callback):
    """Carries the fingerprint of the run's settings and data into the checkpoint (see ``fingerprint``)."""

    def __init__(self, fingerprint: str, settings: dict):
        self.fingerprint = fingerprint
        self.settings = settings

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "settings": self.settings}


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` at the end of every epoch, atomically (temp file, fsync, rename), so a
    kill at any moment leaves the previous epoch's checkpoint or this one, never a partial file.
    As a ``Checkpoint`` it runs after the other callbacks and the module's epoch-end hook."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer, module):
        temp = trainer.strategy.broadcast(temp_path(self.path))
        try:
            trainer.save_checkpoint(temp, weights_only=False)  # the whole training state, not only the weights
            if trainer.is_global_zero:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
        finally:
            if trainer.is_global_zero:
                Path(temp).unlink(missing_ok=True)
        trainer.strategy.barrier()


class EpochFromOneRichBar(RichProgressBar):
    """Lightning's progress bar, counting epochs from 1: "Epoch 1/2" ... "Epoch 2/2"."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return f"{text:{len(self.validation_description)}}"


class EpochFromOneTQDMBar(TQDMProgressBar):
    """The tqdm bar (without rich installed), counting epochs from 1."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, float]]  # one row per epoch, epochs from 1 (those before a resume included)
    best_val_loss: float
    best_epoch: int  # from 1
    epochs_run: int
    stop_reason: str  # epochs | early_stopping | wall_time
    is_global_zero: bool  # False on the other ranks of a multi-GPU (DDP) run: they write nothing


def split_train_val(n_groups: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of group indices into (train, validation); at least one of each."""
    if n_groups < 2:
        raise TrainingError(f"train: {n_groups} group(s) of patterns cannot be split into training and validation; at least 2 are needed")
    order = np.random.default_rng(seed).permutation(n_groups)
    n_val = min(max(1, int(round(val_fraction * n_groups))), n_groups - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fingerprint(
    autoencoder: Autoencoder, amplitudes: torch.Tensor, offsets: torch.Tensor, config: TrainConfig, mask: torch.Tensor | None = None,
) -> tuple[str, dict]:
    """SHA-256 of what determines the training trajectory: the settings (all but
    ``RESUMABLE_CHANGES``), the grouped data and the initial weights (which carry the
    architecture, the probe and the scales). Returns (hex digest, the settings hashed)."""
    settings = {key: (value.value if hasattr(value, "value") else value) for key, value in asdict(config).items() if key not in RESUMABLE_CHANGES}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for tensor in (amplitudes, offsets, *autoencoder.state_dict().values(), *([] if mask is None else [mask])):
        array = tensor.detach().cpu().numpy()
        digest.update(f"{array.shape} {array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest(), settings


def read_checkpoint_state(path: Path) -> dict:
    """The callback states of a checkpoint (loaded with ``weights_only=True``: nothing is unpickled)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return {key: checkpoint["callbacks"][key] for key in ("RunIdentity", "HistoryAndBest", "Stopping")}
    except Exception as error:  # any failure to read it means the same to the user: it cannot be resumed
        raise TrainingError(f"train --resume: {path} is not a checkpoint of this version of ptycho ({type(error).__name__}: {error}); train without --resume") from error


def fit(
    autoencoder: Autoencoder,
    amplitudes: torch.Tensor,
    offsets: torch.Tensor,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    mask: torch.Tensor | None = None,
) -> FitResult:
    """Train in place on grouped amplitudes (G, C, N, N) and offsets (G, C, 2); best weights kept.

    ``mask`` (N, N) bool, True = valid detector pixel: invalid pixels are left out of the losses.

    Runs are seeded and deterministic on the CPU for a fixed ``num_threads`` (unless
    ``max_wall_s`` ends them). ``last.ckpt`` in ``checkpoint_dir`` is rewritten after every
    epoch; it is never the tracked model. A fresh run deletes an old one first. ``resume=True``
    continues from it; without a checkpoint it warns and trains from the start; if its run
    finished (all epochs, or early stopping) it warns and returns that run's best weights without
    training; a checkpoint of other settings or data is refused. ``callbacks`` are added to the
    trainer's (tests use them to interrupt a run). Global state (threads, RNG states,
    deterministic-algorithm flags, Lightning's environment variables) is restored on return.
    """
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    remove_stale_temp_files(last)
    identity = RunIdentity(*fingerprint(autoencoder, amplitudes, offsets, config, mask))
    ckpt_path = None
    if resume and not last.exists():
        warnings.warn(f"train --resume: no checkpoint {last}; training from the start", TrainingWarning, stacklevel=2)
    elif resume:
        saved = read_checkpoint_state(last)
        _check_same_run(saved["RunIdentity"], identity, last)
        history = saved["HistoryAndBest"]
        if saved["Stopping"]["reason"] in FINISHED:
            reason = saved["Stopping"]["reason"]
            warnings.warn(
                f"train --resume: nothing to resume, the run in {last} finished at epoch {len(history['rows'])} "
                f"({'all epochs' if reason == 'epochs' else 'early stopping'}); the bundle is written from its best weights "
                f"(epoch {history['best_epoch']}) without training", TrainingWarning, stacklevel=2,
            )
            autoencoder.load_state_dict(history["best_state"])
            autoencoder.cpu().eval()
            return FitResult(
                history=history["rows"], best_val_loss=history["best_loss"], best_epoch=history["best_epoch"],
                epochs_run=len(history["rows"]), stop_reason=reason, is_global_zero=True,
            )
        ckpt_path = last
    else:
        last.unlink(missing_ok=True)  # a checkpoint always belongs to the latest run

    with preserved_global_state(), quiet_lightning():
        torch.set_num_threads(config.num_threads)
        L.seed_everything(config.seed, workers=True, verbose=False)
        train_indices, val_indices = split_train_val(amplitudes.shape[0], config.val_fraction, config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(
            TensorDataset(amplitudes[train_indices], offsets[train_indices]),
            batch_size=config.batch_size, shuffle=True, generator=generator,
        )
        val_loader = DataLoader(TensorDataset(amplitudes[val_indices], offsets[val_indices]), batch_size=config.batch_size)
        module = PINNModule(autoencoder, config, mask)
        history = HistoryAndBest()
        stopping = Stopping(config.early_stopping_patience, warm_epochs(config), config.max_wall_s)
        trainer = _trainer(config, checkpoint_dir, [
            history, stopping, ShuffleState(generator), identity,
            EpochFromOneRichBar() if _RICH_AVAILABLE else EpochFromOneTQDMBar(), *callbacks, LastCheckpoint(last),
        ])
        # Load the checkpoint without unpickling objects, where this Lightning version lets us say so
        safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, **safe)
    if history.best_state is None:
        raise TrainingError("train: no epoch gave a validation loss; nothing was written")
    autoencoder.load_state_dict(history.best_state)
    autoencoder.cpu().eval()
    return FitResult(
        history=history.rows, best_val_loss=history.best_loss, best_epoch=history.best_epoch, epochs_run=len(history.rows),
        stop_reason=stopping.reason, is_global_zero=trainer.is_global_zero,
    )


def _check_same_run(saved: dict, identity: RunIdentity, path: Path) -> None:
    if saved["fingerprint"] == identity.fingerprint:
        return
    changed = [f"train.{key} {saved['settings'].get(key)!r} -> {value!r}" for key, value in identity.settings.items() if saved["settings"].get(key) != value]
    what = ", ".join(changed) if changed else "the training data or the model settings differ"
    raise TrainingError(f"train --resume: {path} belongs to another run ({what}); train without --resume to start over")


# Words in Lightning's refusals that point at one of the device settings.
_SETTING_CLUES = {
    "accelerator": ("accelerator", "gpu", "cuda", "mps", "tpu", "xla", "backend"),
    "devices": ("devices", "device ids", "gpu ids"),
    "strategy": ("strategy", "ddp", "fsdp", "deepspeed"),
    "precision": ("precision", "bf16", "16-mixed", "16-true", "amp"),
}


def _trainer(config: TrainConfig, checkpoint_dir: Path, callbacks: list[Callback]) -> L.Trainer:
    """The Lightning trainer; Lightning's refusal of a device setting becomes a ConfigError naming the key."""
    try:
        return L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=_devices(config.devices),
            strategy=config.strategy,
            precision=config.precision,
            # grid_sample's backward has no deterministic CUDA kernel: insist on the CPU, warn on GPUs.
            deterministic=True if config.accelerator == "cpu" else "warn",
            num_sanity_val_steps=0,
            logger=False,  # the history (HistoryAndBest) is the log
            default_root_dir=checkpoint_dir,
            callbacks=callbacks,
            enable_model_summary=False,
        )
    except ImportError as error:  # an accelerator whose package is not installed (tpu: torch_xla)
        raise ConfigError(
            f"train.accelerator: {config.accelerator!r} needs a package that is not installed ({error}); "
            "install it, or set train.accelerator: cpu, gpu or auto"
        ) from error
    except (MisconfigurationException, ValueError) as error:
        message = str(error)
        words = message.lower()
        keys = [key for key, clues in _SETTING_CLUES.items() if any(clue in words for clue in clues)] or list(_SETTING_CLUES)
        given = ", ".join(f"{key}={getattr(config, key)!r}" for key in keys)
        raise ConfigError(f"{'/'.join(f'train.{key}' for key in keys)}: Lightning cannot run with {given} here: {message}") from error


_NOISE = re.compile(r"💡 Tip:|GPU available:|TPU available:|HPU available:|Loading `train_dataloader` to estimate number of stepping batches")


class _DropNoise(logging.Filter):
    """Lightning's advertisement, device-availability lines and the note that it counts the batches
    (for the cosine and onecycle schedules), printed at every training."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.match(record.getMessage())


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence, for the duration, what a user cannot act on: Lightning's tips and device lines, and
    the FutureWarning that Lightning's own pytree helper triggers in torch (``LeafSpec``)."""
    noise = _DropNoise()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


_LIGHTNING_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")


@contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore on exit what training changes process-wide: torch's thread count and grad mode,
    the deterministic-algorithm and cuDNN flags, the random states of Python, NumPy and torch,
    and the environment variables Lightning sets when it seeds or goes deterministic."""
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    environment = {name: os.environ.get(name) for name in _LIGHTNING_ENVIRONMENT}
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _devices(devices: str) -> int | str | list[int]:
    """Lightning's devices argument from its params.yaml spelling: "1", "0,1" or "auto"."""
    if devices == "auto":
        return devices
    if "," in devices:
        return [int(part) for part in devices.split(",") if part.strip()]
    return int(devices)
