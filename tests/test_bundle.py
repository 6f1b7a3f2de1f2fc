"""Tests for ptycho/bundle/: round trip, byte determinism, atomic write, strict and safe loading."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptycho.bundle import read, sandbox, schema
from ptycho.bundle import FORMAT, FORMAT_VERSION, MODEL_NAMES, Bundle, load_bundle, save_bundle
from ptycho.errors import BundleError
from ptycho.model import BACKBONE_NAMES, Architecture, build_models

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
    expect_error(repack(path, tmp_path / "bad.zip", {"wts.h5": weights}), "shared parameter", "backbone.encoder.0.bias")


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
    for module in (read, sandbox, schema):
        assert "pickle" not in vars(module) and "dill" not in vars(module)


# --- untrusted input: zip level --------------------------------------------------------------


def raw_entries(members: dict[str, bytes], **overrides) -> bytes:
    from fuzzing import zip_members

    return zip_members(members, **overrides)


@pytest.mark.parametrize(
    "name", ["../evil.txt", "/etc/evil.txt", "a\\b.txt", "dir/../../x", "bad\nname.txt", ".hidden", "sp ace.txt"]
)
def test_extra_member_with_a_path_name_is_refused_on_loading(tmp_path, name):
    bad = repack(saved(tmp_path), tmp_path / "bad.zip", {name: b"hello"})  # listed, checksum right
    expect_error(bad, "zip member name", "not a plain relative path")


@pytest.mark.parametrize(("override", "words"), [
    ({"method": 12}, ("compression method 12", "stored, deflated")),
    ({"method": 99}, ("compression method 99",)),
    ({"flags": 0x1}, ("encrypted",)),
    ({"size": 1 << 30}, ("declares 1073741824 bytes", "more than")),
])
def test_member_method_flags_and_declared_size_are_checked_before_reading(tmp_path, override, words):
    members = read_members(saved(tmp_path))
    bad = tmp_path / "bad.zip"
    bad.write_bytes(raw_entries(members, **{"wts.h5": override}))
    expect_error(bad, "wts.h5", *words)


def test_zip_bomb_is_refused_without_inflating_it(tmp_path):
    from fuzzing import raw_zip, zero_bomb

    members = read_members(saved(tmp_path))
    bomb, crc = zero_bomb(1024)  # 1 GiB of zeros in about 1 MB
    entries = [{"name": n.encode(), "data": d} for n, d in members.items() if n != "history.csv"]
    for declared in (1 << 30, len(members["history.csv"])):  # honest and lying declared sizes
        entry = {"name": b"history.csv", "data": bomb, "method": 8, "crc": crc, "size": declared}
        bad = tmp_path / f"bomb{declared}.zip"
        bad.write_bytes(raw_zip(entries + [entry]))
        started = time.perf_counter()
        expect_error(bad, "history.csv")
        assert time.perf_counter() - started < 5


@pytest.mark.parametrize("text", [b"[" * 100000 + b"]" * 100000, b'{"format_version": ' + b"9" * 5000 + b"}",
                                  b'{"format_version": NaN}', b"\xff\xfe"])
def test_hostile_manifest_text_is_a_bundle_error(tmp_path, text):
    members = read_members(saved(tmp_path))
    members["manifest.json"] = text
    expect_error(write_zip(tmp_path / "bad.zip", members), "manifest.json")


# --- untrusted input: HDF5 level -------------------------------------------------------------

MARKER = np.float32(1234.5)


def with_weights(tmp_path: Path, edit) -> Path:
    path = saved(tmp_path)
    return repack(path, tmp_path / "bad.zip", {"wts.h5": edit_weights(read_members(path)["wts.h5"], edit)})


def replace_in_both_groups(h5, key, make):
    for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
        shape = group[name].shape
        del group[name]
        make(group, name, shape)


def test_external_storage_is_refused_and_never_read(tmp_path):
    marker = tmp_path / "marker.bin"
    marker.write_bytes(np.full(4096, MARKER, np.float32).tobytes())
    for target in (str(marker), "marker.bin"):
        bad = with_weights(tmp_path, lambda h5: replace_in_both_groups(
            h5, "backbone.encoder.0.weight",
            lambda g, n, shape: g.create_dataset(n, shape=shape, dtype=np.float32, external=[(target, 0, h5py.h5f.UNLIMITED)])))
        if target == str(marker):  # the mutant works: plain h5py reads the marker through it
            with h5py.File(io.BytesIO(read_members(bad)["wts.h5"]), "r") as h5:
                assert np.all(h5["diffraction_to_obj/backbone.encoder.0.weight"][()] == MARKER)
        expect_error(bad, "backbone.encoder.0.weight", "external storage")


def test_virtual_dataset_is_refused(tmp_path):
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as h5:
        h5.create_dataset("marker", data=np.full(64, MARKER, np.float32))

    def make(group, name, shape):
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[...] = h5py.VirtualSource(str(source), "marker", shape=shape)
        group.create_virtual_dataset(name, layout)

    expect_error(with_weights(tmp_path, lambda h5: replace_in_both_groups(h5, "backbone.encoder.0.bias", make)), "virtual dataset")


@pytest.mark.parametrize("link", ["soft", "external"])
def test_soft_and_external_links_are_refused(tmp_path, link):
    def make(group, name, shape):
        group[name] = (h5py.SoftLink("/probe") if link == "soft" else h5py.ExternalLink(str(tmp_path / "x.h5"), "/marker"))

    message = expect_error(with_weights(tmp_path, lambda h5: replace_in_both_groups(h5, "backbone.encoder.0.bias", make)), "backbone.encoder.0.bias")
    assert f"{link} link" in message


def test_huge_never_written_dataset_is_refused_before_allocation(tmp_path):
    def make(group, name, shape):
        group.create_dataset(name, shape=(20000, 20000), dtype=np.float32)  # 1.6 GB declared, 0 stored

    message = expect_error(with_weights(tmp_path, lambda h5: replace_in_both_groups(h5, "backbone.encoder.0.weight", make)), "(20000, 20000)")
    assert "stores 0 bytes" in message


@pytest.mark.parametrize(("key", "value", "words"), [
    ("backbone.encoder.0.weight", np.nan, "non-finite"),
    ("backbone.encoder.0.bias", np.inf, "non-finite"),
])
def test_non_finite_weights_are_refused(tmp_path, key, value, words):
    def edit(h5):
        for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
            data = group[name][()]
            data.flat[0] = value
            group[name][...] = data

    expect_error(with_weights(tmp_path, edit), key, words)


@pytest.mark.parametrize(("value", "words"), [
    (0.0, "must be in [1e-06, 1e+09]"), (-1.0, "must be in [1e-06"), (1e-30, "must be in [1e-06"), (1e12, "1e+09]"),
    (np.nan, "finite"), ("3.25", "must be a real number"),
])
@pytest.mark.parametrize("name", ["intensity_scale", "probe_scale"])
def test_the_scales_must_lie_in_a_plausible_range(tmp_path, name, value, words):
    # intensity_scale = 1e-30 was loaded, and infer wrote amplitudes up to 2,981 without a word
    expect_error(with_weights(tmp_path, lambda h5: h5.attrs.__setitem__(name, value)), name, words)


def test_a_bundle_with_an_implausible_scale_is_not_written(tmp_path):
    autoencoder, diffraction_to_obj = make_models()
    diffraction_to_obj.intensity_scale.fill_(1e-30)
    with pytest.raises(BundleError, match=r"intensity_scale is 1\.0*3?\d*e-30; it must be in \[1e-06"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, architecture())
    assert not (tmp_path / "wts.h5.zip").exists()


def test_all_zero_probe_is_refused(tmp_path):
    def edit(h5):
        for group in (h5, h5["autoencoder"]):
            group["probe"][...] = np.zeros((N, N), np.complex64)

    expect_error(with_weights(tmp_path, edit), "probe is zero everywhere")


def test_root_probe_must_equal_the_models_probe(tmp_path):
    # This check could never fire while the model's probe buffer aliased the root array.
    def edit(h5):
        data = h5["probe"][()]
        data[3, 4] += 1
        h5["probe"][...] = data

    expect_error(with_weights(tmp_path, edit), "root dataset 'probe' differs from the autoencoder's probe buffer")


@pytest.mark.parametrize(("architecture_json", "words"), [
    ('{"N": 32.0, "gridsize": 1, "n_filters_scale": 0.125}', ("field 'N'", "expected an integer", "32.0")),
    ('{"N": 32, "gridsize": -1, "n_filters_scale": 0.125}', ("field 'gridsize'", "[1, 3]")),
    ('{"N": 32, "gridsize": 1, "n_filters_scale": 20}', ("n_filters_scale", "(0, 16]")),
    ('{"N": 1024, "gridsize": 1, "n_filters_scale": 16}', ("values in model", "more than the 33554432")),
    ('{"N": 33, "gridsize": 1, "n_filters_scale": 0.125}', ("field 'N'", "multiple of 2")),
    ('{"N": 32, "gridsize": 1, "n_filters_scale": 0.125, "evil": 1}', ("unknown field", "evil")),
    ('{"gridsize": 1, "n_filters_scale": 0.125}', ("lacks the field 'N'",)),
    ('{"N": 32, "gridsize": 1, "n_filters_scale": NaN}', ("not valid JSON",)),
    ('[' * 5000 + ']' * 5000, ("nested deeper",)),
])
def test_architecture_fields_are_checked_by_type_and_range(tmp_path, architecture_json, words):
    expect_error(with_weights(tmp_path, lambda h5: h5.attrs.__setitem__("architecture", architecture_json)), "architecture", *words)


def test_every_architecture_field_has_allowed_values():
    # Adding a field to Architecture means adding its row to ARCHITECTURE_LIMITS.
    assert sorted(f.name for f in dataclasses.fields(Architecture)) == sorted(schema.ARCHITECTURE_LIMITS)


def test_bundle_without_a_defaulted_architecture_field_loads_with_the_default(tmp_path):
    # An older bundle that predates a field (here: n_filters_scale, default 1.0) still loads.
    path = tmp_path / "old.zip"
    old = Architecture(N=N, gridsize=1)  # n_filters_scale = 1.0, the default
    torch.manual_seed(0)
    autoencoder, diffraction_to_obj = build_models(old, np.ones((N, N), np.complex64), 2.0)
    save_bundle(path, autoencoder, diffraction_to_obj, old)
    text = json.dumps({"N": N, "gridsize": 1})
    weights = edit_weights(read_members(path)["wts.h5"], lambda h5: h5.attrs.__setitem__("architecture", text))
    assert load_bundle(repack(path, tmp_path / "older.zip", {"wts.h5": weights})).architecture == old


def test_unknown_root_items_are_refused_not_ignored(tmp_path):
    expect_error(with_weights(tmp_path, lambda h5: h5.create_dataset("probe_scale", data=2.0)), "unexpected root item", "probe_scale")
    expect_error(with_weights(tmp_path, lambda h5: h5.attrs.__setitem__("extra", 1)), "unexpected root item", "@extra")


# --- the child process: crash, hang and refusal become BundleErrors ----------------------------


@pytest.mark.parametrize(("script", "words"), [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", ("crashed the HDF5 library", "SIGSEGV")),
    ("import os, signal; os.kill(os.getpid(), signal.SIGABRT)", ("crashed the HDF5 library", "SIGABRT")),
    ("import time; time.sleep(30)", ("took longer than 1 s",)),
    ("x = bytearray(1 << 40)", ("not a readable HDF5 file", "MemoryError")),
    ("raise SystemExit(3)", ("no message",)),
])
def test_a_crashing_or_hanging_reader_is_a_bundle_error(tmp_path, monkeypatch, script, words):
    child = tmp_path / "child.py"
    child.write_text("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
                     "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n" + script + "\n")
    path = saved(tmp_path)
    monkeypatch.setattr(sandbox, "HDF5_CHILD", child)
    monkeypatch.setattr(sandbox, "HDF5_TIMEOUT_S", 1)
    expect_error(path, "wts.h5", *words)


def test_the_child_and_its_parent_share_the_exit_code_and_the_wire_format():
    # The child runs isolated (python -I) and cannot import the package, so both sides state the
    # refusal's exit status and the output format: this pins that they agree.
    from ptycho.bundle import _hdf5_child

    assert _hdf5_child.REFUSED == sandbox.HDF5_REFUSED
    buffer = io.BytesIO()
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(buffer, "w") as h5:
        h5.attrs["architecture"] = '{"N": 32}'
        h5.attrs["intensity_scale"] = 2.5
        h5.create_group("model").create_dataset("layer.weight", data=weights)
        h5.create_dataset("probe", data=np.full((2, 2), 1 - 2j, dtype=np.complex64))
    groups, texts, arrays = sandbox.parse_hdf5("test", buffer.getvalue())  # through the real child
    assert groups == ["model"] and texts == {"architecture": '{"N": 32}'}
    assert sorted(arrays) == ["@intensity_scale", "model/layer.weight", "probe"]
    np.testing.assert_array_equal(arrays["model/layer.weight"], weights)
    assert arrays["probe"].dtype == np.complex64 and arrays["probe"][1, 1] == 1 - 2j
    assert float(arrays["@intensity_scale"]) == 2.5
    # A refusal (exit status REFUSED) is reported with the child's reason, not as an unreadable file.
    with h5py.File(buffer, "a") as h5:
        h5["alias"] = h5py.SoftLink("/probe")
    with pytest.raises(BundleError, match=r"^test: 'alias' is a soft link; only hard links are read$"):
        sandbox.parse_hdf5("test", buffer.getvalue())


def test_libhdf5_never_runs_in_the_loading_process(tmp_path, monkeypatch):
    path = saved(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_bundle opened HDF5 in its own process")

    monkeypatch.setattr(h5py, "File", forbidden)
    assert load_bundle(path).architecture == architecture()


@pytest.mark.parametrize("text", [b"[" * 5000 + b"]" * 5000, b'{"model": {"n_neighbours": 1e999}}', b"{oops"])
def test_json_extras_are_parsed_with_limits_on_loading(tmp_path, text):
    # infer reads config.json; a crafted one must fail here, as a BundleError, not there.
    expect_error(repack(saved(tmp_path), tmp_path / "bad.zip", {"config.json": text}), "config.json")


def test_save_refuses_what_load_would_refuse(tmp_path):
    autoencoder, diffraction_to_obj = make_models()
    with torch.no_grad():
        diffraction_to_obj.backbone.encoder[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(BundleError, match="non-finite"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, architecture())
    big = Architecture(N=N, gridsize=1, n_filters_scale=16.0)
    with pytest.raises(BundleError, match="more than the 33554432"):
        save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, big)
    assert not (tmp_path / "wts.h5.zip").exists()


def test_a_root_scalar_added_later_takes_its_default_in_older_bundles(tmp_path, monkeypatch):
    # How a new root attribute (as probe_scale was in format 2) is read from bundles that
    # predate it: with a default it loads, without one it is required.
    rows = {**schema.ROOT_SCALARS, "future_scale": schema.Allowed(0.0, above=True, default=1.0)}
    monkeypatch.setattr(read, "ROOT_SCALARS", rows)
    assert load_bundle(saved(tmp_path)).architecture == architecture()
    rows["future_scale"] = schema.Allowed(0.0, above=True)  # no default: required
    expect_error(saved(tmp_path, name="b.zip"), "lacks the root attribute 'future_scale'")


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
    # Not bit-exact: the CPU's instruction set decides the last bits of a convolution (measured:
    # 201 of 1,024 values differ by up to 8e-8 on another x86 CPU, for values up to 0.51).
    np.testing.assert_allclose(output.numpy(), np.load(data / "bundle_format1_output.npy"), rtol=1e-5, atol=1e-6)


def test_a_format2_bundle_with_the_old_word_network_loads(tmp_path):
    # Formats 1 and 2 named the backbone "network" in the architecture JSON; format 3 says
    # "backbone". A format-2 bundle (the same weights, the old word, format_version 2) loads.
    path = saved(tmp_path)
    new = json.loads(h5py.File(io.BytesIO(read_members(path)["wts.h5"]), "r").attrs["architecture"])
    assert "backbone" in new and "network" not in new

    def as_format2(h5):
        old = {("network" if key == "backbone" else key): value for key, value in new.items()}
        h5.attrs["architecture"] = json.dumps(old, sort_keys=True)
        h5.attrs["format_version"] = 2

    weights = edit_weights(read_members(path)["wts.h5"], as_format2)
    older = repack(path, tmp_path / "format2.zip", {"wts.h5": weights}, manifest={"format_version": 2})
    assert load_bundle(older).architecture == load_bundle(path).architecture
    # in format 3 the old word is an unknown field
    current = repack(path, tmp_path / "format3.zip", {"wts.h5": edit_weights(weights, lambda h5: h5.attrs.__setitem__("format_version", 3))},
                     manifest={"format_version": 3})
    expect_error(current, "unknown field", "network")


@pytest.mark.parametrize("gridsize", [1, 2])
def test_every_architecture_round_trips_with_a_wide_window(tmp_path, gridsize):
    # The second backbone (physics projection + U-Net, its probe and scales as buffers) and a
    # window wider than N/2 (a defocused probe) round-trip like the reference CNN.
    for network in BACKBONE_NAMES:
        wide = Architecture(N=N, gridsize=gridsize, n_filters_scale=0.125, backbone=network, window_px=24)
        torch.manual_seed(0)
        probe = np.exp(1j * np.linspace(0, 3, N * N)).reshape(N, N).astype(np.complex64)
        autoencoder, diffraction_to_obj = build_models(wide, probe, intensity_scale=2.0, probe_scale=30.0)
        path = tmp_path / f"{network}.zip"
        save_bundle(path, autoencoder, diffraction_to_obj, wide)
        loaded = load_bundle(path)
        assert loaded.architecture == wide and loaded.probe_scale == pytest.approx(30.0)
        amplitudes, offsets = inputs(gridsize)
        diffraction_to_obj.eval()
        with torch.no_grad():
            expected = diffraction_to_obj(amplitudes, offsets)
            assert torch.equal(loaded.diffraction_to_obj(amplitudes, offsets), expected)
        outside = torch.ones(N, N, dtype=torch.bool)
        outside[4:28, 4:28] = False  # the 24 px window is centred: rows and columns 4 ... 27
        assert torch.all(expected[..., outside] == 0)


@pytest.mark.parametrize("name", ["architecture", "package_version"])
def test_fixed_length_byte_string_attributes_are_read(tmp_path, name):
    # h5py decodes them with the ascii codec, imported lazily: the HDF5 child's file limit
    # blocked that import ("Too many open files: .../encodings/ascii.py") until the child
    # imported it before lowering the limit.
    def as_fixed_bytes(h5):
        value = h5.attrs[name]
        text = value if isinstance(value, str) else value.decode()
        del h5.attrs[name]
        h5.attrs.create(name, np.bytes_(text.encode()))

    loaded = load_bundle(with_weights(tmp_path, as_fixed_bytes))
    assert loaded.architecture == architecture()


@pytest.mark.parametrize("gridsize", [2, 3])
def test_canonical_grouping_round_trips_with_its_offset_encoding(tmp_path, gridsize):
    shape = Architecture(N=N, gridsize=gridsize, n_filters_scale=0.125, grouping="canonical")
    torch.manual_seed(0)
    autoencoder, diffraction_to_obj = build_models(shape, np.ones((N, N), np.complex64), intensity_scale=2.0)
    with torch.no_grad():  # a trained encoding (it starts at zero): the offsets change the output
        diffraction_to_obj.offset_encoding.weight.normal_()
    save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, shape, extras=EXTRAS)
    loaded = load_bundle(tmp_path / "wts.h5.zip")
    assert loaded.architecture == shape and loaded.manifest["format_version"] == FORMAT_VERSION
    amplitudes, offsets = inputs(gridsize)
    diffraction_to_obj.eval()
    with torch.no_grad():
        output = loaded.diffraction_to_obj(amplitudes, offsets)
        assert torch.equal(output, diffraction_to_obj(amplitudes, offsets))
        assert not torch.allclose(output, loaded.diffraction_to_obj(amplitudes, offsets * 0))


def test_offset_planes_round_trip_and_older_bundles_read_as_the_encoding(tmp_path):
    shape = Architecture(N=N, gridsize=2, n_filters_scale=0.125, grouping="canonical", offset_input="planes")
    torch.manual_seed(0)
    autoencoder, diffraction_to_obj = build_models(shape, np.ones((N, N), np.complex64), intensity_scale=2.0)
    assert diffraction_to_obj.offset_encoding is None  # the planes replace the learned encoding
    save_bundle(tmp_path / "wts.h5.zip", autoencoder, diffraction_to_obj, shape, extras=EXTRAS)
    loaded = load_bundle(tmp_path / "wts.h5.zip")
    assert loaded.architecture == shape
    amplitudes, offsets = inputs(2)
    diffraction_to_obj.eval()
    with torch.no_grad():
        output = loaded.diffraction_to_obj(amplitudes, offsets)
        assert torch.equal(output, diffraction_to_obj(amplitudes, offsets))
        assert not torch.allclose(output, loaded.diffraction_to_obj(amplitudes, offsets * 0))
    # A bundle written before the field existed has no 'offset_input': it is the encoding.
    older = shape.to_dict()
    del older["offset_input"]
    assert schema.parse_architecture("wts.h5", json.dumps(older)).offset_input == "encoding"
