"""Writing a bundle: ``save_bundle`` (the format: ``ptycho.bundle``)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from ptycho import __version__
from ptycho.archive import is_plain_name, parse_json
from ptycho.bundle.schema import (
    BACKEND, FORMAT, FORMAT_VERSION, MANIFEST, MAX_EXTRA_BYTES, MODEL_NAMES, PICKLED_SUFFIXES, ROOT_SCALARS, WEIGHTS,
    check_finite, check_shared, expected_layout, layout_of, parse_architecture, state_problems,
)
from ptycho.errors import BundleError
from ptycho.files import write_atomically, zip_member
from ptycho.model import Architecture, build_models

# Fixed zip metadata: the DOS epoch as timestamp, a regular file rw-r--r-- made on "Unix", and
# one deflate level, so the bytes depend on the content only.
_ZIP_COMPRESSLEVEL = 9


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
    parse_architecture(where, json.dumps(architecture.to_dict()))
    expected_layout(where, architecture)
    for name, value in (("intensity_scale", intensity_scale), ("probe_scale", probe_scale)):
        problem = ROOT_SCALARS[name].problem(value)
        if problem:
            raise BundleError(f"{where}: {name} is {value}; it {problem}")
    for name in MODEL_NAMES:
        for key, array in states[name].items():
            check_finite(where, f"{name}/{key}", array)
    reference = dict(zip(MODEL_NAMES, build_models(architecture, probe, intensity_scale, probe_scale)))
    for name in MODEL_NAMES:
        problems = state_problems(layout_of(reference[name].state_dict()), states[name])
        if problems:
            raise BundleError(
                f"{path}: cannot save model '{name}': it does not match {architecture}: " + "; ".join(problems)
            )
    check_shared(f"{path}: cannot save", reference["autoencoder"], reference["diffraction_to_obj"], states)

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
        if name.lower().endswith(PICKLED_SUFFIXES):
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
