"""Reading a bundle: ``load_bundle``. A bundle is untrusted input (DESIGN.md §4; the format:
``ptycho.bundle``)."""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptycho.archive import check_declared_size, checked_infos, open_zip, parse_json, read_member
from ptycho.bundle.sandbox import parse_hdf5
from ptycho.bundle.schema import (
    BACKEND, FORMAT, FORMAT_VERSION, FOREIGN_NAMES, MANIFEST, MAX_BUNDLE_BYTES, MAX_EXTRA_BYTES, MAX_MANIFEST_BYTES,
    MAX_MEMBERS, MAX_WEIGHTS_BYTES, MODEL_NAMES, PICKLED_SUFFIXES, ROOT_DATASETS, ROOT_SCALARS, ROOT_TEXTS, WEIGHTS, Allowed,
    check_finite, check_shared, expected_layout, parse_architecture, shown, state_problems,
)
from ptycho.errors import BundleError
from ptycho.model import Architecture, build_models

_SHA256 = re.compile("[0-9a-fA-F]{64}")


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


def _reject_foreign(path: Path, names: list[str]) -> None:
    """Recognise a PtychoPINN TensorFlow/dill archive by its member names, before anything is read.

    Pickle and Keras members are refused even next to a manifest.json: no ptycho bundle has them.
    """
    pickled = [n for n in names if n.lower().endswith(PICKLED_SUFFIXES)]
    foreign = pickled or ([] if MANIFEST in names else [n for n in names if n.rsplit("/", 1)[-1] in FOREIGN_NAMES])
    if not foreign:
        return
    found = ", ".join(shown(name)[1:-1] for name in sorted(foreign)[:4])
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
            f"{path}: {MANIFEST} format is {shown(manifest.get('format'))}, expected {FORMAT!r}; not a ptycho bundle"
        )
    backend = manifest.get("backend")
    if backend != BACKEND:
        raise BundleError(
            f"{path}: bundle was written by backend {shown(backend)}; this ptycho reads only {BACKEND!r} bundles. "
            "Retrain the model with ptycho."
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path}: {MANIFEST} format_version must be a positive integer, found {shown(version)}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: newer format version {version}; this ptycho reads up to {FORMAT_VERSION}, upgrade ptycho"
        )
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models) or sorted(models) != sorted(MODEL_NAMES):
        raise BundleError(f"{path}: {MANIFEST} models is {shown(models)}, expected {list(MODEL_NAMES)}")
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
        names = ", ".join(shown(name)[1:-1] for name in missing[:8])
        raise BundleError(f"{path}: member(s) {names} listed in {MANIFEST} are missing from the zip")
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
    groups, texts, arrays = parse_hdf5(where, data)
    for name in MODEL_NAMES:
        if name not in groups:
            raise BundleError(f"{where} has no group for model '{name}'")
    known = {*MODEL_NAMES, *ROOT_DATASETS, *(f"@{n}" for n in (*ROOT_SCALARS, *ROOT_TEXTS))}
    unknown = sorted(({name.split("/")[0] for name in arrays} | set(groups) | {f"@{n}" for n in texts}) - known)
    if unknown:
        raise BundleError(
            f"{where}: unexpected root item(s) {shown(unknown, 200)} ('@' marks an attribute); "
            f"a bundle holds the groups {list(MODEL_NAMES)}, the dataset 'probe' and the attributes "
            f"{[*ROOT_TEXTS, *ROOT_SCALARS]}"
        )
    if "architecture" not in texts:
        found = "a number, not a JSON string" if "@architecture" in arrays else "missing"
        raise BundleError(f"{where} lacks the root attribute 'architecture' (JSON text): {found}")
    architecture = parse_architecture(where, texts["architecture"], format_version)
    expected = expected_layout(where, architecture)  # the parameter cap, before any allocation
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
    check_finite(where, "probe", probe)
    if not np.any(probe):
        raise BundleError(f"{where}: probe is zero everywhere")

    states = {
        name: {key[len(name) + 1 :]: array for key, array in arrays.items() if key.startswith(name + "/")}
        for name in MODEL_NAMES
    }
    if format_version == 1:
        states = _upgrade_format1(states)
    for name in MODEL_NAMES:
        problems = state_problems(expected[name], states[name])
        if problems:
            raise BundleError(f"{where}: model '{name}' does not match {architecture}: " + "; ".join(problems[:8]))
        for key, array in states[name].items():
            check_finite(where, f"{name}/{key}", array)

    # Every check passed: only now is memory allocated for the model. The probe is copied so
    # that the model's buffer does not alias the array it is compared with below.
    autoencoder, diffraction_to_obj = build_models(architecture, probe.copy(), intensity_scale)
    models = {"autoencoder": autoencoder, "diffraction_to_obj": diffraction_to_obj}
    check_shared(where, autoencoder, diffraction_to_obj, states)
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


def _root_scalar(where: str, name: str, allowed: Allowed, arrays: dict[str, np.ndarray], texts: dict[str, str]) -> float:
    value = arrays.get(f"@{name}")
    if name in texts:
        raise BundleError(f"{where}: attribute {name} must be a real number, found the string {shown(texts[name])}")
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
