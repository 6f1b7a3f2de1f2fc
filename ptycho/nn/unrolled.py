"""Learned sweeps (network + K unrolled sweeps): rPIE sweeps on the stitched canvas with a learned
step and momentum each, optionally followed by a small learned correction, trained end to end on
the training scan with the unsupervised loss (README "Learned sweeps").

A start object (the network's stitched reconstruction, or a flat one) goes through K steps:

1. one rPIE sweep over all positions (batches of ``batch_size`` in a fixed random order) with the
   calibrated probe, written as differentiable torch (the update of ``ptycho.iterative.pie``:
   O <- O + a_k Σ_j conj(P_j) Δψ_j / ((1 - α) S + α max S), with a learned step a_k, 1 at the start);
2. heavy-ball momentum: the step's move is the sweep's update plus m_k times the previous move
   (m_k learned, 0 at the start; mPIE's idea, Maiden, Johnson & Li, Optica 4, 736 (2017));
3. with ``hidden`` > 0, a residual CNN on the canvas (``Corrector``): input the object (real,
   imaginary), the move (real, imaginary) and the normalised illumination, output a complex
   correction added to the object where the scan reaches. Its last layer starts at zero.

Untrained, the model is exactly K plain sweeps of the engine: what training learns is measured
against that, not assumed.

Loss: the Poisson negative log-likelihood of the patterns under the final object (the training
loss of the network, ``physics.poisson_nll``), on a random square region of the training scan per
step (many small problems instead of one), no labels. The base network is not trained again here:
its start enters as data (DESIGN.md §3's network, then this module); see ``train_unrolled``.

Why the canvas: the sweeps see every pattern and the overlap between them, which the single-pattern
network does not, and the learned part can only act between physically consistent updates.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn

from ptycho import physics
from ptycho.config import AUTO, RefineConfig, RefineStart
from ptycho.data import PtychoDataset, pixel_size_of
from ptycho.errors import ConfigError, DataError
from ptycho.iterative.forward import Windows, coverage_map, translate_modes
from ptycho.iterative.pie import initial_state
from ptycho.iterative.weights import rpie_weight
from ptycho.iterative.refinement import Refinement
from ptycho.reconstruction import Reconstruction
from ptycho.stitching import canvas_frame

COARSE = 4
"""Downsampling of the correctors' coarse branch."""

SCALAR_LEARNING_RATE = 0.03
"""Adam's rate for the learned steps and momenta."""

ENGINE_FLOOR = 1e-30
"""Floor of |F| in A / |F| without gradients: the engine's (``ptycho.iterative.pie``), so that an
untrained model is the engine to float rounding."""
TRAINING_FLOOR = 1e-6
"""Floor of |F| while gradients flow: keeps A / |F| and its derivative finite on dark pixels (a
photon counted where the model is dark), where 1e-30 would overflow float32 in the backward pass."""
_LOSS_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class UnrolledSettings:
    """sweeps: K; hidden: channels of each corrector; batch_size: positions per rPIE update;
    rpie_alpha: rPIE's α; steps / learning_rate / region_share / seed: training (``train_unrolled``)."""

    sweeps: int = 5
    hidden: int = 16
    batch_size: int = 64
    rpie_alpha: float = 0.05
    steps: int = 150
    learning_rate: float = 2e-3
    region_share: float = 0.6
    seed: int = 1


class CanvasScan:
    """A scan's fixed tensors on its canvas (``stitching.canvas_frame``): windows, the calibrated
    probe translated to every position, its intensities and the measured amplitudes (unshifted)."""

    def __init__(self, data: PtychoDataset, probe: np.ndarray) -> None:
        size = data.pattern_size
        self.origin, self.shape = canvas_frame(data.xcoords, data.ycoords, size)
        self.windows = Windows.on_canvas(data.xcoords, data.ycoords, size, self.origin, self.shape)
        probe_modes = torch.from_numpy(np.asarray(probe, dtype=np.complex64)).reshape(-1, size, size)
        self.probe = probe_modes
        self.probes = translate_modes(probe_modes, self.windows.remainder)  # (M, K, N, N)
        self.intensities = (self.probes.real**2 + self.probes.imag**2).sum(dim=1)
        self.targets = physics.uncentre(torch.from_numpy(np.asarray(data.amplitudes, dtype=np.float32)))
        self.valid = None if data.mask is None else physics.uncentre(torch.from_numpy(data.mask))
        illumination = coverage_map(self.windows, lambda chunk: self.probes[chunk], 256)
        self.coverage = illumination
        self.illumination = illumination / illumination.max()
        self.xy = np.stack([data.xcoords, data.ycoords], axis=1)
        self.size, self.count = size, data.n_patterns
        self.pixel_size_m = pixel_size_of(data)

    def start(self, reconstruction: Reconstruction | None) -> torch.Tensor:
        """The start object (H, W): a reconstruction of this scan on the same canvas (pixels it does
        not cover: its median covered amplitude), or flat (|O| = 1)."""
        if reconstruction is None:
            return torch.ones(self.shape, dtype=torch.complex64)
        obj, _ = initial_state(reconstruction, self.origin, self.shape, self.probe)  # the engine's start, checks included
        return obj

    def model_amplitudes(self, obj: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """sqrt(Σ_k |F(P_kj O_j)|²) (B, N, N), unshifted, of ``positions`` (B,), differentiable in obj."""
        index = self.windows.index(positions)
        patches = obj.reshape(-1)[index.reshape(-1)].view(-1, 1, self.size, self.size)
        far = physics.propagate(self.probes[positions] * patches)
        return torch.sqrt((far.real**2 + far.imag**2).sum(dim=1) + _LOSS_FLOOR)

    def loss(self, obj: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Poisson NLL of the patterns of ``positions`` under ``obj`` (the network's training loss)."""
        return physics.poisson_nll(self.model_amplitudes(obj, positions), self.targets[positions], mask=self.valid)


class Corrector(nn.Module):
    """Residual CNN on the canvas: (object, update, illumination) -> complex correction; zero at the start."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fine = nn.Sequential(nn.Conv2d(5, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        # A coarse branch (1/COARSE resolution) reaches the large-scale phase errors that the
        # sweeps remove slowest; its output is upsampled and added to the fine features.
        self.coarse = nn.Sequential(nn.Conv2d(5, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.head = nn.Conv2d(hidden, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, obj: torch.Tensor, update: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        planes = torch.stack([obj.real, obj.imag, update.real, update.imag, illumination])[None]
        coarse = self.coarse(nn.functional.avg_pool2d(planes, COARSE, ceil_mode=True))
        coarse = nn.functional.interpolate(coarse, scale_factor=COARSE, mode="bilinear", align_corners=False)
        features = self.fine(planes) + coarse[..., : planes.shape[-2], : planes.shape[-1]]
        out = self.head(features)[0]
        return torch.complex(out[0], out[1]) * (illumination > 0)


class UnrolledSweeps(nn.Module):
    """K (rPIE sweep, corrector) steps on a canvas object (module docstring)."""

    def __init__(self, settings: UnrolledSettings) -> None:
        super().__init__()
        self.settings = settings
        self.log_steps = nn.Parameter(torch.zeros(settings.sweeps))
        self.momentum = nn.Parameter(torch.zeros(settings.sweeps))
        # hidden 0: no correctors, the learned steps and momenta alone (a learned rPIE schedule)
        self.correctors = nn.ModuleList([Corrector(settings.hidden) for _ in range(settings.sweeps)] if settings.hidden else [])

    def sweep(self, obj: torch.Tensor, scan: CanvasScan, order: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One rPIE sweep over ``order`` (positions) in batches, differentiable in obj and step;
        returns (object, the sweep's data error): the engine's normalised amplitude error, each
        pattern's |F| taken from the estimate in use when it was processed (``PieRun.sweep``)."""
        flat, size, alpha = obj.reshape(-1), scan.size, self.settings.rpie_alpha
        training = torch.is_grad_enabled()
        misfit = energy = 0.0
        for start in range(0, len(order), self.settings.batch_size):
            batch = order[start : start + self.settings.batch_size]
            index = scan.windows.index(batch).reshape(-1)
            probes = scan.probes[batch]
            exit_waves = probes * flat[index].view(-1, 1, size, size)
            far = physics.propagate(exit_waves)
            power = (far.real**2 + far.imag**2).sum(dim=1, keepdim=True)
            # the floor before the root while gradients flow (sqrt' is infinite at 0), after it otherwise (1e-30 squared underflows)
            modulus = torch.sqrt(power.clamp_min(TRAINING_FLOOR**2)) if training else torch.sqrt(power).clamp_min(ENGINE_FLOOR)
            target = scan.targets[batch].unsqueeze(1)
            if scan.valid is not None:
                target = torch.where(scan.valid, target, modulus)
            if not training:  # the error costs nothing extra here; under training it is not needed
                misfit += float(torch.sum((modulus - target) ** 2))
                energy += float(torch.sum(target**2 if scan.valid is None else target**2 * scan.valid))
            delta = physics.backpropagate(far * (target / modulus)) - exit_waves
            numerator = torch.zeros_like(flat).index_add(0, index, (probes.conj() * delta).sum(dim=1).reshape(-1))
            illumination = torch.zeros(flat.shape, dtype=torch.float32).index_add(0, index, scan.intensities[batch].reshape(-1))
            flat = flat + rpie_weight(illumination, step, alpha) * numerator
        return flat.view_as(obj), math.sqrt(misfit / energy) if energy > 0 else float("nan")

    def forward(self, obj: torch.Tensor, scan: CanvasScan, orders: list[torch.Tensor], on_step=None) -> torch.Tensor:
        """The object after K steps; ``orders[k]``: the positions of sweep k, in order.
        ``on_step(k, obj, error)``, if given, sees the object after each step k = 1..K and the data
        error of that step's sweep (NaN while gradients flow)."""
        velocity = torch.zeros_like(obj)
        for k in range(len(orders)):  # K steps, or the first len(orders) of them
            swept, error = self.sweep(obj, scan, orders[k], torch.exp(self.log_steps[k]))
            # heavy-ball momentum on the sweeps' updates (as mPIE), a learned factor per sweep, 0 at the start
            velocity = swept - obj + self.momentum[k] * velocity
            moved = obj + velocity
            obj = moved + self.correctors[k](moved, velocity, scan.illumination) if self.correctors else moved
            if on_step is not None:
                on_step(k + 1, obj, error)
        return obj


def sweep_orders(count: int, sweeps: int, generator: torch.Generator, positions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """A random order of ``positions`` (default: all ``count``) for each sweep."""
    chosen = torch.arange(count) if positions is None else positions
    return [chosen[torch.randperm(len(chosen), generator=generator)] for _ in range(sweeps)]


def region(xy: np.ndarray, share: float, rng: np.random.Generator) -> torch.Tensor:
    """Positions inside a random square whose side is ``share`` of the scan's extent (at least 4 positions)."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    side = share * (high - low)
    corner = low + rng.random(2) * (high - low - side)
    inside = np.all((xy >= corner) & (xy <= corner + side), axis=1)
    if inside.sum() < 4:
        inside = np.ones(len(xy), dtype=bool)
    return torch.from_numpy(np.flatnonzero(inside))


def train_unrolled(model: UnrolledSweeps, scan: CanvasScan, starts: list[torch.Tensor], *, steps: int | None = None,
                   learning_rate: float | None = None, seed: int | None = None, log=None) -> dict:
    """Fit the steps and correctors on one training scan from ``start`` (its network reconstruction,
    fixed: the base network is trained first, by ``ptycho.training``). Each step: a random region
    (``region_share``), random sweep orders, the loss on the region's patterns. Adam, cosine
    schedule. Returns {"loss_first", "loss_last", "seconds"} (loss_first: the untrained model,
    i.e. K plain sweeps, on the whole scan; loss_last: the trained one, same orders). ``steps``,
    ``learning_rate``, ``seed``: instead of the model's settings. The parameters are trainable
    during the call and frozen after it (``model.DiffractionToObject.unrolled``)."""
    settings = dataclasses.replace(model.settings, **{key: value for key, value in
                                                      (("steps", steps), ("learning_rate", learning_rate), ("seed", seed)) if value is not None})
    model.requires_grad_(True)
    try:
        return _fit(model, scan, starts, settings, log)
    finally:
        model.requires_grad_(False)


def _fit(model: UnrolledSweeps, scan: CanvasScan, starts: list[torch.Tensor], settings: UnrolledSettings, log) -> dict:
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    everything = torch.arange(scan.count)
    check_orders = sweep_orders(scan.count, settings.sweeps, torch.Generator().manual_seed(settings.seed + 1))
    with torch.no_grad():
        loss_first = [float(scan.loss(model(start, scan, check_orders), everything)) for start in starts]
    # The steps and momenta are a handful of O(1) scalars: a larger rate lets them reach their values.
    scalars = [model.log_steps, model.momentum]
    optimiser = torch.optim.Adam([{"params": scalars, "lr": SCALAR_LEARNING_RATE},
                                  {"params": list(model.correctors.parameters()), "lr": settings.learning_rate}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(settings.steps, 1))
    started = time.perf_counter()
    for step in range(settings.steps):
        positions = region(scan.xy, settings.region_share, rng)
        orders = sweep_orders(scan.count, settings.sweeps, generator, positions)
        loss = scan.loss(model(starts[step % len(starts)], scan, orders), positions)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if log is not None and (step + 1) % 25 == 0:
            log(f"unrolled step {step + 1}/{settings.steps}: loss {float(loss.detach()):.6g}")
    seconds = time.perf_counter() - started
    with torch.no_grad():
        loss_last = [float(scan.loss(model(start, scan, check_orders), everything)) for start in starts]
    return {"loss_first": loss_first, "loss_last": loss_last, "seconds": seconds}


def reconstruct_unrolled(model: UnrolledSweeps, scan: CanvasScan, start: torch.Tensor, seed: int = 1, on_step=None,
                         steps: int | None = None) -> Reconstruction:
    """The object after the K learned steps (or the first ``steps``) from ``start`` (fixed sweep
    orders from ``seed``); ``on_step(k, reconstruction, error)``, if given, sees the reconstruction
    after each step and the data error of its sweep."""
    orders = sweep_orders(scan.count, model.settings.sweeps if steps is None else steps, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        obj = model(start, scan, orders, None if on_step is None else lambda k, current, error: on_step(k, as_reconstruction(scan, current), error))
    return as_reconstruction(scan, obj)


def as_reconstruction(scan: CanvasScan, obj: torch.Tensor) -> Reconstruction:
    """A canvas object of ``scan`` as a reconstruction (zero where no window reaches), method "unrolled"."""
    obj = torch.where(scan.coverage > 0, obj, torch.zeros_like(obj))
    probe = scan.probe.numpy()
    return Reconstruction(obj.numpy().astype(np.complex64), scan.origin, scan.coverage.numpy().astype(np.float32), "unrolled",
                          probe=probe[0] if len(probe) == 1 else probe, pixel_size_m=scan.pixel_size_m)


def refine_learned(data: PtychoDataset, network: Reconstruction, settings: RefineConfig, model: UnrolledSweeps, *,
                   source: str = "the bundle") -> Refinement:
    """``refine`` with ``engine: learned``: the model's learned steps from the network's object, from
    flat, or (``start: auto``) from both, keeping the one whose final data error is lower (a tie keeps
    the network). Both starts use the network's calibrated probe, the one the steps were trained
    with. ``iterations``: auto = all K steps, or the first n <= K. The errors are those of each
    step's sweep, as the engine's (``UnrolledSweeps.sweep``): no extra forward pass."""
    count = model.settings.sweeps
    steps = count if settings.iterations == AUTO else settings.iterations
    if steps > count:
        raise ConfigError(f"refine.iterations: {steps} learned sweeps asked for, {source} has {count} (model.unrolled_sweeps); "
                          f"use auto or at most {count}, or refine.engine: sweeps")
    if network.probe is None:
        raise DataError("refine: key 'probe': the network's reconstruction has no probe; the learned sweeps need its calibrated probe")
    scan = CanvasScan(data, network.probe)
    candidates = {RefineStart.NETWORK: network, RefineStart.FLAT: None}
    if settings.start is not RefineStart.AUTO:
        candidates = {settings.start: candidates[settings.start]}
    runs = {}
    for start, initial in candidates.items():
        errors: list[float] = []
        orders = sweep_orders(scan.count, steps, torch.Generator().manual_seed(settings.seed))
        with torch.no_grad():
            obj = model(scan.start(initial), scan, orders, lambda k, current, error: errors.append(error))
        reconstruction = as_reconstruction(scan, obj)
        runs[start] = (reconstruction, errors)
    chosen = min(runs, key=lambda start: (runs[start][1][-1], start is not RefineStart.NETWORK))
    trial_errors = {start.value: errors[-1] for start, (_, errors) in runs.items()} if len(runs) > 1 else {}
    reconstruction, errors = runs[chosen]
    return Refinement(dataclasses.replace(reconstruction, method="refined-learned"), errors, chosen, trial_errors,
                      f"learned sweeps: {steps} of {count}")
