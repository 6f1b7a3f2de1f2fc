"""Typed configuration: one frozen dataclass per `params.yaml` section.

Every section class checks itself on construction, however it is built (``params.yaml`` through
``section_from_mapping``, ``PrepareConfig(N=32)`` in Python, ``dataclasses.replace``): each value
is checked against its field annotation and converted (an int or a numeric string for a float, a
string for an enum), non-finite numbers are refused, then the class checks its own value ranges.
``section_from_mapping`` adds the check for unknown keys. The defaults here are the values of the
repository's ``params.yaml`` (a test keeps the two equal). Configuration objects hold scalars and
paths only; arrays travel in ``ptycho.data.PtychoDataset``. Nothing here is global: callers pass
the objects they need.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import numpy as np
import yaml

from ptycho.data import MIN_PATTERN_SIZE
from ptycho.errors import ConfigError


class Source(str, enum.Enum):
    SIMULATE = "simulate"
    NPZ = "npz"  # canonical or PtychoPINN-style NPZ (also ptychodus's PtychoPINN export)
    CXI = "cxi"  # CXI (HDF5) file
    PTYCHODUS = "ptychodus"  # ptychodus product (.h5 / .npz) with its diffraction.h5, or their folder
    TIKE = "tike"  # tike scan NPZ (data, scan, probe)
    AUTO = "auto"  # detect the format of train_file from its content (the detection is recorded)


class DiffractionQuantity(str, enum.Enum):
    AUTO = "auto"  # what the file or its format states; undeclared count-like data are refused
    AMPLITUDE = "amplitude"
    INTENSITY = "intensity"


class PatternOrder(str, enum.Enum):
    AUTO = "auto"  # (M, N, N), or (N, N, M) when unambiguous; an (N, N, N) cube is refused
    MNN = "MNN"
    NNM = "NNM"


class ZeroFrequency(str, enum.Enum):
    AUTO = "auto"  # where the format puts it (tike: corners; others: centre), then checked
    CENTRE = "centre"
    CORNERS = "corners"  # the file is not fftshifted: shift it once at ingestion


class CxiTranslation(str, enum.Enum):
    PROBE = "probe"  # translation = probe position on the sample (ptychodus writes this)
    SAMPLE = "sample"  # translation = sample motion = minus the probe position


class ProbeScale(str, enum.Enum):
    FILE = "file"  # keep the file's probe as it is
    COUNTS = "counts"  # scale it so that sum |P|^2 = mean counts per pattern (recorded)


class InputChecks(str, enum.Enum):
    ERROR = "error"  # a failed input check stops prepare (the message says how to fix it)
    WARN = "warn"  # a failed input check is reported and recorded, and prepare goes on


class ObjectKind(str, enum.Enum):
    GRF = "grf"
    LINES = "lines"


class ProbeKind(str, enum.Enum):
    APERTURE = "aperture"
    GAUSSIAN = "gaussian"


class ScanKind(str, enum.Enum):
    GRID = "grid"
    RANDOM = "random"
    SPIRAL = "spiral"


class PhaseSync(str, enum.Enum):
    ANGULAR = "angular"  # angular synchronisation of all patches at once (ptycho.synchronisation)
    NONE = "none"


class InferPrecision(str, enum.Enum):
    AUTO = "auto"  # bf16 where the CPU (or GPU) computes it natively, else fp32 (``ptycho.inference.resolve_precision``)
    FP32 = "fp32"  # the network in float32 (reproducible to the bit on one machine)
    BF16 = "bf16"  # bfloat16 autocast: about 2x faster on CPUs with native bf16 (AVX512-BF16, AMX), much slower without


class LossKind(str, enum.Enum):
    POISSON = "poisson"
    MAE = "mae"


class Schedule(str, enum.Enum):
    """Learning-rate schedule of training (``ptycho.training``)."""

    PLATEAU = "plateau"  # constant, multiplied by lr_factor after lr_patience epochs without a better val loss
    COSINE = "cosine"  # cosine decay, per batch, from learning_rate to 0 over `epochs`
    ONECYCLE = "onecycle"  # rise to learning_rate over warmup_fraction of the batches, then cosine decay


class Algorithm(str, enum.Enum):
    EPIE = "epie"
    RPIE = "rpie"


class RefineEngine(str, enum.Enum):
    """What ``refine`` runs from its start."""

    LEARNED = "learned"  # the bundle's learned sweeps (ptycho.nn.unrolled; model.unrolled_sweeps > 0)
    SWEEPS = "sweeps"  # plain sweeps of the iterative engine (refine.algorithm)


class RefineStart(str, enum.Enum):
    """Where ``refine`` starts the iterative engine (``ptycho.iterative.refinement``)."""

    AUTO = "auto"  # trial sweeps from both starts; the one with the lower data error goes on (recorded)
    NETWORK = "network"  # the network's object and calibrated probe
    FLAT = "flat"  # a flat object |O| = 1 with the data's calibrated probe, as `baseline`


AUTO = "auto"
"""The one string value of ``prepare.detector_crop_px`` and ``refine.iterations`` (integers otherwise)."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def as_enum(kind: type[enum.Enum], value: Any, key: str) -> Any:
    """``value`` as a member of ``kind``: a member, or the string of one; anything else is refused."""
    allowed = [member.value for member in kind]
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in allowed:
        return kind(value)
    raise ConfigError(f"{key}: allowed values are {allowed}; got {value!r}")


class Section:
    """Base of the section classes: the one validation path, run by ``__post_init__`` on every
    construction. Subclasses name their ``params.yaml`` section and check their value ranges."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        hints = _field_types(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = coerce(f"{self.SECTION}.{field.name}", hints[field.name], getattr(self, field.name))
            object.__setattr__(self, field.name, value)  # frozen: the converted value replaces the given one
        self.check()

    def check(self) -> None:
        """Value ranges and rules between fields; types are already checked."""


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class PrepareConfig(Section):
    """`prepare:` section: where the train/test data come from."""

    SECTION: ClassVar[str] = "prepare"

    source: Source = Source.SIMULATE
    train_file: str = ""  # file sources: the training scan (a file under data/raw/ in the pipeline)
    test_file: str = ""  # file sources, optional: separate test scan; empty = split train_file
    test_fraction: float = 0.25  # single file: share of positions (largest x) held out for test
    N: int = 64  # pattern size in pixels (even); file sources: must equal the size after crop/bin
    diffraction_quantity: DiffractionQuantity = DiffractionQuantity.AUTO
    pattern_order: PatternOrder = PatternOrder.AUTO
    zero_frequency: ZeroFrequency = ZeroFrequency.AUTO
    cxi_translation: CxiTranslation = CxiTranslation.PROBE
    detector_crop_px: int | str | None = "auto"  # centred crop of the patterns to this size, px; "auto": the smallest keeping detector_crop_share (none when binning); 0 or null: none
    detector_crop_share: float = 0.99999  # detector_crop_px: auto keeps this share of the mean pattern's counts
    detector_bin: int = 1  # b x b binning of the (cropped) detector (1 = none)
    probe_scale: ProbeScale = ProbeScale.FILE
    probe_refinement_sweeps: int = 0  # rPIE sweeps with probe update on the training scan; its probe replaces the file's (0 = keep)
    input_checks: InputChecks = InputChecks.ERROR
    object_kind: ObjectKind = ObjectKind.GRF
    train_object_px: int = 256  # side of the square training object, pixels
    test_object_px: int = 160  # side of the (different) test object, pixels
    amplitude_min: float = 0.4  # object transmission amplitude range
    amplitude_max: float = 1.0
    phase_max_rad: float = 1.5  # object phase spans [-phase_max_rad, +phase_max_rad] at most
    feature_px: float = 6.0  # correlation length (grf) or line width scale (lines), pixels
    probe_kind: ProbeKind = ProbeKind.APERTURE
    probe_diameter_px: float = 16.0  # central lobe: first-zero diameter (aperture) or FWHM (gaussian)
    scan_kind: ScanKind = ScanKind.GRID
    step_px: float = 8.0  # scan step, pixels (sets the overlap)
    jitter_px: float = 0.5  # grid scan: uniform random displacement of each point, pixels
    nphotons: float = 1.0e6  # mean total photon count per pattern
    noise: bool = True  # Poisson noise on the counts
    seed: int = 7

    def check(self) -> None:
        _require(
            self.N >= MIN_PATTERN_SIZE and self.N % 2 == 0, "prepare.N",
            f"must be an even number >= {MIN_PATTERN_SIZE}, got {self.N}",
        )
        _require(0.0 < self.test_fraction < 1.0, "prepare.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        if self.source is not Source.SIMULATE:
            _require(bool(self.train_file), "prepare.train_file", f"is required when source is '{self.source.value}'")
        _require(self.detector_crop_px in (0, AUTO) or (self.detector_crop_px >= MIN_PATTERN_SIZE and self.detector_crop_px % 2 == 0),
                 "prepare.detector_crop_px", f"must be auto, 0 or null (no crop), or an even number >= {MIN_PATTERN_SIZE}, got {self.detector_crop_px}")
        _require(0.5 <= self.detector_crop_share <= 1.0, "prepare.detector_crop_share", f"must be in [0.5, 1], got {self.detector_crop_share}")
        _require(self.detector_bin >= 1, "prepare.detector_bin", f"must be >= 1, got {self.detector_bin}")
        _require(0 <= self.probe_refinement_sweeps <= 10_000, "prepare.probe_refinement_sweeps",
                 f"must be in [0, 10000] (0 = keep the file's probe), got {self.probe_refinement_sweeps}")
        if self.source is not Source.SIMULATE:
            return  # the simulation's settings do not apply to a file (and must not block one)
        for key, size in (("train_object_px", self.train_object_px), ("test_object_px", self.test_object_px)):
            _require(size >= self.N + 2, f"prepare.{key}", f"must exceed N + 2 = {self.N + 2}, got {size}")
        _require(
            0.0 < self.amplitude_min <= self.amplitude_max <= 1.0,
            "prepare.amplitude_min/amplitude_max",
            f"need 0 < amplitude_min <= amplitude_max <= 1, got {self.amplitude_min}, {self.amplitude_max}",
        )
        _require(0.0 <= self.phase_max_rad <= 3.14159, "prepare.phase_max_rad", f"must be in [0, pi], got {self.phase_max_rad}")
        _require(self.feature_px > 0, "prepare.feature_px", f"must be > 0, got {self.feature_px}")
        _require(0 < self.probe_diameter_px < self.N, "prepare.probe_diameter_px", f"must be in (0, N={self.N}), got {self.probe_diameter_px}")
        _require(self.step_px > 0, "prepare.step_px", f"must be > 0, got {self.step_px}")
        _require(self.jitter_px >= 0, "prepare.jitter_px", f"must be >= 0, got {self.jitter_px}")
        _require(self.nphotons > 0, "prepare.nphotons", f"must be > 0, got {self.nphotons}")


GRIDSIZES = (1, 2, 3)
"""The allowed gridsizes (C = gridsize**2 patterns per group), for params, Architecture and bundles."""
RANDOM_GRIDSIZES = (1, 2)
"""The gridsizes of the random grouping (3 x 3 needs the canonical template)."""


@dataclass(frozen=True)
class ModelConfig(Section):
    """`model:` section: the network and how scan positions are grouped."""

    SECTION: ClassVar[str] = "model"
    RENAMED: ClassVar[dict[str, str]] = {"architecture": "backbone"}  # old params key -> field
    gridsize: int = 1  # C = gridsize**2 patterns per group (one of GRIDSIZES; 3 only with the canonical grouping)
    n_neighbours: int = 7  # random grouping: K nearest neighbours a group is drawn from (K >= C)
    grouping: str = "random"  # random | canonical (ptycho.grouping: fixed template, offsets seen by the network)
    offset_input: str = "encoding"  # canonical groups: encoding | planes (ptycho.model.Architecture.offset_input)
    n_filters_scale: float = 0.5  # multiplies the encoder/decoder widths (1.0 = 32, 64, 128, ...)
    backbone: str = "cnn"  # the network family, one of ptycho.nn.NAMES (params key before format 3 of the bundle: architecture)
    window_share: float = 0.999  # predicted window: smallest centred square with this share of |P|^2 (0.99 cut the default probe: README "Predicted window")
    unrolled_sweeps: int = 15  # K learned rPIE sweeps trained after the network (ptycho.nn.unrolled, refine.engine: learned); 0 = none
    unrolled_hidden: int = 0  # channels of a residual CNN on the canvas after each learned sweep; 0 = learned steps and momenta only

    def check(self) -> None:
        from ptycho.nn import NAMES

        _require(self.backbone in NAMES, "model.backbone", f"allowed values are {list(NAMES)}; got {self.backbone!r}")
        _require(0.5 <= self.window_share <= 1.0, "model.window_share", f"must be in [0.5, 1], got {self.window_share}")
        from ptycho.grouping import GROUPINGS

        _require(self.grouping in GROUPINGS, "model.grouping", f"allowed values are {list(GROUPINGS)}; got {self.grouping!r}")
        from ptycho.model import OFFSET_INPUTS

        _require(self.offset_input in OFFSET_INPUTS, "model.offset_input", f"allowed values are {list(OFFSET_INPUTS)}; got {self.offset_input!r}")
        _require(self.offset_input == "encoding" or self.backbone == "cnn", "model.offset_input",
                 f"planes need backbone cnn (the {self.backbone} backbone takes the C patterns only)")
        sizes = GRIDSIZES if self.grouping == "canonical" else RANDOM_GRIDSIZES
        _require(self.gridsize in sizes, "model.gridsize", f"allowed values with grouping {self.grouping} are {', '.join(map(str, sizes))}; got {self.gridsize}")
        channels = self.gridsize**2
        if self.grouping == "random":  # the canonical grouping does not use it
            _require(self.n_neighbours >= channels, "model.n_neighbours", f"must be >= gridsize**2 = {channels}, got {self.n_neighbours}")
        _require(self.n_filters_scale > 0, "model.n_filters_scale", f"must be > 0, got {self.n_filters_scale}")
        _require(0 <= self.unrolled_sweeps <= 100, "model.unrolled_sweeps", f"must be in [0, 100] (0 = none), got {self.unrolled_sweeps}")
        _require(0 <= self.unrolled_hidden <= 256, "model.unrolled_hidden", f"must be in [0, 256] (0 = no CNN), got {self.unrolled_hidden}")


@dataclass(frozen=True)
class TrainConfig(Section):
    """`train:` section: optimisation, schedule, stopping and the Lightning trainer."""

    SECTION: ClassVar[str] = "train"
    epochs: int = 30  # most epochs; early stopping or max_wall_s may end the run sooner
    batch_size: int = 16
    learning_rate: float = 1.0e-3  # Adam; the peak of the cosine / onecycle schedules
    loss: LossKind = LossKind.POISSON
    val_fraction: float = 0.1  # share of training groups held out for validation
    schedule: Schedule = Schedule.ONECYCLE  # measured best of the three on the default data (README "Schedules compared")
    warmup_fraction: float = 0.3  # onecycle: share of the batches spent raising the LR (its warm phase)
    lr_patience: int = 3  # plateau: epochs without val improvement before the learning rate drops
    lr_factor: float = 0.5  # plateau: factor applied to the learning rate
    early_stopping_patience: int = 8  # epochs without a better val loss, counted after the warm phase
    max_wall_s: float = 0.0  # wall-time budget for the epochs, s; 0 = none (a budget breaks byte-reproducibility)
    seed: int = 1
    accelerator: str = "cpu"  # Lightning accelerator: cpu, gpu, auto, ...
    devices: str = "1"  # Lightning devices: a count, a list such as "0,1", or "auto"
    strategy: str = "auto"  # Lightning strategy, e.g. ddp for several GPUs
    precision: str = "32-true"  # Lightning precision, e.g. bf16-mixed on GPUs
    num_threads: int = 2  # torch CPU threads (fixed so that CPU runs are reproducible)
    unrolled_steps: int = 200  # model.unrolled_sweeps > 0: training steps of the learned sweeps (after the network's epochs)
    unrolled_learning_rate: float = 2.0e-3  # Adam's rate for their CNNs (their steps and momenta: ptycho.nn.unrolled.SCALAR_LEARNING_RATE)

    def check(self) -> None:
        _require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.unrolled_steps >= 1, "train.unrolled_steps", f"must be >= 1, got {self.unrolled_steps}")
        _require(self.unrolled_learning_rate > 0, "train.unrolled_learning_rate", f"must be > 0, got {self.unrolled_learning_rate}")
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(0.0 < self.val_fraction < 0.5, "train.val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        _require(0.0 < self.warmup_fraction < 1.0, "train.warmup_fraction", f"must be in (0, 1), got {self.warmup_fraction}")
        _require(self.lr_patience >= 0, "train.lr_patience", f"must be >= 0, got {self.lr_patience}")
        _require(0.0 < self.lr_factor < 1.0, "train.lr_factor", f"must be in (0, 1), got {self.lr_factor}")
        _require(self.early_stopping_patience >= 1, "train.early_stopping_patience", f"must be >= 1, got {self.early_stopping_patience}")
        _require(self.max_wall_s >= 0, "train.max_wall_s", f"must be >= 0 (0 = no limit), got {self.max_wall_s}")
        _require(self.num_threads >= 1, "train.num_threads", f"must be >= 1, got {self.num_threads}")
        devices_ok = self.devices == "auto" or all(part.strip().isdigit() for part in self.devices.split(","))
        _require(devices_ok, "train.devices", f"must be a count, a list such as '0,1', or 'auto'; got {self.devices!r}")
        choices = lightning_choices()
        for key in ("accelerator", "strategy", "precision"):
            value = getattr(self, key)
            _require(value in choices[key], f"train.{key}", f"allowed values are {list(choices[key])} (Lightning's); got {value!r}")


@cache
def lightning_choices() -> dict[str, tuple[str, ...]]:
    """The accelerator, strategy and precision names the installed Lightning accepts.

    Read from Lightning's registries (imported here, on first use, so that the sections of the
    other stages do not pay for importing Lightning). Precision: the spellings of the Trainer's
    ``precision`` argument.
    """
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    return {
        "accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        "strategy": ("auto", *sorted(StrategyRegistry.available_strategies())),
        "precision": (*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)),
    }


@dataclass(frozen=True)
class InferConfig(Section):
    """`infer:` section."""

    SECTION: ClassVar[str] = "infer"
    batch_size: int = 64  # groups per forward pass
    seed: int = 1  # grouping of the test positions (gridsize > 1)
    phase_sync: PhaseSync = PhaseSync.ANGULAR  # how the free phase offset of each patch is removed
    precision: InferPrecision = InferPrecision.AUTO  # arithmetic of the network's forward pass
    device: str = "cpu"  # where the network runs: cpu, cuda, cuda:1 ... (stitching and synchronisation stay on the CPU)
    twin_consensus: bool = False  # replace each patch by its twin where that agrees better with its neighbours (ptycho.twin)
    adapt_epochs: int = 0  # > 0: fine-tune the network on the test scan's own patterns first (ptycho.adaptation)
    adapt_learning_rate: float = 1e-4  # peak learning rate of that fine-tuning
    consistency_iterations: int = 5  # rPIE iterations of each predicted patch against its own pattern (ptycho.iterative.single); 0 = none

    def check(self) -> None:
        _require(self.batch_size >= 1, "infer.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.consistency_iterations >= 0, "infer.consistency_iterations", f"must be >= 0 (0 = the network's patches as they are), got {self.consistency_iterations}")
        _require(self.adapt_epochs >= 0, "infer.adapt_epochs", f"must be >= 0 (0 = no adaptation), got {self.adapt_epochs}")
        _require(math.isfinite(self.adapt_learning_rate) and self.adapt_learning_rate > 0, "infer.adapt_learning_rate",
                 f"must be a finite number > 0, got {self.adapt_learning_rate}")
        _require(self.device == "cpu" or self.device == "cuda" or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
                 "infer.device", f"must be cpu, cuda or cuda:<index>, got {self.device!r}")


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """`evaluate:` section: how reconstruction and truth are aligned before they are compared."""

    SECTION: ClassVar[str] = "evaluate"
    # Scanned region: coverage >= this share of the 90th percentile of the covered pixels'
    # coverage (ptycho.metrics.scanned_region: a percentile, not the maximum, so that a peak
    # where scan points crowd does not shrink the region).
    coverage_fraction: float = 0.5
    margin_px: int = 4  # erode the scanned region by this many pixels
    remove_phase_ramp: bool = False  # fit and remove a linear phase ramp (besides the offset)
    register: bool = False  # sub-pixel registration of the reconstruction onto the truth

    def check(self) -> None:
        _require(0.0 < self.coverage_fraction <= 1.0, "evaluate.coverage_fraction", f"must be in (0, 1], got {self.coverage_fraction}")
        _require(self.margin_px >= 0, "evaluate.margin_px", f"must be >= 0, got {self.margin_px}")


@dataclass(frozen=True)
class CheckConfig(Section):
    """`check:` section: thresholds `ptycho check` applies to metrics.json after a run."""

    SECTION: ClassVar[str] = "check"
    min_amplitude_ssim: float = 0.0
    min_phase_ssim: float = 0.0
    min_amplitude_pearson: float = 0.0  # catches a flat (collapsed) output
    max_r_factor: float = 1.0  # data consistency on the test scan

    def check(self) -> None:
        for key in ("min_amplitude_ssim", "min_phase_ssim", "min_amplitude_pearson"):
            value = getattr(self, key)
            _require(-1.0 <= value <= 1.0, f"check.{key}", f"must be in [-1, 1], got {value}")
        _require(self.max_r_factor > 0, "check.max_r_factor", f"must be > 0, got {self.max_r_factor}")


@dataclass(frozen=True)
class BaselineConfig(Section):
    """`baseline:` section, the settings of ``ptycho.iterative.pie.run_pie``; checked on construction.

    algorithm: "epie" or "rpie" (see the module docstring for the updates).
    iterations: sweeps over all positions (>= 1).
    batch_size: positions computed against the same estimate before it is updated; 1 is the
        sequential reference, larger is the compact/parallel variant (faster per sweep).
    object_step: α, object step (dimensionless, > 0; 1 is the published ePIE/rPIE step).
    probe_step: β, probe step (dimensionless, > 0).
    update_probe: refine the probe too (default: the data's probe is known and kept).
    rpie_alpha: a in (0, 1], rPIE's mix of |P|² and max|P|² in the denominator (paper: 0.05 to 0.25).
    seed: seed of the random order of the positions (a new permutation each sweep).
    """

    SECTION: ClassVar[str] = "baseline"
    algorithm: Algorithm = Algorithm.RPIE
    iterations: int = 30
    batch_size: int = 64
    object_step: float = 1.0
    probe_step: float = 1.0
    update_probe: bool = False
    rpie_alpha: float = 0.05
    seed: int = 1

    def check(self) -> None:
        where = self.SECTION
        self.check_iterations()
        _require(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        for key in ("object_step", "probe_step"):
            value = getattr(self, key)
            _require(value > 0, f"{where}.{key}", f"must be a finite number > 0, got {value!r}")
        _require(0.0 < self.rpie_alpha <= 1.0, f"{where}.rpie_alpha", f"must be in (0, 1], got {self.rpie_alpha!r}")

    def check_iterations(self) -> None:
        _require(self.iterations >= 1, f"{self.SECTION}.iterations", f"must be >= 1, got {self.iterations}")


@dataclass(frozen=True)
class RefineConfig(BaselineConfig):
    """`refine:` section: the iterative engine of ``baseline`` run for a few sweeps from the
    network's reconstruction (object and calibrated probe) instead of a flat object."""

    SECTION: ClassVar[str] = "refine"
    iterations: int | str = AUTO  # sweeps (>= 1), or auto: learned: all K; sweeps: until a sweep lowers the data error by less than `tolerance`
    engine: RefineEngine = RefineEngine.LEARNED  # learned: the bundle's K learned sweeps (iterations: auto = K, or the first n <= K); sweeps: plain ones
    start: RefineStart = RefineStart.AUTO
    trial_sweeps: int = 5  # engine sweeps, start auto: sweeps run from each start before the data errors are compared (they count; 2 chose wrongly, README "Time to quality")
    tolerance: float = 0.01  # iterations: auto: stop when a sweep lowers the data error by less than this share (0 < t < 1)
    max_iterations: int = 30  # iterations: auto: at most this many sweeps

    def check(self) -> None:
        super().check()
        where = self.SECTION
        _require(self.trial_sweeps >= 1, f"{where}.trial_sweeps", f"must be >= 1, got {self.trial_sweeps}")
        _require(0.0 < self.tolerance < 1.0, f"{where}.tolerance",
                 f"must be in (0, 1), the share by which a sweep must lower the data error to go on; got {self.tolerance!r}")
        _require(self.max_iterations >= 1, f"{where}.max_iterations", f"must be >= 1, got {self.max_iterations}")

    def check_iterations(self) -> None:
        if self.iterations != AUTO:
            _require(self.iterations >= 1, f"{self.SECTION}.iterations", f"must be >= 1 or auto, got {self.iterations}")


SectionT = TypeVar("SectionT", bound=Section)


def coerce(where: str, annotation: Any, value: Any, *, from_yaml: bool = True) -> Any:
    """Check one value against its field annotation and convert it; ``where`` names it in errors.

    Enums take their members or the strings of their members; floats take ints and must be
    finite; ints take integers only (not bools, not 64.0); bools take true/false only. With
    ``from_yaml`` (params.yaml), also YAML's readings: numeric strings as floats (YAML 1.1 reads
    "1e6" as a string) and integers as strings; without (JSON that ptycho wrote, e.g. a
    bundle's architecture), neither.
    """
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return as_enum(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return bool(value)
    if annotation is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str) and from_yaml:
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a double
            raise ConfigError(f"{where}: {value!r} is too large") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return number
    if annotation == (int | str | None):  # prepare.detector_crop_px: auto, a number of pixels, or null (= 0)
        if value is None:
            return 0
        if isinstance(value, str) and value == AUTO:
            return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{where}: expected auto, an integer or null, got {value!r}")
        return int(value)
    if annotation == (int | str):  # refine.iterations: a number of sweeps or auto
        if isinstance(value, str) and value == AUTO:
            return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{where}: expected auto or an integer, got {value!r}")
        return int(value)
    if annotation is str:
        if isinstance(value, bool) or not isinstance(value, (str, int) if from_yaml else str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported field type {annotation!r} for {where}")


def section_from_mapping(cls: type[SectionT], section: str, mapping: Mapping[str, Any] | None) -> SectionT:
    """Build the configuration object of one section from its mapping (checked on construction)."""
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {type(mapping).__name__}")
    allowed = [field.name for field in dataclasses.fields(cls)]
    for old, new in getattr(cls, "RENAMED", {}).items():  # keys of earlier versions, still read
        if old in mapping:
            if new in mapping:
                raise ConfigError(f"{section}.{old}: the old name of {section}.{new}; give one of them, not both")
            mapping = {(new if key == old else key): value for key, value in mapping.items()}
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key; allowed keys are {allowed}")
    return cls(**mapping)


SECTIONS: dict[str, type] = {
    "prepare": PrepareConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "infer": InferConfig,
    "evaluate": EvaluateConfig,
    "check": CheckConfig,
    "baseline": BaselineConfig,
    "refine": RefineConfig,
}


def read_params(path: str | Path) -> dict[str, Any]:
    """Read params.yaml into a plain mapping, with a clear error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def load_section(path: str | Path, section: str) -> Any:
    """The checked configuration object of one section of a params file."""
    if section not in SECTIONS:
        raise ConfigError(f"{section}: unknown section; known sections are {sorted(SECTIONS)}")
    return section_from_mapping(SECTIONS[section], section, read_params(path).get(section))
