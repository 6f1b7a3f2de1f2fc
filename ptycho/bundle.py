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
file. The file is byte-deterministic (fixed member order, timestamps and compression; HDF5
written without object timestamps), so identical weights give an identical file and DVC does
not re-run downstream stages. It is written atomically, and loading is strict.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from ptycho import __version__
from ptycho.errors import BundleError
from ptycho.files import write_atomically, zip_member
from ptycho.model import Architecture, build_models

FORMAT = "ptycho-bundle"
FORMAT_VERSION = 2
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
    # Refuse to write a bundle that load_bundle would reject: same keys and shapes as a fresh
    # model of this architecture.
    reference = dict(zip(MODEL_NAMES, build_models(architecture, probe, intensity_scale, probe_scale)))
    for name in MODEL_NAMES:
        problems = _state_problems(reference[name].state_dict(), states[name])
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
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise BundleError(f"{path}: extra member name {name!r} must be a relative path without '..' or '\\'")
        if name.lower().endswith(_PICKLED_SUFFIXES):
            # The loader treats such members as a foreign (pickled) archive.
            raise BundleError(f"{path}: extra member {name!r} has a pickle/Keras suffix; bundles hold no pickles")
        if not isinstance(data, (bytes, bytearray)):
            raise BundleError(f"{path}: extra member {name!r} must be bytes, got {type(data).__name__}")


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
# reading


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle written by ``save_bundle``; raise ``BundleError`` naming ``path`` and the problem."""
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"{path}: model bundle is missing; it is produced by the train stage "
            "(run `dvc repro train` or `ptycho train`)"
        )
    if not path.is_file():
        raise BundleError(f"{path}: model bundle is not a regular file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _reject_foreign(path, names)
            if len(set(names)) != len(names):
                raise BundleError(f"{path}: zip has duplicate member names; not a ptycho bundle")
            if MANIFEST not in names:
                raise BundleError(
                    f"{path}: no {MANIFEST} in the zip; not a ptycho bundle (members: {', '.join(names[:8])})"
                )
            # Reading checks each member's CRC-32.
            members = {}
            for name in names:
                try:
                    members[name] = archive.read(name)
                except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                    raise BundleError(f"{path}: member '{name}' is corrupt or truncated ({error})") from error
    except zipfile.BadZipFile as error:
        raise BundleError(f"{path}: not a zip file, or a truncated one ({error})") from error
    except OSError as error:
        raise BundleError(f"{path}: cannot read the bundle ({error})") from error

    manifest = _check_manifest(path, members.pop(MANIFEST))
    _check_members(path, manifest, members)
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


def _reject_foreign(path: Path, names: list[str]) -> None:
    """Recognise a PtychoPINN TensorFlow/dill archive by its member names, before anything is read.

    Pickle and Keras members are refused even next to a manifest.json: no ptycho bundle has them.
    """
    pickled = [n for n in names if n.lower().endswith(_PICKLED_SUFFIXES)]
    foreign = pickled or ([] if MANIFEST in names else [n for n in names if n.rsplit("/", 1)[-1] in _FOREIGN_NAMES])
    if not foreign:
        return
    found = ", ".join(sorted(foreign)[:4])
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
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: {MANIFEST} must be a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path}: {MANIFEST} format is {manifest.get('format')!r}, expected {FORMAT!r}; not a ptycho bundle"
        )
    backend = manifest.get("backend")
    if backend != BACKEND:
        raise BundleError(
            f"{path}: bundle was written by backend {backend!r}; this ptycho reads only {BACKEND!r} bundles. "
            "Retrain the model with ptycho."
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path}: {MANIFEST} format_version must be a positive integer, found {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: newer format version {version}; this ptycho reads up to {FORMAT_VERSION}, upgrade ptycho"
        )
    models = manifest.get("models")
    if not isinstance(models, list) or sorted(models) != sorted(MODEL_NAMES):
        raise BundleError(f"{path}: {MANIFEST} models is {models!r}, expected {list(MODEL_NAMES)}")
    listed = manifest.get("members")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise BundleError(f"{path}: {MANIFEST} members must map member names to sha256 hex strings")
    return manifest


def _check_members(path: Path, manifest: dict, members: dict[str, bytes]) -> None:
    listed = manifest["members"]
    if WEIGHTS not in listed:
        raise BundleError(f"{path}: {MANIFEST} does not list {WEIGHTS}")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise BundleError(f"{path}: member(s) {', '.join(missing)} listed in {MANIFEST} are missing from the zip")
    unlisted = sorted(set(members) - set(listed))
    if unlisted:
        raise BundleError(f"{path}: member(s) {', '.join(unlisted)} are not listed in {MANIFEST}")
    for name in sorted(listed):
        found = hashlib.sha256(members[name]).hexdigest()
        if found != listed[name].lower():
            raise BundleError(
                f"{path}: checksum mismatch for member '{name}': sha256 {found}, manifest says {listed[name]}"
            )


def _read_weights(path: Path, data: bytes, format_version: int):
    where = f"{path}: {WEIGHTS}"
    try:
        h5 = h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as error:
        raise BundleError(f"{where} is not a readable HDF5 file ({error})") from error
    with h5:
        for name in MODEL_NAMES:
            if not isinstance(h5.get(name), h5py.Group):
                raise BundleError(f"{where} has no group for model '{name}'")
        for attr in ("architecture", "intensity_scale"):
            if attr not in h5.attrs:
                raise BundleError(f"{where} lacks the root attribute '{attr}'")
        if not isinstance(h5.get("probe"), h5py.Dataset):
            raise BundleError(f"{where} lacks the root dataset 'probe'")
        architecture = _architecture(where, h5.attrs["architecture"], format_version)
        try:
            intensity_scale = float(h5.attrs["intensity_scale"])
        except (TypeError, ValueError) as error:
            raise BundleError(f"{where}: attribute intensity_scale is not a number ({error})") from error
        probe = np.asarray(h5["probe"][()])
        if probe.shape != (architecture.N, architecture.N) or probe.dtype != np.complex64:
            raise BundleError(
                f"{where}: probe has shape {probe.shape} {probe.dtype}, expected "
                f"({architecture.N}, {architecture.N}) complex64"
            )
        states = {name: _read_group(where, name, h5[name]) for name in MODEL_NAMES}
        h5_attrs = {key: h5.attrs[key] for key in ("probe_scale",) if key in h5.attrs}
    if format_version == 1:
        states = _upgrade_format1(states)

    try:
        # A copy: the model's buffer must not alias the root probe it is compared with below.
        autoencoder, diffraction_to_obj = build_models(architecture, probe.copy(), intensity_scale)
    except (ValueError, RuntimeError) as error:
        raise BundleError(f"{where}: cannot build the model for {architecture} ({error})") from error
    models = {"autoencoder": autoencoder, "diffraction_to_obj": diffraction_to_obj}
    for name in MODEL_NAMES:
        problems = _state_problems(models[name].state_dict(), states[name])
        if problems:
            raise BundleError(f"{where}: model '{name}' does not match {architecture}: " + "; ".join(problems))
    _check_shared(where, autoencoder, diffraction_to_obj, states)
    for name in MODEL_NAMES:
        models[name].load_state_dict({k: torch.from_numpy(v) for k, v in states[name].items()}, strict=True)
        models[name].eval()
    # The root copies of probe and intensity_scale must agree with the buffers the models use.
    if not np.array_equal(autoencoder.probe.numpy(), probe):
        raise BundleError(f"{where}: root dataset 'probe' differs from the autoencoder's probe buffer")
    if format_version >= 2:
        stored = h5_attrs.get("probe_scale")
        if not isinstance(stored, (float, np.floating)) or not np.isclose(float(stored), autoencoder.probe_scale, rtol=1e-6):
            raise BundleError(f"{where}: attribute probe_scale {stored!r} differs from the autoencoder's log_probe_scale")
    if float(diffraction_to_obj.intensity_scale) != float(np.float32(intensity_scale)):
        raise BundleError(
            f"{where}: attribute intensity_scale {intensity_scale} differs from the model's buffer "
            f"{float(diffraction_to_obj.intensity_scale)}"
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
        return f"{prefix}backbone.{inner}" if inner.startswith(network) else key

    upgraded = {
        "diffraction_to_obj": {renamed(k, ""): v for k, v in states["diffraction_to_obj"].items()},
        "autoencoder": {renamed(k, "diffraction_to_obj."): v for k, v in states["autoencoder"].items()},
    }
    upgraded["autoencoder"]["log_probe_scale"] = np.zeros((), dtype=np.float32)
    return upgraded


def _architecture(where: str, raw, format_version: int) -> Architecture:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    try:
        fields = json.loads(text)
        if format_version == 1 and isinstance(fields, dict):
            fields = {**_FORMAT1_ARCHITECTURE, **fields}
        return Architecture(**fields)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise BundleError(f"{where}: attribute architecture {text!r} is not a valid Architecture ({error})") from error


def _read_group(where: str, name: str, group: h5py.Group) -> dict[str, np.ndarray]:
    state = {}
    for key, item in group.items():
        if not isinstance(item, h5py.Dataset):
            raise BundleError(f"{where}: model '{name}' has an unexpected subgroup '{key}'")
        state[key] = np.asarray(item[()])
    return state


def _state_problems(expected: dict[str, torch.Tensor], found: dict[str, np.ndarray]) -> list[str]:
    """Missing and unexpected keys, wrong shapes and dtypes, each named; empty when all match."""
    problems = [
        f"missing parameter '{key}' (expected shape {tuple(t.shape)})"
        for key, t in expected.items()
        if key not in found
    ]
    problems += [
        f"unexpected parameter '{key}' (shape {found[key].shape})" for key in sorted(set(found) - set(expected))
    ]
    for key, tensor in expected.items():
        if key not in found:
            continue
        want_shape, want_dtype = tuple(tensor.shape), torch.empty((), dtype=tensor.dtype).numpy().dtype
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
