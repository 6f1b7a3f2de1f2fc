"""Network inference on a whole scan: batched prediction, phase synchronisation, stitching.

Three passes, so that memory does not grow with the number of positions:

1. predict the groups batch by batch (patterns read from their file when the dataset reads
   them by rows), fit each patch to its own pattern (``infer.consistency_iterations``), place the patches on the canvas grid, sum their weights into the canvas
   and keep their weighted values: in memory when they fit in ``max_patch_bytes``, else in a
   scratch file (``ptycho.rowfile.ScratchRows``, in ``TMPDIR`` unless told otherwise);
2. find every patch's phase offset by angular synchronisation, reading the values window by
   window (``ptycho.synchronisation.synchronise``, windows of ``WINDOW_BOXES`` patches);
3. read the values back in windows of the same size and sum them, rotated by their phases,
   into the canvas.

Groups are processed in a spatial order (``ptycho.synchronisation.spatial_order``), so that
a window of neighbouring patches is a narrow band of the scan. Where the patches are kept
changes nothing in the result, bit for bit: the windows do not depend on it, and the sums run
in the same order.
What does grow with the scan: the canvas (12 bytes per object pixel), the group indices and
positions, and the synchronisation's eigenproblem (about 100 bytes per overlapping pair of
patches).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ptycho.bundle import Bundle
from ptycho.config import InferConfig, InferPrecision, PhaseSync
from ptycho.data import PtychoDataset
from ptycho.errors import BundleError, ConfigError, DataError
from ptycho.grouping import Groups, grouped_tensors, make_groups
from ptycho.iterative.single import fit_patterns
from ptycho.reconstruction import Reconstruction
from ptycho.rowfile import ScratchRows
from ptycho.stitching import Stitcher, canvas_frame
from ptycho import physics, synchronisation, twin

CONSISTENCY_ALPHA = 0.003
"""rPIE regularisation of `infer`'s single-pattern iterations: small, so that the step divides by
|P|**2 nearly everywhere in the window. Default data, seed 1, stitched amplitude / phase SSIM after
5 iterations: 0.894 / 0.845 at 0.003, 0.893 / 0.836 at 0.01, 0.889 / 0.815 at 0.05 (the engine's
value), 0.885 / 0.801 at 0.2."""

MAX_PATCH_BYTES = 64 << 20
"""Placed patch values kept in memory (64 MiB: 7,000 patches of 34 x 34); a scan with more keeps
them in a scratch file and reads them back one window (``synchronisation.WINDOW_BOXES`` patches) at a time."""


def n_neighbours_of(bundle: Bundle, path: str | Path) -> int:
    """The K that inference groups the test positions with: the training's K (read from the
    bundle's config snapshot) for the random grouping of gridsize > 1, else 1 (unused)."""
    if bundle.architecture.gridsize == 1 or bundle.architecture.grouping == "canonical":
        return 1
    try:
        return int(json.loads(bundle.extras["config.json"])["model"]["n_neighbours"])
    except (KeyError, ValueError, TypeError) as error:
        raise BundleError(f"{path}: member 'config.json' lacks model.n_neighbours, needed to group positions ({error})") from error


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[bool, str]:
    """(whether ``device`` computes bfloat16 natively, why): CUDA from compute capability 8 (torch's
    own query); a CPU with AMX-BF16 or AVX512-BF16 (its /proc/cpuinfo flags: torch's CPU kernels use
    them through oneDNN; without them bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"torch.cuda.is_bf16_supported() is {supported}"
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return False, f"no {cpuinfo} to read the CPU's flags"
    found = sorted(flags & {"amx_bf16", "avx512_bf16"})
    return bool(found), f"CPU flags {', '.join(found)}" if found else "the CPU has neither amx_bf16 nor avx512_bf16"


def resolve_precision(precision: InferPrecision, device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[InferPrecision, str]:
    """(fp32 or bf16, why): ``auto`` is bf16 where ``device`` has it natively (``native_bf16``), else fp32."""
    if precision is not InferPrecision.AUTO:
        return precision, f"infer.precision: {precision.value}"
    native, why = native_bf16(device, cpuinfo)
    return (InferPrecision.BF16 if native else InferPrecision.FP32), f"auto: {why}"


def resolve_device(name: str) -> torch.device:
    """The torch device of ``infer.device``; a clear error where it is absent."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"infer.device: {name} asked for, but torch sees no CUDA device (torch {torch.__version__}, "
                              f"CUDA build {torch.version.cuda or 'none'}); use infer.device: cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"infer.device: {name} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def _batches(bundle: Bundle, data: PtychoDataset, groups: Groups, order: np.ndarray, batch_size: int, bf16: bool = False,
             device: torch.device = torch.device("cpu"), seeds_only: bool = False, consistency_iterations: int = 0):
    """Yield (patches (B*C, N, N) complex64, x (B*C,), y (B*C,)) for consecutive batches of the groups ``order``.

    ``bf16``: the forward pass under bfloat16 autocast (convolutions in bf16, 8-bit mantissa: on the
    default data the amplitude moves by at most 0.7 %, the phase by 0.03 rad, far below the network's
    own error); the patches come back as complex64 either way. ``seeds_only``: keep each group's
    seed patch (channel 0) alone, the canonical grouping's one patch per pattern.
    ``consistency_iterations``: that many rPIE iterations of each patch against its own pattern
    (``iterative.single.fit_patterns``, in fp32, inside the predicted window, with the bundle's
    calibrated probe and the data's detector mask)."""
    size = bundle.architecture.N
    probe = torch.from_numpy(np.asarray(bundle.probe, dtype=np.complex64)).to(device)
    valid = None if data.mask is None else physics.uncentre(torch.from_numpy(data.mask)).to(device)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        indices = groups.indices[chosen]
        amplitudes, offsets = grouped_tensors(data.amplitudes, groups, chosen)
        amplitudes, offsets = amplitudes.to(device, memory_format=torch.channels_last), offsets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            patches = bundle.diffraction_to_obj(amplitudes, offsets)
        if seeds_only:
            patches, indices, amplitudes = patches[:, :1], indices[:, :1], amplitudes[:, :1]
        patches = patches.to(torch.complex64)
        if consistency_iterations:
            patches = fit_patterns(patches, physics.uncentre(amplitudes.float()), probe, consistency_iterations, rpie_alpha=CONSISTENCY_ALPHA,
                                   floor=1e-30, support=bundle.diffraction_to_obj.support, valid=valid)
        patches = patches.reshape(-1, size, size).cpu()
        yield (
            patches,
            torch.from_numpy(data.xcoords[indices].reshape(-1)),
            torch.from_numpy(data.ycoords[indices].reshape(-1)),
        )


class _PlacedValues:
    """The weighted values (P, h, w) complex64 of placed patches: in memory, or in a scratch file."""

    def __init__(self, count: int, box: tuple[int, int], in_memory: bool, folder: str | os.PathLike[str] | None):
        self.box = box
        self.memory = np.empty((count, *box), dtype=np.complex64) if in_memory else None
        self.scratch = None if in_memory else ScratchRows(box, np.complex64, folder=folder)
        self.count = 0

    def append(self, values: torch.Tensor) -> None:
        if self.memory is not None:
            self.memory[self.count : self.count + len(values)] = values.numpy()
        else:
            self.scratch.append(values.numpy())
        self.count += len(values)

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.memory is not None:
            return torch.from_numpy(self.memory[start:stop])
        return torch.from_numpy(self.scratch.rows().read(start, stop))

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.close()


def reconstruct(
    bundle: Bundle, data: PtychoDataset, config: InferConfig, bundle_path: str | Path, *,
    max_patch_bytes: int | None = None, scratch_folder: str | os.PathLike[str] | None = None,
    diagnostics: dict | None = None,
) -> Reconstruction:
    """Predict object patches for every group of the scan and stitch them into one object.

    - Each predicted pixel counts with the probe intensity that lit it (as in ePIE's object
      update): a patch's dimly lit border is poorly determined by its one pattern. Measured on
      the default data: amplitude SSIM 0.30 with uniform weights, 0.69 with |P|**2 weights.
    - ``config.consistency_iterations``: each predicted patch is first fitted to its own pattern by
      that many rPIE iterations (``ptycho.iterative.single``; measured data used at inference, no
      overlap). On the default data, seed 1: amplitude / phase SSIM 0.847 / 0.800 -> 0.894 / 0.845
      with 5 (0.900 / 0.851 with 30), R-factor 0.120 -> 0.098.
    - A diffraction pattern does not determine the constant phase of its patch, so patches
      come with arbitrary phase offsets; with ``config.phase_sync`` "angular" they are found
      all at once by angular synchronisation (``ptycho.synchronisation``) before stitching.
    - For gridsize > 1 with the random grouping each position appears in several groups; all
      predictions are averaged. With the canonical grouping every pattern is the seed of its own
      group and only the seed's patch (merged with its group, the overlap constraint) is kept.
    - ``config.twin_consensus``: each patch is offered its twin (``ptycho.twin.choose_twins``) before
      phase synchronisation; this keeps the placed patches and their twins in memory.
    - ``diagnostics``, given a dict, receives ``twin.consensus`` (``ptycho.twin.neighbour_consensus``
      of the placed patches, NaN when they were kept in a scratch file) and ``twin.switched`` (the
      share of patches replaced by their twin).
    - Memory (module docstring): placed patches beyond ``max_patch_bytes`` (default
      ``MAX_PATCH_BYTES``) go to a scratch file
      in ``scratch_folder`` (default: ``TMPDIR``), read back a window at a time. The result is
      the same, bit for bit.
    """
    size = bundle.architecture.N
    if data.pattern_size != size:
        raise DataError(f"test data: key 'diffraction': patterns are {data.pattern_size} px, the model in {bundle_path} expects {size} px")
    gridsize = bundle.architecture.gridsize
    grouping = bundle.architecture.grouping
    seeds_only = grouping == "canonical" and gridsize > 1
    n_neighbours = n_neighbours_of(bundle, bundle_path)
    groups = make_groups(data.xcoords, data.ycoords, gridsize, n_neighbours, np.random.default_rng(config.seed), grouping)
    order = synchronisation.spatial_order(groups.centres_xy)
    origin, shape = canvas_frame(data.xcoords, data.ycoords, size)
    illumination = torch.from_numpy(np.abs(bundle.probe).astype(np.float32)) ** 2
    stitcher = Stitcher(origin, shape, bundle.diffraction_to_obj.support * illumination / illumination.max())
    count = groups.n_groups * (1 if seeds_only else bundle.architecture.channels)
    patch_bytes = math.prod(stitcher.box) * np.dtype(np.complex64).itemsize
    max_patch_bytes = MAX_PATCH_BYTES if max_patch_bytes is None else max_patch_bytes
    in_memory = count * patch_bytes <= max_patch_bytes or config.twin_consensus
    values = _PlacedValues(count, stitcher.box, in_memory=in_memory, folder=scratch_folder)
    twin_values = _PlacedValues(count, stitcher.box, in_memory=True, folder=None) if config.twin_consensus else None
    probe = torch.from_numpy(np.asarray(bundle.probe, dtype=np.complex64))
    corners = np.empty((count, 2), dtype=np.int64)
    device = resolve_device(config.device)
    precision, _ = resolve_precision(config.precision, device)
    # Channels-last (NHWC): oneDNN's fast path for convolutions and max-pooling on the CPU. Measured
    # at N = 28, one thread, batches of 64: 350 us per pattern NCHW fp32, 248 NCHW bf16, 239 NHWC fp32,
    # 95 NHWC bf16 (NCHW max-pooling alone cost as much as the convolutions).
    network = bundle.diffraction_to_obj.to(device=device, memory_format=torch.channels_last).eval()
    try:
        with torch.inference_mode():
            batches = _batches(bundle, data, groups, order, config.batch_size, precision is InferPrecision.BF16, device, seeds_only,
                               config.consistency_iterations)
            for patches, xcoords, ycoords in batches:
                placed = stitcher.place(patches, xcoords, ycoords)
                corners[values.count : values.count + len(placed.corners)] = placed.corners
                stitcher.add_weights(placed)
                values.append(placed.values)
                if twin_values is not None:
                    twin_values.append(stitcher.place(twin.twin_of(patches, probe), xcoords, ycoords).values)
            switched = 0.0
            if twin_values is not None:
                chosen = twin.choose_twins(torch.from_numpy(values.memory), torch.from_numpy(twin_values.memory), corners)
                values.memory[chosen] = twin_values.memory[chosen]
                switched = float(chosen.mean()) if count else 0.0
            if diagnostics is not None:
                consensus = twin.neighbour_consensus(torch.from_numpy(values.memory), corners, stitcher.support.numpy()) if values.memory is not None else float("nan")
                diagnostics.update({"twin.consensus": consensus, "twin.switched": switched})
            phases = None
            if config.phase_sync is PhaseSync.ANGULAR:
                phases = torch.from_numpy(synchronisation.synchronise(values.read, corners, stitcher.box, weights=stitcher.support.numpy())).to(torch.float32)
            window = synchronisation.WINDOW_BOXES
            for start in range(0, count, window):
                stop = min(start + window, count)
                stitcher.add_values(values.read(start, stop), corners[start:stop], None if phases is None else phases[start:stop])
    finally:
        values.close()
        network.to(device="cpu", memory_format=torch.contiguous_format)
        if twin_values is not None:
            twin_values.close()
    obj, coverage = stitcher.result()
    return Reconstruction(obj, origin, coverage, method="pinn", probe=bundle.probe)
