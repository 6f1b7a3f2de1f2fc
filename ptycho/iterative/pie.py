"""ePIE and rPIE on the stitching canvas, as named steps: forward, modulus projection, object
update, probe update (``run_pie`` runs them; the forward model is ``ptycho.iterative.forward``).

The engine solves the same inverse problem as the network with the same forward model
(DESIGN.md §2), so the two reconstructions can be scored by one evaluation code path.

Amplitude constraint. F = fft2(psi, norm="ortho") (unshifted, ``physics.propagate``);
F' = A F / |F| (``physics.modulus_projection``, A the measured amplitudes moved to the same
frame); psi' = ifft2(F', norm="ortho") (``physics.backpropagate``).

Updates (one small function per algorithm gives the step weight; everything else is shared).
With Δψ_j = psi'_j - psi_j and, for a batch of positions computed against the same object
and probe, the per-pixel illumination of the batch S(r) = Σ_j |P_j|² (each P_j placed at its
window):

- ePIE (Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009)):
  O <- O + α Σ_j conj(P_j) Δψ_j / max S.
- rPIE (Maiden, Johnson & Li, Optica 4, 736 (2017)):
  O <- O + α Σ_j conj(P_j) Δψ_j / ((1 - a) S + a max S), a = ``rpie_alpha``.

For ``batch_size = 1`` (the sequential reference) S = |P_j|² and these are exactly the papers'
updates (with α = ``object_step`` = 1 for rPIE as published). For larger batches ("compact"
or parallel PIE) the numerators of all positions of a batch are summed on the canvas and
normalised per pixel by the batch's summed illumination, as in the LSQ / batched-PIE
generalisation: rPIE then tends to the averaged (error-reduction) update
Σ conj(P_j) psi'_j / S where S dominates, and ePIE stays a gradient step with a scalar,
batch-wide step max S (conservative: the overlap of many windows raises max S, so ePIE needs
more iterations with large batches than rPIE).

The probe update is symmetric, with the roles of O and P swapped: the numerator of position j is
conj(O_j) Δψ_j, translated back by -f_j (the adjoint of the probe shift) before it is summed
over the batch; the illumination is T = Σ_j |O_j|² on the N x N probe grid (the sub-pixel
shift is ignored in this denominator, a smooth weight) and the step is β = ``probe_step``.
Object and probe updates of a batch both use the estimates the batch was computed with.
The probe is first calibrated to the counts (``physics.calibrate_probe``: a file's probe is
in arbitrary units), and the probe (calibrated, refined or not) is returned with the
reconstruction, so that the data R-factor re-simulates with the probe that goes with this object.

Cost and memory: per batch B, two FFTs of (B, N, N) plus gathers and ``index_add_`` scatters on
the bounding box of the batch's windows (no Python work per pixel or per position). The
patterns are read batch by batch, so with a dataset that reads them by rows
(``load_dataset(..., by_rows=True)``, as the stages do) they are never held whole. Memory is
the canvas, the positions, one batch, and, for a fixed probe, the M translated probes (cached
up to 512 MiB, else recomputed per batch).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho import physics
from ptycho.config import Algorithm, BaselineConfig
from ptycho.data import PtychoDataset, pixel_size_of, validate
from ptycho.errors import ConfigError, DataError
from ptycho.iterative.forward import Windows, coverage_map, forward, gather_patches, translate_modes
from ptycho.iterative.weights import epie_weight, rpie_weight
from ptycho.reconstruction import Reconstruction
from ptycho.stitching import canvas_frame

_CACHE_LIMIT_BYTES = 512 * 2**20
"""With a fixed probe the M translated probes are computed once if they fit in this memory."""

STEP_WEIGHTS = {Algorithm.EPIE: epie_weight, Algorithm.RPIE: rpie_weight}
"""The step weight of each algorithm (``ptycho.iterative.weights``): all that tells them apart."""

_MODULUS_FLOOR = 1e-30
"""Where F = 0 exactly (outside the probe's band limit) it stays 0: the floor keeps A / |F|
finite (amplitudes far below 1e8) and 0 * finite = 0."""


# --------------------------------------------------------------------------------------------
# Update steps


def object_update(
    obj: torch.Tensor, windows: Windows, batch: torch.Tensor, probes: torch.Tensor, intensities: torch.Tensor,
    delta: torch.Tensor, *, weight, step: float, rpie_alpha: float,
) -> None:
    """Add the batch's object update to the canvas object (H, W) in place.

    Numerators conj(P_j) Δψ_j (summed over modes) and illuminations Σ_k |P_kj|² (``intensities``
    (B, N, N)) are summed on the bounding box of the batch's windows; ``weight`` (``STEP_WEIGHTS``)
    turns the summed illumination into the step. probes, delta: (B, K, N, N).
    """
    size = windows.size
    grid = torch.arange(size)
    r0, c0 = windows.rows0[batch.numpy()], windows.cols0[batch.numpy()]
    top, left = int(r0.min()), int(c0.min())
    box_h, box_w = int(r0.max()) - top + size, int(c0.max()) - left + size
    local = torch.from_numpy((r0 - top) * box_w + (c0 - left)).view(-1, 1) + (
        grid.view(-1, 1) * box_w + grid.view(1, -1)
    ).reshape(1, -1)
    numerator = torch.zeros(box_h * box_w, dtype=torch.complex64)
    numerator.index_add_(0, local.reshape(-1), (probes.conj() * delta).sum(dim=1).reshape(-1))
    illumination = torch.zeros(box_h * box_w, dtype=torch.float32)
    illumination.index_add_(0, local.reshape(-1), intensities.reshape(-1))
    # Outside the windows the numerator is 0 and the (finite, rpie_alpha > 0) step irrelevant.
    obj[top : top + box_h, left : left + box_w] += (weight(illumination, step, rpie_alpha) * numerator).view(box_h, box_w)


def probe_update(
    probe: torch.Tensor, patches: torch.Tensor, delta: torch.Tensor, remainder: torch.Tensor, *,
    weight, step: float, rpie_alpha: float,
) -> torch.Tensor:
    """The probe modes (K, N, N) after the batch's probe update (a new tensor).

    Numerator of position j: conj(O_j) Δψ_kj translated back by -f_j (``physics.fourier_translate_adjoint``
    of the probe shift), summed over the batch; illumination Σ_j |O_j|² on the probe grid.
    patches: (B, 1, N, N); delta: (B, K, N, N); remainder: (B, 2) the batch's sub-pixel remainders.
    """
    gradient = torch.stack(
        [physics.fourier_translate_adjoint(patches[:, 0].conj() * delta[:, k], remainder).sum(dim=0) for k in range(probe.shape[0])]
    )
    illumination = (patches.real**2 + patches.imag**2).sum(dim=(0, 1))
    return probe + weight(illumination, step, rpie_alpha) * gradient


# --------------------------------------------------------------------------------------------
# Reconstruction


def run_pie(
    data: PtychoDataset,
    settings: BaselineConfig,
    progress: bool = True,
    on_iteration: Callable[[int, torch.Tensor], bool] | None = None,
    initial: Reconstruction | None = None,
) -> tuple[Reconstruction, list[float]]:
    """Reconstruct the object of a scan by ePIE/rPIE (module docstring) from a flat object, or
    refine ``initial`` (a reconstruction of this scan on the same canvas, e.g. the network's):
    ``settings.iterations`` sweeps of a ``PieRun``.

    data: the scan (amplitudes (M, N, N), positions, probe or incoherent probe modes, optional
    detector mask; ``data.object`` is not used). Masked pixels keep the model's modulus in the
    amplitude constraint and are left out of the error.
    Returns (Reconstruction(object (H, W) complex64, origin, coverage, method="baseline-<algorithm>",
    probe = the probe used, refined when ``update_probe``: (N, N), or (K, N, N) for modes),
    errors): the object on the ``canvas_frame`` canvas, zero where no window reaches (the
    canvas keeps canvas_frame's one-pixel spill-over margin); coverage = Σ_j Σ_k |P_kj|² placed at
    each window (float32, the illumination map); errors[i] = the normalised amplitude error
    sqrt(Σ (|F| - A)² / Σ A²) of sweep i over all patterns (valid pixels), each pattern's |F|
    taken from the estimate in use when that pattern was processed *during* the sweep (no extra
    forward pass; the estimate after the last sweep is slightly better than errors[-1] says).
    ``on_iteration(sweeps_done, object)``, if given, sees the canvas object (H, W) after each
    sweep (not to be modified) and stops the run early by returning True (for benchmarks).
    ``initial``: the start is its object (pixels it does not cover: its median covered
    amplitude, zero phase) with its probe (their scales go together), else the calibrated
    probe of the data; method "refined-<algorithm>".

    Incoherent modes (Thibault & Menzel, Nature 494, 68 (2013)): |F|² = Σ_k |F_k|², every mode's
    far field is scaled by the same A / |F|, the object step uses Σ_k conj(P_k) Δψ_k over the
    illumination Σ_k |P_k|², and each mode gets its own probe step.
    """
    if not isinstance(settings, BaselineConfig):
        raise ConfigError(f"baseline: expected BaselineConfig, got {type(settings).__name__}")
    if not isinstance(settings.iterations, int):
        raise ConfigError(f"{settings.SECTION}.iterations: run_pie needs a number of sweeps, got {settings.iterations!r} "
                          "(auto is refine's stop rule: ptycho.iterative.refinement.refine_scan)")
    run = PieRun(data, settings, initial=initial)
    # disable=None: no bar when stderr is not a terminal (CI, dvc queue logs), where each refresh is a line
    sweeps = tqdm(range(settings.iterations), desc=f"baseline-{settings.algorithm.value}", disable=None if progress else True)
    for _ in sweeps:
        run.sweep()
        sweeps.set_postfix(error=f"{run.errors[-1]:.4g}")
        if on_iteration is not None and on_iteration(len(run.errors), run.obj):
            break
    return run.result(), run.errors


class PieRun:
    """One ePIE/rPIE reconstruction in progress (``run_pie`` documents the arguments): ``sweep()``
    runs one more sweep, ``errors`` holds the error of each sweep run, ``result()`` gives the
    reconstruction as it stands. ``settings.iterations`` is not read: the caller decides when to
    stop (``run_pie``: a fixed count; ``ptycho.iterative.refinement``: by the data error)."""

    def __init__(self, data: PtychoDataset, settings: BaselineConfig, *, initial: Reconstruction | None = None) -> None:
        if not isinstance(settings, BaselineConfig):
            raise ConfigError(f"baseline: expected BaselineConfig, got {type(settings).__name__}")
        validate(data, "run_pie")
        size, count = data.pattern_size, data.n_patterns
        self.origin, (height, width) = canvas_frame(data.xcoords, data.ycoords, size)
        self.windows = Windows.on_canvas(data.xcoords, data.ycoords, size, self.origin, (height, width))
        # Patterns are read batch by batch (from their file when the dataset reads them by rows) and
        # moved to the unshifted frame of physics.propagate as read.
        self.valid = None if data.mask is None else physics.uncentre(torch.from_numpy(data.mask))
        self.total_energy = float(np.sum(physics.pattern_totals(data.amplitudes)))
        if self.total_energy <= 0:
            raise DataError("run_pie: key 'diffraction': all amplitudes are zero; nothing to reconstruct")

        # The file's probe is in arbitrary units: calibrate it (all modes together) to the counts
        # (Parseval, as the network does), so that the flat start |O| = 1 is at the scale of the
        # solution and the result does not depend on the units of the file.
        unit_probe, probe_scale = physics.calibrate_probe(data.all_probe_modes, data.amplitudes)
        self.probe = torch.from_numpy(unit_probe) * probe_scale  # (K, N, N)
        self.obj = torch.ones(height, width, dtype=torch.complex64)
        if initial is not None:
            self.obj, self.probe = initial_state(initial, self.origin, (height, width), self.probe)
        self.cache = None
        if not settings.update_probe and count * self.probe.shape[0] * size * size * 8 <= _CACHE_LIMIT_BYTES:
            self.cache = translate_modes(self.probe, self.windows.remainder)  # (M, K, N, N)
            self.cache_intensity = (self.cache.real**2 + self.cache.imag**2).sum(dim=1)
        self.data, self.settings, self.started_from_initial = data, settings, initial is not None
        self.steps = dict(weight=STEP_WEIGHTS[settings.algorithm], rpie_alpha=settings.rpie_alpha)
        self.batch_size = min(settings.batch_size, count)
        self.generator = torch.Generator().manual_seed(int(settings.seed))
        self.errors: list[float] = []

    def sweep(self) -> float:
        """One sweep over all positions in a new random order; returns (and appends) its error."""
        data, settings, windows, flat, size = self.data, self.settings, self.windows, self.obj.view(-1), self.data.pattern_size
        order = torch.randperm(data.n_patterns, generator=self.generator)
        misfit = 0.0
        for start in range(0, data.n_patterns, self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.cache is not None:
                probes, intensities = self.cache.index_select(0, batch), self.cache_intensity.index_select(0, batch)
            else:
                probes = translate_modes(self.probe, windows.remainder[batch])
                intensities = (probes.real**2 + probes.imag**2).sum(dim=1)
            patches = gather_patches(flat, windows.index(batch), size)
            exit_waves, far, modulus = forward(probes, patches)
            target = physics.uncentre(torch.from_numpy(data.amplitudes[batch.numpy()]))
            if self.valid is not None:  # masked pixels keep the model's modulus (no constraint there)
                target = torch.where(self.valid, target, modulus)
            misfit += float(torch.sum((modulus - target) ** 2))
            projected = physics.modulus_projection(far, target.unsqueeze(1), modulus.unsqueeze(1), floor=_MODULUS_FLOOR)
            delta = physics.backpropagate(projected) - exit_waves
            object_update(self.obj, windows, batch, probes, intensities, delta, step=settings.object_step, **self.steps)
            if settings.update_probe:
                self.probe = probe_update(self.probe, patches, delta, windows.remainder[batch], step=settings.probe_step, **self.steps)
        self.errors.append(math.sqrt(misfit / self.total_energy))
        return self.errors[-1]

    def result(self) -> Reconstruction:
        """The reconstruction after the sweeps run so far (a copy: further sweeps do not change it)."""
        cache, probe, windows = self.cache, self.probe, self.windows
        coverage = coverage_map(windows, lambda chunk: cache[chunk] if cache is not None else translate_modes(probe, windows.remainder[chunk]), self.batch_size)
        obj = torch.where(coverage > 0, self.obj, torch.zeros_like(self.obj))
        final_probe = probe.numpy().astype(np.complex64)
        return Reconstruction(
            object=obj.numpy().astype(np.complex64),
            origin=self.origin,
            coverage=coverage.numpy().astype(np.float32),
            method=f"{'refined' if self.started_from_initial else 'baseline'}-{self.settings.algorithm.value}",
            probe=final_probe[0] if final_probe.shape[0] == 1 else final_probe,
            pixel_size_m=pixel_size_of(self.data),
        )


def initial_state(
    initial: Reconstruction, origin: tuple[int, int], shape: tuple[int, int], probe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(object (H, W), probe (K, N, N)) to start from: the reconstruction's, checked against this scan."""
    if tuple(initial.origin) != tuple(origin) or initial.object.shape != tuple(shape):
        raise DataError(
            f"refine: key 'origin': the initial reconstruction's canvas (origin {initial.origin}, shape "
            f"{initial.object.shape}) is not this scan's (origin {origin}, shape {shape}); it must come from the same scan"
        )
    covered = initial.coverage > 0
    if not covered.any():
        raise DataError("refine: key 'coverage': the initial reconstruction covers no pixel")
    fill = np.float32(np.median(np.abs(initial.object[covered])))
    obj = torch.from_numpy(np.where(covered, initial.object, fill).astype(np.complex64))
    if initial.probe is not None:
        start = torch.from_numpy(initial.probe.astype(np.complex64))
        probe = start[None] if start.ndim == 2 else start
        if probe.shape[-2:] != (shape_size := probe.shape[-1], shape_size):
            raise DataError(f"refine: key 'probe': shape {tuple(probe.shape)} is not square")
    return obj, probe
