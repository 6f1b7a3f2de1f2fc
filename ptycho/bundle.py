"""The model bundle ``wts.h5.zip`` (DESIGN.md §4): the train stage's output, all that infer needs.

Layout of the zip, members in this order:

- ``manifest.json``: ``format`` ("ptycho-bundle"), ``format_version``, ``backend`` ("pytorch"),
  ``models`` (["autoencoder", "diffraction_to_obj"]), ``package_version`` and ``members``
  ({name: sha256 hex} of every other member).
- ``wts.h5``: HDF5. One group per model, one dataset per ``state_dict()`` entry named by its
  key (dots kept, no subgroups); root attributes ``architecture`` (JSON of
  ``Architecture.to_dict()``), ``intensity_scale``, ``probe_scale`` (the trained s_p of
  ``ptycho.model``, also stored as the autoencoder's ``log_probe_scale``), ``package_version``,
  ``format_version``; root dataset ``probe`` (N, N) complex64, the training file's probe at unit
  power (sum |P|**2 = 1).

Format history: 1 had a photon-calibrated probe, no probe scale, the CNN's keys at the top of
the network (``encoder.*``), a sigmoid amplitude and an N/2 window; such bundles still load
(``_upgrade_format1``) and predict exactly as before.
- extras (e.g. ``history.csv``, ``config.json``), stored byte for byte, sorted by name.

Nothing is pickled: loading reads JSON and HDF5 datasets only and never executes code from the
file. A bundle is untrusted input (it may come from anywhere): ``load_bundle`` checks the zip
before reading it (``ptycho.archive``), parses ``wts.h5`` only in a resource-limited child
process (``ptycho/_hdf5_child.py``), so a file that crashes or hangs libhdf5 ends that process
and not the caller, and checks every value before it builds the model. The child costs about
0.17 s per load (default-size bundle, 2-core CPU: median 0.20 s instead of 0.035 s). The file is byte-deterministic (fixed member order, timestamps and compression; HDF5
written without object timestamps), so identical weights give an identical file and DVC does
not re-run downstream stages. It is written atomically, and loading is strict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import types
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
import torch
from torch import nn

from ptycho import __version__
from ptycho.archive import check_declared_size, checked_infos, is_plain_name, open_zip, parse_json, read_into, read_member
from ptycho.data import MIN_PATTERN_SIZE
from ptycho.errors import BundleError
from ptycho.files import write_atomically, zip_member
from ptycho.grouping import GROUPINGS
from ptycho.model import AMPLITUDE_ACTIVATIONS, NETWORK_NAMES, Architecture, build_models

FORMAT = "ptycho-bundle"
FORMAT_VERSION = 3
BACKEND = "pytorch"
MODEL_NAMES = ("autoencoder", "diffraction_to_obj")

MANIFEST = "manifest.json"
WEIGHTS = "wts.h5"

# Fixed zip metadata: the DOS epoch as timestamp, a regular file rw-r--r-- made on "Unix", and
# one deflate level, so the bytes depend on the content only.
_ZIP_COMPRESSLEVEL = 9

# Member names that mark a PtychoPINN (TensorFlow/Keras + dill) archive. Its ModelManager writes
# manifest.dill and, per model folder, model.keras (or a SavedModel), model.h5 (metadata),
# params.dill and custom_objects.dill. Reading any of them would mean unpickling.
_PICKLED_SUFFIXES = (".dill", ".pkl", ".pickle", ".keras")
_FOREIGN_NAMES = ("manifest.dill", "saved_model.pb", "model.h5", "keras_metadata.pb")


@dataclass(frozen=True, eq=False)  # eq=False: modules and arrays have no useful ==
class Bundle:
    """A loaded bundle. Both models are in ``eval()`` mode and share weights."""

    autoencoder: nn.Module
    diffraction_to_obj: nn.Module
    architecture: Architecture
    intensity_scale: float
    probe_scale: float  # s_p: unit-power probe x s_p = probe in sqrt(counts)
    probe: np.ndarray  # (N, N) complex64, calibrated: s_p x the unit-power probe
    manifest: dict
    extras: dict[str, bytes]


# ---------------------------------------------------------------------------------------------
# writing


def save_bundle(
    path: str | Path,
    autoencoder: nn.Module,
    diffraction_to_obj: nn.Module,
    architecture: Architecture,
    extras: dict[str, bytes] | None = None,
) -> None:
    """Write both models, the architecture, intensity scale and probe to the zip ``path``.

    ``extras`` ({member name: bytes}) are stored as they are. The write is atomic: ``path``
    is either the previous file or the complete new one.
    """
    path = Path(path)
    extras = dict(extras or {})
    _check_extras(path, extras)
    states = {
        "autoencoder": _numpy_state(autoencoder),
        "diffraction_to_obj": _numpy_state(diffraction_to_obj),
    }
    probe = autoencoder.probe.detach().cpu().to(torch.complex64).contiguous().numpy()
    intensity_scale = float(diffraction_to_obj.intensity_scale.detach().cpu())
    probe_scale = autoencoder.probe_scale
    # Refuse to write a bundle that load_bundle would reject: an architecture within
    # ARCHITECTURE_LIMITS and MAX_PARAMETERS, finite values, and the same keys and shapes as a
    # fresh model of this architecture.
    where = f"{path}: cannot save"
    _architecture(where, json.dumps(architecture.to_dict()))
    _expected_layout(where, architecture)
    for name, value in (("intensity_scale", intensity_scale), ("probe_scale", probe_scale)):
        if not (math.isfinite(value) and value > 0):
            raise BundleError(f"{where}: {name} is {value}; it must be a finite number > 0")
    for name in MODEL_NAMES:
        for key, array in states[name].items():
            _check_finite(where, f"{name}/{key}", array)
    reference = dict(zip(MODEL_NAMES, build_models(architecture, probe, intensity_scale, probe_scale)))
    for name in MODEL_NAMES:
        problems = _state_problems(_layout(reference[name].state_dict()), states[name])
        if problems:
            raise BundleError(
                f"{path}: cannot save model '{name}': it does not match {architecture}: " + "; ".join(problems)
            )
    _check_shared(f"{path}: cannot save", reference["autoencoder"], reference["diffraction_to_obj"], states)

    weights = _weights_bytes(states, architecture, intensity_scale, probe_scale, probe)
    members = {WEIGHTS: weights, **{name: extras[name] for name in sorted(extras)}}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": BACKEND,
        "models": list(MODEL_NAMES),
        "package_version": __version__,
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    manifest_bytes = (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8")
    write_atomically(path, _zip_bytes({MANIFEST: manifest_bytes, **members}))


def _check_extras(path: Path, extras: dict) -> None:
    for name, data in extras.items():
        if not isinstance(name, str) or not name or name in (MANIFEST, WEIGHTS):
            raise BundleError(f"{path}: extra member name {name!r} is empty or reserved ({MANIFEST}, {WEIGHTS})")
        if not is_plain_name(name):
            raise BundleError(
                f"{path}: extra member name {name!r} must be a plain relative path (letters, digits, '_', '-', '.', "
                "'/' between words; no '..', no absolute path, no backslash)"
            )
        if name.lower().endswith(_PICKLED_SUFFIXES):
            # The loader treats such members as a foreign (pickled) archive.
            raise BundleError(f"{path}: extra member {name!r} has a pickle/Keras suffix; bundles hold no pickles")
        if not isinstance(data, (bytes, bytearray)):
            raise BundleError(f"{path}: extra member {name!r} must be bytes, got {type(data).__name__}")
        if name.endswith(".json"):
            parse_json(bytes(data), f"{path}: cannot save extra member {name!r}", BundleError, max_bytes=MAX_EXTRA_BYTES)


def _numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    # .contiguous() rather than np.ascontiguousarray, which turns 0-d buffers into shape (1,).
    return {key: t.detach().cpu().contiguous().numpy() for key, t in model.state_dict().items()}


def _weights_bytes(
    states: dict[str, dict[str, np.ndarray]], architecture: Architecture, intensity_scale: float, probe_scale: float,
    probe: np.ndarray,
) -> bytes:
    buffer = io.BytesIO()
    # libver="earliest" pins the on-disk format; track_times=False drops the object timestamps
    # that would otherwise make every save differ.
    with h5py.File(buffer, "w", libver="earliest") as h5:
        h5.attrs["architecture"] = json.dumps(architecture.to_dict(), sort_keys=True)
        h5.attrs["intensity_scale"] = intensity_scale
        h5.attrs["probe_scale"] = probe_scale
        h5.attrs["package_version"] = __version__
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.create_dataset("probe", data=probe, track_times=False)
        for name in MODEL_NAMES:
            group = h5.create_group(name)
            for key in sorted(states[name]):
                group.create_dataset(key, data=states[name][key], track_times=False)
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():  # insertion order = member order
            archive.writestr(zip_member(name), bytes(data), compresslevel=_ZIP_COMPRESSLEVEL)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# reading: a bundle is untrusted input (DESIGN.md §4)

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
# Wall-clock and CPU limit of the child process that parses wts.h5: 5 s, plus 1 s per 16 MiB.
# A valid default bundle parses in about 0.2 s; a crafted global heap (an object size changed
# in one byte) makes libhdf5 loop for ever, and this limit is what ends it.
HDF5_TIMEOUT_S = 5
HDF5_SECONDS_PER_BYTE = 1 / (16 << 20)

_HDF5_CHILD = Path(__file__).with_name("_hdf5_child.py")
_HDF5_REFUSED = 3  # exit status of the child for a file it refuses (the reason on stderr)
_SHA256 = re.compile("[0-9a-fA-F]{64}")
_ARRAY_DTYPE = re.compile(r"[<>|=][biufc][0-9]{1,2}")


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
    "gridsize": Allowed(1, 3),
    "n_filters_scale": Allowed(0.0, 16.0, above=True),
    "network": Allowed(choices=NETWORK_NAMES),
    "window_px": Allowed(0, 1024, step=2),  # 0 = N/2; Architecture checks N/2 <= w <= N
    "amplitude_activation": Allowed(choices=AMPLITUDE_ACTIVATIONS),
    "grouping": Allowed(choices=GROUPINGS),  # format 3; older bundles: "random"
}

# Numeric root attributes of wts.h5: each a finite real scalar in its range. One added in a
# later format version gets a default, so that bundles written before it still load.
ROOT_SCALARS: dict[str, Allowed] = {
    "intensity_scale": Allowed(0.0, above=True),
    "probe_scale": Allowed(0.0, above=True, default=1.0),  # format 1: a photon-calibrated probe
    "format_version": Allowed(1, FORMAT_VERSION),
}
# What else the root of wts.h5 may hold; anything unknown is refused rather than ignored (an
# item this version does not read may be one the model needs).
_ROOT_TEXTS = ("architecture", "package_version")
_ROOT_DATASETS = ("probe",)


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle written by ``save_bundle``; raise ``BundleError`` naming ``path`` and the problem.

    The bundle is untrusted: member names, methods and sizes are checked before anything is
    read, members are read with a size cap, ``wts.h5`` is parsed in a separate, resource-limited
    process (so even a crash inside libhdf5 is a BundleError here), and shapes, dtypes and
    values are checked before the model is built.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"{path}: model bundle is missing; it is produced by the train stage "
            "(run `dvc repro train` or `ptycho train`)"
        )
    if not path.is_file():
        raise BundleError(f"{path}: model bundle is not a regular file")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: file of {size} bytes is larger than a bundle may be ({MAX_BUNDLE_BYTES} bytes)")
    with open_zip(path, str(path), BundleError) as archive:
        _reject_foreign(path, [info.filename for info in archive.infolist()])
        infos = {
            info.filename: info
            for info in checked_infos(archive, str(path), BundleError, max_members=MAX_MEMBERS, strict_names=True)
        }
        if MANIFEST not in infos:
            raise BundleError(
                f"{path}: no {MANIFEST} in the zip; not a ptycho bundle (members: {', '.join(list(infos)[:8])})"
            )
        manifest = _check_manifest(path, read_member(archive, infos.pop(MANIFEST), MAX_MANIFEST_BYTES, str(path), BundleError))
        caps = _member_caps(path, manifest, infos)
        members = {}
        for name in sorted(caps):
            members[name] = read_member(archive, infos[name], caps[name], str(path), BundleError)
            found = hashlib.sha256(members[name]).hexdigest()
            if found != manifest["members"][name].lower():
                raise BundleError(
                    f"{path}: checksum mismatch for member '{name}': sha256 {found}, "
                    f"manifest says {manifest['members'][name]}"
                )
    for name in members:
        if name.endswith(".json"):  # read by ptycho (config.json: infer takes n_neighbours from it)
            parse_json(members[name], f"{path}: member '{name}'", BundleError, max_bytes=MAX_EXTRA_BYTES)
    autoencoder, diffraction_to_obj, architecture, intensity_scale = _read_weights(
        path, members.pop(WEIGHTS), manifest["format_version"]
    )
    return Bundle(
        autoencoder=autoencoder,
        diffraction_to_obj=diffraction_to_obj,
        architecture=architecture,
        intensity_scale=intensity_scale,
        probe_scale=autoencoder.probe_scale,
        probe=autoencoder.calibrated_probe().detach().numpy().astype(np.complex64),
        manifest=manifest,
        extras=members,
    )


def _shown(value: Any, limit: int = 80) -> str:
    """A short, printable repr of a value read from a file, for messages."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_foreign(path: Path, names: list[str]) -> None:
    """Recognise a PtychoPINN TensorFlow/dill archive by its member names, before anything is read.

    Pickle and Keras members are refused even next to a manifest.json: no ptycho bundle has them.
    """
    pickled = [n for n in names if n.lower().endswith(_PICKLED_SUFFIXES)]
    foreign = pickled or ([] if MANIFEST in names else [n for n in names if n.rsplit("/", 1)[-1] in _FOREIGN_NAMES])
    if not foreign:
        return
    found = ", ".join(_shown(name)[1:-1] for name in sorted(foreign)[:4])
    what = (
        f"contains pickled/Keras member(s) {found}, as a PtychoPINN TensorFlow/dill archive does"
        if MANIFEST in names
        else f"is a PtychoPINN TensorFlow/dill archive (members such as {found}), not a ptycho bundle"
    )
    raise BundleError(
        f"{path}: {what}. It is not loaded: reading it would mean unpickling code from the file. "
        "The model must be retrained with ptycho (`dvc repro train` or `ptycho train`) to get a PyTorch bundle."
    )


def _check_manifest(path: Path, data: bytes) -> dict:
    manifest = parse_json(data, f"{path}: {MANIFEST}", BundleError, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: {MANIFEST} must be a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path}: {MANIFEST} format is {_shown(manifest.get('format'))}, expected {FORMAT!r}; not a ptycho bundle"
        )
    backend = manifest.get("backend")
    if backend != BACKEND:
        raise BundleError(
            f"{path}: bundle was written by backend {_shown(backend)}; this ptycho reads only {BACKEND!r} bundles. "
            "Retrain the model with ptycho."
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path}: {MANIFEST} format_version must be a positive integer, found {_shown(version)}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: newer format version {version}; this ptycho reads up to {FORMAT_VERSION}, upgrade ptycho"
        )
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models) or sorted(models) != sorted(MODEL_NAMES):
        raise BundleError(f"{path}: {MANIFEST} models is {_shown(models)}, expected {list(MODEL_NAMES)}")
    listed = manifest.get("members")
    if not isinstance(listed, dict) or not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in listed.values()):
        raise BundleError(f"{path}: {MANIFEST} members must map member names to sha256 hex strings")
    return manifest


def _member_caps(path: Path, manifest: dict, infos: dict[str, zipfile.ZipInfo]) -> dict[str, int]:
    """The size cap of every member; the listing and the declared sizes checked before reading."""
    listed = manifest["members"]
    if WEIGHTS not in listed:
        raise BundleError(f"{path}: {MANIFEST} does not list {WEIGHTS}")
    if MANIFEST in listed:
        raise BundleError(f"{path}: {MANIFEST} lists itself among the members")
    missing = sorted(set(listed) - set(infos))
    if missing:
        shown = ", ".join(_shown(name)[1:-1] for name in missing[:8])
        raise BundleError(f"{path}: member(s) {shown} listed in {MANIFEST} are missing from the zip")
    unlisted = sorted(set(infos) - set(listed))
    if unlisted:
        raise BundleError(f"{path}: member(s) {', '.join(unlisted[:8])} are not listed in {MANIFEST}")
    caps = {name: MAX_WEIGHTS_BYTES if name == WEIGHTS else MAX_EXTRA_BYTES for name in listed}
    for name, cap in caps.items():
        check_declared_size(infos[name], cap, str(path), BundleError)
    extras = sum(infos[name].file_size for name in listed if name != WEIGHTS)
    if extras > MAX_EXTRA_BYTES:
        raise BundleError(f"{path}: extra members declare {extras} bytes together, more than the {MAX_EXTRA_BYTES} allowed")
    return caps


def _read_weights(path: Path, data: bytes, format_version: int):
    """Models, architecture, intensity scale and probe from the bytes of ``wts.h5``, every value checked."""
    where = f"{path}: {WEIGHTS}"
    groups, texts, arrays = _parse_hdf5(where, data)
    for name in MODEL_NAMES:
        if name not in groups:
            raise BundleError(f"{where} has no group for model '{name}'")
    known = {*MODEL_NAMES, *_ROOT_DATASETS, *(f"@{n}" for n in (*ROOT_SCALARS, *_ROOT_TEXTS))}
    unknown = sorted(({name.split("/")[0] for name in arrays} | set(groups) | {f"@{n}" for n in texts}) - known)
    if unknown:
        raise BundleError(
            f"{where}: unexpected root item(s) {_shown(unknown, 200)} ('@' marks an attribute); "
            f"a bundle holds the groups {list(MODEL_NAMES)}, the dataset 'probe' and the attributes "
            f"{[*_ROOT_TEXTS, *ROOT_SCALARS]}"
        )
    if "architecture" not in texts:
        found = "a number, not a JSON string" if "@architecture" in arrays else "missing"
        raise BundleError(f"{where} lacks the root attribute 'architecture' (JSON text): {found}")
    architecture = _architecture(where, texts["architecture"], format_version)
    expected = _expected_layout(where, architecture)  # the parameter cap, before any allocation
    scalars = {name: _root_scalar(where, name, allowed, arrays, texts) for name, allowed in ROOT_SCALARS.items()}
    intensity_scale = scalars["intensity_scale"]
    for name in ("package_version",):
        if f"@{name}" in arrays:
            raise BundleError(f"{where}: attribute {name} must be a string")

    size = architecture.N
    probe = arrays.get("probe")
    if probe is None:
        raise BundleError(f"{where} lacks the root dataset 'probe'")
    if probe.shape != (size, size) or probe.dtype != np.complex64:
        raise BundleError(f"{where}: probe has shape {probe.shape} {probe.dtype}, expected ({size}, {size}) complex64")
    _check_finite(where, "probe", probe)
    if not np.any(probe):
        raise BundleError(f"{where}: probe is zero everywhere")

    states = {
        name: {key[len(name) + 1 :]: array for key, array in arrays.items() if key.startswith(name + "/")}
        for name in MODEL_NAMES
    }
    if format_version == 1:
        states = _upgrade_format1(states)
    for name in MODEL_NAMES:
        problems = _state_problems(expected[name], states[name])
        if problems:
            raise BundleError(f"{where}: model '{name}' does not match {architecture}: " + "; ".join(problems[:8]))
        for key, array in states[name].items():
            _check_finite(where, f"{name}/{key}", array)

    # Every check passed: only now is memory allocated for the model. The probe is copied so
    # that the model's buffer does not alias the array it is compared with below.
    autoencoder, diffraction_to_obj = build_models(architecture, probe.copy(), intensity_scale)
    models = {"autoencoder": autoencoder, "diffraction_to_obj": diffraction_to_obj}
    _check_shared(where, autoencoder, diffraction_to_obj, states)
    for name in MODEL_NAMES:
        models[name].load_state_dict({k: torch.from_numpy(v) for k, v in states[name].items()}, strict=True)
        models[name].eval()
    # The root copies of probe and intensity_scale must agree with the buffers the models use.
    if not np.array_equal(autoencoder.probe.numpy(), probe):
        raise BundleError(f"{where}: root dataset 'probe' differs from the autoencoder's probe buffer")
    if float(diffraction_to_obj.intensity_scale) != float(np.float32(intensity_scale)):
        raise BundleError(
            f"{where}: attribute intensity_scale {intensity_scale} differs from the model's buffer "
            f"{float(diffraction_to_obj.intensity_scale)}"
        )
    if not math.isclose(scalars["probe_scale"], autoencoder.probe_scale, rel_tol=1e-6):
        raise BundleError(
            f"{where}: attribute probe_scale {scalars['probe_scale']} differs from the autoencoder's "
            f"exp(log_probe_scale) = {autoencoder.probe_scale}"
        )
    return autoencoder, diffraction_to_obj, architecture, intensity_scale


# Format 1 fixed what later formats record: the CNN, an N/2 window, a sigmoid amplitude.
_FORMAT1_ARCHITECTURE = {"network": "cnn", "amplitude_activation": "sigmoid", "window_px": 0}


def _upgrade_format1(states: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Format-1 weights in today's layout: the network under ``backbone.``, a probe scale of 1
    (format 1 stored a photon-calibrated probe)."""
    network = ("encoder.", "amplitude_decoder.", "phase_decoder.")

    def renamed(key: str, prefix: str) -> str:
        inner = key[len(prefix) :]
        return f"{prefix}backbone.{inner}" if key.startswith(prefix) and inner.startswith(network) else key

    upgraded = {
        "diffraction_to_obj": {renamed(k, ""): v for k, v in states["diffraction_to_obj"].items()},
        "autoencoder": {renamed(k, "diffraction_to_obj."): v for k, v in states["autoencoder"].items()},
    }
    upgraded["autoencoder"]["log_probe_scale"] = np.zeros((), dtype=np.float32)
    # Format 1 merged group patches with the binary window (its support buffer).
    upgraded["diffraction_to_obj"]["merge_weights"] = states["diffraction_to_obj"].get("support")
    upgraded["autoencoder"]["diffraction_to_obj.merge_weights"] = states["autoencoder"].get("diffraction_to_obj.support")
    for name, state in upgraded.items():
        if any(value is None for value in state.values()):
            del state["merge_weights" if name == "diffraction_to_obj" else "diffraction_to_obj.merge_weights"]
    return upgraded


def _check_finite(where: str, name: str, array: np.ndarray) -> None:
    if array.dtype.kind in "fc":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BundleError(f"{where}: '{name}' holds {bad} non-finite value(s) (NaN or inf)")


def _root_scalar(where: str, name: str, allowed: Allowed, arrays: dict[str, np.ndarray], texts: dict[str, str]) -> float:
    value = arrays.get(f"@{name}")
    if name in texts:
        raise BundleError(f"{where}: attribute {name} must be a real number, found the string {_shown(texts[name])}")
    if value is None:
        if allowed.default is not None:
            return allowed.default
        raise BundleError(f"{where} lacks the root attribute '{name}' (a number)")
    if value.size != 1 or value.ndim > 1 or value.dtype.kind not in "iuf":
        raise BundleError(f"{where}: attribute {name} must be a real number, found {value.dtype} of shape {value.shape}")
    number = float(value.reshape(()))
    problem = allowed.problem(number)
    if problem:
        raise BundleError(f"{where}: attribute {name} is {number!r}; it {problem}")
    return number


def _architecture(where: str, text: str, format_version: int = FORMAT_VERSION) -> Architecture:
    """The Architecture in the JSON text, each field checked by its type and ARCHITECTURE_LIMITS."""
    what = f"{where}: attribute architecture"
    raw = parse_json(text, what, BundleError, max_bytes=MAX_ARCHITECTURE_BYTES)
    if not isinstance(raw, dict):
        raise BundleError(f"{what} must be a JSON object, found {type(raw).__name__}")
    if format_version == 1:
        raw = {**_FORMAT1_ARCHITECTURE, **raw}
    fields = {field.name: field for field in dataclasses.fields(Architecture)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BundleError(f"{what} has unknown field(s) {_shown(unknown)}; known fields are {sorted(fields)}")
    hints = typing.get_type_hints(Architecture)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            # A field added after the bundle was written takes its default (older bundles load).
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise BundleError(f"{what} lacks the field '{name}'")
            continue
        if name not in ARCHITECTURE_LIMITS:
            raise BundleError(f"{what}: field '{name}' has no allowed values in ptycho.bundle.ARCHITECTURE_LIMITS")
        values[name] = _typed(f"{what} field '{name}'", hints[name], raw[name], ARCHITECTURE_LIMITS[name])
    try:
        return Architecture(**values)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{what} {_shown(values)} is not a valid Architecture ({error})") from error


def _typed(what: str, annotation: Any, value: Any, allowed: Allowed) -> Any:
    """``value`` checked against a field annotation (int, float, str, bool, or X | None) and ``allowed``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        if len(options) != 1:
            raise BundleError(f"{what}: field type {annotation} cannot be checked")
        annotation = options[0]
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        raise BundleError(f"{what}: field type {annotation} cannot be checked")
    if not ok:
        raise BundleError(f"{what} must be of type {annotation.__name__}, found {type(value).__name__} {_shown(value)}")
    problem = allowed.problem(value)
    if problem:
        raise BundleError(f"{what} is {_shown(value)}; it {problem}")
    return value


def _expected_layout(where: str, architecture: Architecture) -> dict[str, dict[str, tuple[tuple, np.dtype]]]:
    """{model: {key: (shape, dtype)}} of a model of this architecture, built on the meta device
    (shapes only, no memory), with the parameter cap applied before anything real is built."""
    size = architecture.N
    try:
        with torch.device("meta"):
            models = build_models(architecture, torch.empty((size, size), dtype=torch.complex64), 1.0)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as error:
        raise BundleError(f"{where}: cannot build the model for {architecture} ({error})") from error
    layout = {name: _layout(model.state_dict()) for name, model in zip(MODEL_NAMES, models)}
    for name, state in layout.items():
        count = sum(math.prod(shape) for shape, _ in state.values())
        if count > MAX_PARAMETERS:
            raise BundleError(
                f"{where}: {architecture} has {count} values in model '{name}', more than the {MAX_PARAMETERS} "
                "a bundle may hold"
            )
    return layout


def _layout(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple, np.dtype]]:
    return {key: (tuple(t.shape), torch.empty((), dtype=t.dtype).numpy().dtype) for key, t in state.items()}


def _parse_hdf5(where: str, data: bytes) -> tuple[list[str], dict[str, str], dict[str, np.ndarray]]:
    """(root group names, string root attributes, arrays) of the HDF5 bytes ``data``.

    Parsed in a child process (``ptycho/_hdf5_child.py``) with limits on memory, CPU time,
    output size and open files, so a crafted file that crashes, hangs or exhausts libhdf5 only
    ends that process. Arrays are named "group/key" (datasets) and "@name" (numeric root
    attributes). Measured cost: see the module docstring.
    """
    timeout_s = int(HDF5_TIMEOUT_S + HDF5_SECONDS_PER_BYTE * len(data))
    limits = {
        "memory_bytes": (512 << 20) + 4 * len(data),
        "cpu_s": timeout_s,
        "output_bytes": 2 * len(data) + (1 << 20),
        "max_items": 4096,
        "max_ndim": 8,
        "max_attributes": 64,
        "max_attribute_items": 64,
        "max_attribute_bytes": MAX_ARCHITECTURE_BYTES,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-I", str(_HDF5_CHILD), json.dumps(limits)]
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        stdin.write(data)
        stdin.seek(0)
        try:
            status = subprocess.run(
                command, stdin=stdin, stdout=stdout, stderr=stderr, env=env, timeout=timeout_s, check=False
            ).returncode
        except subprocess.TimeoutExpired as error:
            raise BundleError(f"{where}: reading it took longer than {timeout_s} s; the file is malformed or crafted") from error
        except OSError as error:
            raise BundleError(f"{where}: cannot start the process that reads it ({error})") from error
        if status == _HDF5_REFUSED:
            raise BundleError(f"{where}: {_last_line(stderr)}")
        if status < 0:
            signal_name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
            why = {
                "SIGXCPU": f"used more than {timeout_s} s of CPU time",
                "SIGKILL": f"was killed (at the limit of {timeout_s} s of CPU time, or out of memory)",
                "SIGXFSZ": "produced more data than the file holds",
            }.get(signal_name, "crashed the HDF5 library")
            raise BundleError(f"{where}: reading it {why} ({signal_name}); the file is malformed or crafted")
        if status != 0:
            raise BundleError(f"{where} is not a readable HDF5 file ({_last_line(stderr)})")
        stdout.seek(0)
        try:
            return _decode_child_output(stdout)
        except (KeyError, TypeError, ValueError, struct.error) as error:
            raise BundleError(f"{where}: the reader's output is malformed ({error})") from error


def _last_line(handle: IO[bytes]) -> str:
    """The last non-empty line of a child's stderr (a refusal or the exception), shortened."""
    handle.seek(max(0, handle.seek(0, os.SEEK_END) - 2000))
    lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:500]


def _decode_child_output(handle: IO[bytes]) -> tuple[list[str], dict[str, str], dict[str, np.ndarray]]:
    size = os.fstat(handle.fileno()).st_size
    (length,) = struct.unpack("<Q", handle.read(8))
    if length > size - 8:
        raise ValueError(f"header of {length} bytes in {size}")
    header = json.loads(handle.read(length))
    entries = header["arrays"]
    for entry in entries:
        if not _ARRAY_DTYPE.fullmatch(entry["dtype"]) or not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
            raise ValueError(f"array {entry['name']!r}: dtype {entry['dtype']!r} shape {entry['shape']!r}")
    if sum(math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize for e in entries) != size - 8 - length:
        raise ValueError("array sizes do not add up to the output's size")
    arrays = {}
    for entry in entries:
        array = np.empty(entry["shape"], dtype=np.dtype(entry["dtype"]))
        read_into(handle, memoryview(array.reshape(-1).view(np.uint8)), "reader output", ValueError)
        arrays[str(entry["name"])] = array
    return [str(name) for name in header["groups"]], {str(k): str(v) for k, v in header["attrs"].items()}, arrays


def _state_problems(expected: dict[str, tuple[tuple, np.dtype]], found: dict[str, np.ndarray]) -> list[str]:
    """Missing and unexpected keys, wrong shapes and dtypes, each named; empty when all match.

    ``expected``: {key: (shape, numpy dtype)}, see ``_layout``.
    """
    problems = [
        f"missing parameter '{key}' (expected shape {shape})" for key, (shape, _) in expected.items() if key not in found
    ]
    problems += [
        f"unexpected parameter {_shown(key)} (shape {found[key].shape})" for key in sorted(set(found) - set(expected))
    ]
    for key, (want_shape, want_dtype) in expected.items():
        if key not in found:
            continue
        if found[key].shape != want_shape:
            problems.append(f"parameter '{key}' has shape {found[key].shape}, expected {want_shape}")
        elif found[key].dtype != want_dtype:
            problems.append(f"parameter '{key}' has dtype {found[key].dtype}, expected {want_dtype}")
    return problems


def _check_shared(where: str, autoencoder: nn.Module, diffraction_to_obj: nn.Module, states: dict) -> None:
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
