"""What a bundle may hold: format constants, size limits, the allowed values of every field,
and the checks that writing and reading share (``ptycho.bundle`` describes the format)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ptycho.archive import parse_json
from ptycho.config import GRIDSIZES, coerce
from ptycho.data import MIN_PATTERN_SIZE
from ptycho.errors import BundleError, ConfigError
from ptycho.grouping import GROUPINGS
from ptycho.model import AMPLITUDE_ACTIVATIONS, BACKBONE_NAMES, OFFSET_INPUTS, Architecture, build_models

FORMAT = "ptycho-bundle"
FORMAT_VERSION = 4
BACKEND = "pytorch"
MODEL_NAMES = ("autoencoder", "diffraction_to_obj")

MANIFEST = "manifest.json"
WEIGHTS = "wts.h5"

# Member names that mark a PtychoPINN (TensorFlow/Keras + dill) archive. Its ModelManager writes
# manifest.dill and, per model folder, model.keras (or a SavedModel), model.h5 (metadata),
# params.dill and custom_objects.dill. Reading any of them would mean unpickling.
PICKLED_SUFFIXES = (".dill", ".pkl", ".pickle", ".keras")
FOREIGN_NAMES = ("manifest.dill", "saved_model.pb", "model.h5", "keras_metadata.pb")

# Limits on what a bundle can make the loader read or allocate. The default model's bundle is
# about 2 MB (289 k values per model); the limits leave room for models a hundred times larger
# and stop a crafted file long before memory runs out.
MAX_PARAMETERS = 2**25  # values (parameters and buffers) in one model's state_dict: 128 MiB as float32
MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 1 << 20
MAX_ARCHITECTURE_BYTES = 1 << 16
MAX_WEIGHTS_BYTES = 2 * 4 * MAX_PARAMETERS + (64 << 20)  # both model groups as float32, probe, HDF5 overhead
MAX_EXTRA_BYTES = 64 << 20  # all extra members together
MAX_BUNDLE_BYTES = MAX_MANIFEST_BYTES + MAX_WEIGHTS_BYTES + MAX_EXTRA_BYTES + (1 << 20)  # + zip overhead
@dataclass(frozen=True)
class Allowed:
    """Allowed values of a number or string read from a bundle: ``low <= value <= high``
    (``low < value`` when ``above``), a multiple of ``step``, or one of ``choices`` (strings).
    ``default``: the value of a root scalar that older bundles lack (one added after format 1)."""

    low: float = -math.inf
    high: float = math.inf
    above: bool = False
    step: int | None = None
    choices: tuple[str, ...] | None = None
    default: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {list(self.choices)}"
        if isinstance(value, str):
            return None
        if not math.isfinite(value):
            return "must be finite"
        if value < self.low or (self.above and value == self.low) or value > self.high:
            return f"must be in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        if self.step is not None and value % self.step:
            return f"must be a multiple of {self.step}"
        return None


# The allowed values of each Architecture field; its type comes from the dataclass annotation.
# A new Architecture field needs one row here, or load_bundle refuses bundles that hold it
# (tests/test_bundle.py checks that every field has a row).
ARCHITECTURE_LIMITS: dict[str, Allowed] = {
    "N": Allowed(MIN_PATTERN_SIZE, 1024, step=2),
    "gridsize": Allowed(min(GRIDSIZES), max(GRIDSIZES)),
    "n_filters_scale": Allowed(0.0, 16.0, above=True),
    "backbone": Allowed(choices=BACKBONE_NAMES),
    "window_px": Allowed(0, 1024, step=2),  # 0 = N/2; Architecture checks N/2 <= w <= N
    "amplitude_activation": Allowed(choices=AMPLITUDE_ACTIVATIONS),
    "grouping": Allowed(choices=GROUPINGS),  # format 3; older bundles: "random"
    "offset_input": Allowed(choices=OFFSET_INPUTS),  # older bundles: "encoding"
    "unrolled_sweeps": Allowed(0, 100),  # format 4; older bundles: 0 (none)
    "unrolled_hidden": Allowed(0, 256),  # format 4; older bundles: 0
}

# Numeric root attributes of wts.h5: each a finite real scalar in its range. One added in a
# later format version gets a default, so that bundles written before it still load.
ROOT_SCALARS: dict[str, Allowed] = {
    # Plausible ranges: both are ~sqrt(mean counts per pattern) (/ (N/2) for intensity_scale), so
    # 1e-6 ... 1e9 spans amplitudes in any sane unit; 1e-30 would blow the input up by 1e15.
    "intensity_scale": Allowed(1e-6, 1e9),
    "probe_scale": Allowed(1e-6, 1e9, default=1.0),  # format 1: a photon-calibrated probe
    "format_version": Allowed(1, FORMAT_VERSION),
}
# What else the root of wts.h5 may hold; anything unknown is refused rather than ignored (an
# item this version does not read may be one the model needs).
ROOT_TEXTS = ("architecture", "package_version")
ROOT_DATASETS = ("probe",)


# Format 1 fixed what later formats record: the CNN, an N/2 window, a sigmoid amplitude.
FORMAT1_ARCHITECTURE = {"backbone": "cnn", "amplitude_activation": "sigmoid", "window_px": 0}
# Formats 1 and 2 named the backbone "network".
RENAMED_BEFORE_FORMAT3 = {"network": "backbone"}



def shown(value: Any, limit: int = 80) -> str:
    """A short, printable repr of a value read from a file, for messages."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_finite(where: str, name: str, array: np.ndarray) -> None:
    if array.dtype.kind in "fc":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BundleError(f"{where}: '{name}' holds {bad} non-finite value(s) (NaN or inf)")


def parse_architecture(where: str, text: str, format_version: int = FORMAT_VERSION) -> Architecture:
    """The Architecture in the JSON text, each field checked by its type and ARCHITECTURE_LIMITS."""
    what = f"{where}: attribute architecture"
    raw = parse_json(text, what, BundleError, max_bytes=MAX_ARCHITECTURE_BYTES)
    if not isinstance(raw, dict):
        raise BundleError(f"{what} must be a JSON object, found {type(raw).__name__}")
    if format_version <= 2:
        raw = {RENAMED_BEFORE_FORMAT3.get(key, key): value for key, value in raw.items()}
    if format_version == 1:
        raw = {**FORMAT1_ARCHITECTURE, **raw}
    fields = {field.name: field for field in dataclasses.fields(Architecture)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BundleError(f"{what} has unknown field(s) {shown(unknown)}; known fields are {sorted(fields)}")
    hints = typing.get_type_hints(Architecture)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            # A field added after the bundle was written takes its default (older bundles load).
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise BundleError(f"{what} lacks the field '{name}'")
            continue
        if name not in ARCHITECTURE_LIMITS:
            raise BundleError(f"{what}: field '{name}' has no allowed values in ptycho.bundle.schema.ARCHITECTURE_LIMITS")
        values[name] = _typed(f"{what} field '{name}'", hints[name], raw[name], ARCHITECTURE_LIMITS[name])
    try:
        return Architecture(**values)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{what} {shown(values)} is not a valid Architecture ({error})") from error


def _typed(what: str, annotation: Any, value: Any, allowed: Allowed) -> Any:
    """``value`` checked against a field annotation (``config.coerce``, strict JSON types; or
    X | None) and ``allowed``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        if len(options) != 1:
            raise BundleError(f"{what}: field type {annotation} cannot be checked")
        annotation = options[0]
    try:
        value = coerce(what, annotation, value, from_yaml=False)
    except ConfigError as error:
        raise BundleError(str(error)) from None
    except TypeError:
        raise BundleError(f"{what}: field type {annotation} cannot be checked") from None
    problem = allowed.problem(value)
    if problem:
        raise BundleError(f"{what} is {shown(value)}; it {problem}")
    return value


def expected_layout(where: str, architecture: Architecture) -> dict[str, dict[str, tuple[tuple, np.dtype]]]:
    """{model: {key: (shape, dtype)}} of a model of this architecture, built on the meta device
    (shapes only, no memory), with the parameter cap applied before anything real is built."""
    size = architecture.N
    try:
        with torch.device("meta"):
            models = build_models(architecture, torch.empty((size, size), dtype=torch.complex64), 1.0)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as error:
        raise BundleError(f"{where}: cannot build the model for {architecture} ({error})") from error
    layout = {name: layout_of(model.state_dict()) for name, model in zip(MODEL_NAMES, models)}
    for name, state in layout.items():
        count = sum(math.prod(shape) for shape, _ in state.values())
        if count > MAX_PARAMETERS:
            raise BundleError(
                f"{where}: {architecture} has {count} values in model '{name}', more than the {MAX_PARAMETERS} "
                "a bundle may hold"
            )
    return layout


def layout_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple, np.dtype]]:
    return {key: (tuple(t.shape), torch.empty((), dtype=t.dtype).numpy().dtype) for key, t in state.items()}


def state_problems(expected: dict[str, tuple[tuple, np.dtype]], found: dict[str, np.ndarray]) -> list[str]:
    """Missing and unexpected keys, wrong shapes and dtypes, each named; empty when all match.

    ``expected``: {key: (shape, numpy dtype)}, see ``_layout``.
    """
    problems = [
        f"missing parameter '{key}' (expected shape {shape})" for key, (shape, _) in expected.items() if key not in found
    ]
    problems += [
        f"unexpected parameter {shown(key)} (shape {found[key].shape})" for key in sorted(set(found) - set(expected))
    ]
    for key, (want_shape, want_dtype) in expected.items():
        if key not in found:
            continue
        if found[key].shape != want_shape:
            problems.append(f"parameter '{key}' has shape {found[key].shape}, expected {want_shape}")
        elif found[key].dtype != want_dtype:
            problems.append(f"parameter '{key}' has dtype {found[key].dtype}, expected {want_dtype}")
    return problems


def check_shared(where: str, autoencoder: nn.Module, diffraction_to_obj: nn.Module, states: dict) -> None:
    """The two groups store the shared tensors twice; both copies must be identical."""
    owner = {t.data_ptr(): key for key, t in diffraction_to_obj.state_dict().items() if t.numel()}
    for key, tensor in autoencoder.state_dict().items():
        shared = owner.get(tensor.data_ptr()) if tensor.numel() else None
        if shared is None:
            continue
        a, d = states["autoencoder"][key], states["diffraction_to_obj"][shared]
        if a.tobytes() != d.tobytes():  # bytes, so NaN weights compare equal to themselves
            raise BundleError(
                f"{where}: shared parameter differs between 'autoencoder/{key}' and 'diffraction_to_obj/{shared}'"
            )
