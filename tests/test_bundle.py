"""Tests for ptycho/bundle.py: round trip, byte determinism, atomic write, strict and safe loading."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptycho import bundle as bundle_module
from ptycho.bundle import FORMAT, FORMAT_VERSION, MODEL_NAMES, Bundle, load_bundle, save_bundle
from ptycho.errors import BundleError
from ptycho.model import Architecture, build_models

N = 32
EXTRAS = {"history.csv": b"epoch,train_loss\n0,1.5\n1,0.75\n", "config.json": b'{"train": {"epochs": 2}}\n'}


def architecture(gridsize: int = 1) -> Architecture:
    return Architecture(N=N, gridsize=gridsize, n_filters_scale=0.125)


def make_models(gridsize: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = (rng.random((N, N)) * np.exp(1j * rng.random((N, N)))).astype(np.complex64)
    return build_models(architecture(gridsize), probe, intensity_scale=3.25 + seed)


def inputs(gridsize: int, batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    channels = gridsize * gridsize
    amplitudes = torch.rand(batch, channels, N, N, generator=generator) * 5
    offsets = (torch.rand(batch, channels, 2, generator=generator) - 0.5) * 6
    return amplitudes, offsets


def saved(tmp_path: Path, gridsize: int = 1, seed: int = 0, name: str = "wts.h5.zip") -> Path:
    path = tmp_path / name
    autoencoder, diffraction_to_obj = make_models(gridsize, seed)
    save_bundle(path, autoencoder, diffraction_to_obj, architecture(gridsize), extras=EXTRAS)
    return path


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def repack(source: Path, target: Path, changes: dict[str, bytes | None] | None = None, manifest: dict | None = None) -> Path:
    """Copy a bundle with members replaced (None: removed) and a manifest whose checksums match."""
    members = read_members(source)
    for name, data in (changes or {}).items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    new_manifest = json.loads(members["manifest.json"])
    new_manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "manifest.json"}
    new_manifest.update(manifest or {})
    members["manifest.json"] = json.dumps(new_manifest).encode()
    return write_zip(target, members)


def edit_weights(data: bytes, edit) -> bytes:
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    return buffer.getvalue()


def expect_error(path: Path, *words: str) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("gridsize", [1, 2])
def test_round_trip_gives_identical_outputs(tmp_path, gridsize):
    autoencoder, diffraction_to_obj = make_models(gridsize)
    path = tmp_path / "out" / "wts.h5.zip"  # parent folder created by save_bundle
    save_bundle(path, autoencoder, diffraction_to_obj, architecture(gridsize), extras=EXTRAS)

    loaded = load_bundle(path)
    assert isinstance(loaded, Bundle)
    assert isinstance(loaded.autoencoder, torch.nn.Module) and isinstance(loaded.diffraction_to_obj, torch.nn.Module)
    assert not loaded.autoencoder.training and not loaded.diffraction_to_obj.training
    amplitudes, offsets = inputs(gridsize)
    diffraction_to_obj.eval()
    with torch.no_grad():
        assert torch.equal(loaded.diffraction_to_obj(amplitudes, offsets), diffraction_to_obj(amplitudes, offsets))
        for a, b in zip(loaded.autoencoder(amplitudes, offsets), autoencoder(amplitudes, offsets)):
            assert torch.equal(a, b)
    assert loaded.architecture == architecture(gridsize)
    assert loaded.intensity_scale == 3.25
    assert loaded.probe.dtype == np.complex64
    np.testing.assert_array_equal(loaded.probe, autoencoder.probe.numpy())
    assert loaded.extras == EXTRAS
    assert loaded.manifest["format"] == FORMAT and loaded.manifest["models"] == list(MODEL_NAMES)


def test_loaded_models_share_weights(tmp_path):
    loaded = load_bundle(saved(tmp_path, gridsize=2))
    assert loaded.autoencoder.diffraction_to_obj is loaded.diffraction_to_obj
    amplitudes, offsets = inputs(2)
    with torch.no_grad():
        before, _ = loaded.autoencoder(amplitudes, offsets)
        loaded.diffraction_to_obj.backbone.amplitude_decoder[-1].bias.add_(0.5)
        after, _ = loaded.autoencoder(amplitudes, offsets)
    assert not torch.equal(before, after)


def test_layout_of_the_zip(tmp_path):
    path = saved(tmp_path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["manifest.json", "wts.h5", "config.json", "history.csv"]
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
        manifest = json.loads(archive.read("manifest.json"))
        weights = archive.read("wts.h5")
    assert manifest["backend"] == "pytorch" and manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["members"]) == {"wts.h5", "config.json", "history.csv"}
    assert manifest["members"]["wts.h5"] == hashlib.sha256(weights).hexdigest()
    with h5py.File(io.BytesIO(weights), "r") as h5:
        assert set(h5) == {"autoencoder", "diffraction_to_obj", "probe"}
        assert json.loads(h5.attrs["architecture"]) == architecture().to_dict()
        assert h5["probe"].dtype == np.complex64 and h5["probe"].shape == (N, N)
        assert "backbone.encoder.0.weight" in h5["diffraction_to_obj"]
        assert h5.attrs["probe_scale"] == pytest.approx(1.0)


# --- determinism and atomic write ----------------------------------------------------------


def test_identical_weights_give_identical_bytes(tmp_path):
    first = saved(tmp_path, name="a.zip").read_bytes()
    second = saved(tmp_path, name="b.zip").read_bytes()
    assert first == second
    # Re-saving what was loaded reproduces the file too (the DVC cache stays valid).
    loaded = load_bundle(tmp_path / "a.zip")
    save_bundle(tmp_path / "c.zip", loaded.autoencoder, loaded.diffraction_to_obj, loaded.architecture, loaded.extras)
    assert (tmp_path / "c.zip").read_bytes() == first


def test_different_weights_give_different_bytes(tmp_path):
    assert saved(tmp_path, seed=0, name="a.zip").read_bytes() != saved(tmp_path, seed=1, name="b.zip").read_bytes()


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = saved(tmp_path, seed=0)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    autoencoder, diffraction_to_obj = make_models(seed=1)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, autoencoder, diffraction_to_obj, architecture(), extras=EXTRAS)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wts.h5.zip"]


def test_save_rejects_models_not_matching_the_architecture(tmp_path):
    autoencoder, diffraction_to_obj = make_models(gridsize=1)
    with pytest.raises(BundleError, match="does not match"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, architecture(gridsize=2))
    assert not (tmp_path / "wts.h5.zip").exists()


def test_save_rejects_models_that_do_not_share_weights(tmp_path):
    autoencoder, _ = make_models(seed=0)
    _, other = make_models(seed=1)
    with pytest.raises(BundleError, match="shared parameter"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, other, architecture())


@pytest.mark.parametrize("name", ["manifest.json", "wts.h5", "../x.csv", "params.dill"])
def test_save_rejects_bad_extra_names(tmp_path, name):
    autoencoder, diffraction_to_obj = make_models()
    with pytest.raises(BundleError, match="extra member"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, architecture(), {name: b"x"})


# --- errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    expect_error(tmp_path / "model" / "wts.h5.zip", "missing", "train")


def test_truncated_zip(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated")


def test_not_a_zip(tmp_path):
    path = tmp_path / "wts.h5.zip"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(path, "not a zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_member_failing_crc(tmp_path, compression):
    path = tmp_path / "wts.h5.zip"
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in read_members(saved(tmp_path, name="good.zip")).items():
            archive.writestr(name, data)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("history.csv")
    # Local header (30 bytes + name + extra), then the member's data: flip its last byte.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size - 1] ^= 0xFF
    path.write_bytes(bytes(data))
    expect_error(path, "history.csv", "corrupt")


def test_no_manifest(tmp_path):
    members = read_members(saved(tmp_path))
    del members["manifest.json"]
    expect_error(write_zip(tmp_path / "bad.zip", members), "no manifest.json")


def test_manifest_not_json(tmp_path):
    members = read_members(saved(tmp_path))
    members["manifest.json"] = b"{not json"
    expect_error(write_zip(tmp_path / "bad.zip", members), "manifest.json", "not valid JSON")


def test_wrong_format(tmp_path):
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", manifest={"format": "something-else"})
    expect_error(bad, "format", "something-else", "not a ptycho bundle")


def test_other_backend(tmp_path):
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", manifest={"backend": "tensorflow"})
    expect_error(bad, "backend", "'tensorflow'")


def test_newer_format_version(tmp_path):
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", manifest={"format_version": FORMAT_VERSION + 1})
    expect_error(bad, f"newer format version {FORMAT_VERSION + 1}", f"reads up to {FORMAT_VERSION}", "upgrade ptycho")


def test_member_listed_but_missing(tmp_path):
    members = read_members(saved(tmp_path))
    del members["history.csv"]  # the manifest still lists it
    expect_error(write_zip(tmp_path / "bad.zip", members), "history.csv", "missing")


def test_checksum_mismatch(tmp_path):
    members = read_members(saved(tmp_path))
    members["history.csv"] = members["history.csv"].replace(b"0.75", b"0.25")  # old manifest kept
    expect_error(write_zip(tmp_path / "bad.zip", members), "checksum mismatch", "history.csv")


def test_unlisted_member(tmp_path):
    members = read_members(saved(tmp_path))
    members["notes.txt"] = b"hello"
    expect_error(write_zip(tmp_path / "bad.zip", members), "notes.txt", "not listed")


def test_weights_not_hdf5(tmp_path):
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", {"wts.h5": b"not an hdf5 file" * 10})
    expect_error(bad, "wts.h5", "not a readable HDF5")


def test_weights_without_architecture(tmp_path):
    path = saved(tmp_path)
    weights = edit_weights(read_members(path)["wts.h5"], lambda h5: h5.attrs.__delitem__("architecture"))
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "architecture")


def test_weights_without_model_group(tmp_path):
    path = saved(tmp_path)
    weights = edit_weights(read_members(path)["wts.h5"], lambda h5: h5.__delitem__("autoencoder"))
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "no group", "autoencoder")


def test_shape_mismatch(tmp_path):
    path = saved(tmp_path)
    key = "backbone.encoder.0.weight"

    def reshape(h5):
        group = h5["diffraction_to_obj"]
        expected = group[key].shape
        del group[key]
        group.create_dataset(key, data=np.zeros((expected[0] + 1, *expected[1:]), np.float32))

    weights = edit_weights(read_members(path)["wts.h5"], reshape)
    message = expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "diffraction_to_obj", key)
    assert "(5, 1, 3, 3)" in message and "(4, 1, 3, 3)" in message  # found and expected


def test_missing_parameter(tmp_path):
    path = saved(tmp_path)
    key = "diffraction_to_obj.backbone.phase_decoder.0.bias"
    weights = edit_weights(read_members(path)["wts.h5"], lambda h5: h5["autoencoder"].__delitem__(key))
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "autoencoder", "missing parameter", key)


def test_unexpected_parameter(tmp_path):
    path = saved(tmp_path)
    weights = edit_weights(
        read_members(path)["wts.h5"],
        lambda h5: h5["diffraction_to_obj"].create_dataset("extra.weight", data=np.ones(3)),
    )
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "unexpected parameter", "extra.weight")


def test_inconsistent_shared_weights(tmp_path):
    path = saved(tmp_path)
    weights = edit_weights(
        read_members(path)["wts.h5"], lambda h5: h5["diffraction_to_obj/backbone.encoder.0.bias"].__setitem__(0, 9.0)
    )
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "shared parameter", "encoder.0.bias")


# --- foreign archives and pickles ----------------------------------------------------------


class _TouchOnUnpickle:
    """Unpickling this object creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def ptychopinn_members(marker: Path) -> dict[str, bytes]:
    """The member names PtychoPINN's ModelManager.save_multiple_models writes."""
    payload = pickle.dumps(_TouchOnUnpickle(marker))
    members = {"manifest.dill": payload}
    for model in MODEL_NAMES:
        members |= {
            f"{model}/model.keras": b"PK keras archive bytes",
            f"{model}/model.h5": b"\x89HDF\r\n\x1a\n metadata",
            f"{model}/params.dill": payload,
            f"{model}/custom_objects.dill": payload,
        }
    return members


def test_payload_would_create_the_marker(tmp_path):
    pickle.loads(pickle.dumps(_TouchOnUnpickle(tmp_path / "sanity")))  # the test's payload works
    assert (tmp_path / "sanity").exists()


def test_ptychopinn_archive_is_recognised_and_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = write_zip(tmp_path / "wts.h5.zip", ptychopinn_members(marker))
    expect_error(path, "PtychoPINN", "TensorFlow/dill", "not loaded", "unpickling", "retrain")
    assert not marker.exists()


@pytest.mark.parametrize(
    "members", [["autoencoder/model.keras", "diffraction_to_obj/model.keras"], ["diffraction_to_obj/model.h5"]]
)
def test_ptychopinn_archive_by_keras_or_h5_members(tmp_path, members):
    path = write_zip(tmp_path / "wts.h5.zip", {name: b"arbitrary" for name in members})
    expect_error(path, "PtychoPINN")


def test_pickled_member_in_a_manifest_bundle_is_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_TouchOnUnpickle(marker))
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", {"autoencoder/params.dill": payload})
    expect_error(bad, "params.dill", "not loaded")
    assert not marker.exists()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = saved(tmp_path, gridsize=2)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_bundle must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load_bundle(path).architecture == architecture(2)
    assert "pickle" not in vars(bundle_module) and "dill" not in vars(bundle_module)


# --- probe scale and earlier formats ----------------------------------------------------------


def test_the_trained_probe_scale_is_stored_and_gives_the_calibrated_probe(tmp_path):
    autoencoder, diffraction_to_obj = make_models()
    with torch.no_grad():
        autoencoder.log_probe_scale.fill_(np.log(40.0))
    save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, architecture())
    loaded = load_bundle(tmp_path / "wts.h5.zip")
    assert loaded.probe_scale == pytest.approx(40.0, rel=1e-6)
    np.testing.assert_allclose(loaded.probe, 40.0 * autoencoder.probe.numpy(), rtol=1e-6)


def test_a_format_1_bundle_loads_and_predicts_as_it_did():
    # Written by the format-1 code (commit ab1ee74) with the output it gave for this input:
    # CNN keys at the top level, sigmoid amplitude, N/2 window, photon-calibrated probe.
    data = Path(__file__).parent / "data"
    loaded = load_bundle(data / "bundle_format1.h5.zip")
    assert loaded.manifest["format_version"] == 1
    assert loaded.architecture.amplitude_activation == "sigmoid" and loaded.architecture.window_px == 16
    assert loaded.probe_scale == 1.0
    amplitudes = torch.linspace(0, 3, 32 * 32).reshape(1, 1, 32, 32)
    with torch.no_grad():
        output = loaded.diffraction_to_obj(amplitudes, torch.zeros(1, 1, 2))
    np.testing.assert_array_equal(output.numpy(), np.load(data / "bundle_format1_output.npy"))
