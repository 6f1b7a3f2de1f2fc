"""Mutants of a valid bundle, NPZ, CXI and ptychodus scan, and a crash-proof runner for the loaders.

Used by tests/test_fuzz.py. Every mutant is (kind, bytes) (a ptychodus mutant: (kind,
{file name: bytes}), a scan folder); ``bundle_mutants``, ``npz_mutants``, ``cxi_mutants`` and
``ptychodus_mutants`` make them from one valid file with a seeded generator. ``run_mutants`` writes
them to a folder and loads them in a worker process (tests/fuzz_worker.py), restarting the
worker after a crash or a hang, so a segfault or an endless loop is counted, not fatal.

The folder also holds planted files that a mutant may point at: ``marker.bin`` (raw float32
MARKER values) and ``marker.h5`` (an HDF5 file with MARKER datasets). A loaded weight equal to
MARKER is a read outside the bundle.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import select
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

MARKER = np.float32(1234.5678)
WORKER = Path(__file__).with_name("fuzz_worker.py")
OK_OUTCOMES = ("refused", "loaded")


# ---------------------------------------------------------------------------------------------
# raw zip writing: full control over names, methods, flags and declared sizes


def raw_zip(entries: list[dict]) -> bytes:
    """A zip from entries {name: bytes, data: bytes (already compressed), method, crc, size, csize, flags}.

    Missing fields default to a stored member with honest sizes and CRC.
    """
    out, central = io.BytesIO(), io.BytesIO()
    for entry in entries:
        name, data = entry["name"], entry["data"]
        method = entry.get("method", 0)
        crc = entry.get("crc", zlib.crc32(data) if method == 0 else 0)
        size = entry.get("size", len(data))
        csize = entry.get("csize", len(data))
        flags = entry.get("flags", 0)
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, csize, size, len(name), 0))
        out.write(name + data)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, flags, method, 0, 0x21, crc, csize, size,
                len(name), 0, 0, 0, 0, 0o100644 << 16, offset,
            )
        )
        central.write(name)
    start = out.tell()
    directory = central.getvalue()
    out.write(directory)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), start, 0))
    return out.getvalue()


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@functools.cache
def zero_bomb(n_mib: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` and ``n_mib`` MiB of zeros (about 1 KiB per MiB), and its CRC-32.

    Built from one compressed MiB repeated: a full flush resets the compressor, so every
    MiB of zeros compresses to the same bytes.
    """
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    crc = zlib.crc32(prefix)
    for _ in range(n_mib):
        crc = zlib.crc32(zeros, crc)
    return head + block * n_mib + tail, crc


def _entry(name: str, data: bytes) -> dict:
    packed = deflated(data)
    return {"name": name.encode("utf-8"), "data": packed, "method": 8, "crc": zlib.crc32(data), "size": len(data),
            "csize": len(packed)}


def zip_members(members: dict[str, bytes], **overrides) -> bytes:
    """Deflated members in order; ``overrides`` {name: {field: value}} patch single entries."""
    return raw_zip([{**_entry(name, data), **overrides.get(name, {})} for name, data in members.items()])


def read_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def with_manifest(members: dict[str, bytes], manifest_changes: dict | None = None) -> dict[str, bytes]:
    """Members with a manifest whose checksums match them (then ``manifest_changes`` applied)."""
    members = dict(members)
    manifest = json.loads(members.pop("manifest.json"))
    manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    manifest.update(manifest_changes or {})
    return {"manifest.json": json.dumps(manifest).encode(), **members}


# ---------------------------------------------------------------------------------------------
# bundle mutants


def _h5_edit(weights: bytes, edit) -> bytes:
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    return buffer.getvalue()


def _replace_dataset(group, key, **kwargs):
    del group[key]
    group.create_dataset(key, **kwargs)


def _weights_edits(folder: Path) -> list[tuple[str, object]]:
    """(kind, edit of an open h5py.File) for structural HDF5 mutants."""
    key = "backbone.encoder.0.weight"
    marker_bin = str(folder / "marker.bin")
    edits: list[tuple[str, object]] = []

    def external(path, offset=0):
        def edit(h5):
            shape = h5["diffraction_to_obj"][key].shape
            for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
                _replace_dataset(group, name, shape=shape, dtype=np.float32, external=[(path, offset, h5py.h5f.UNLIMITED)])
        return edit

    edits += [("h5-external-storage", external(marker_bin)), ("h5-external-storage", external("marker.bin")),
              ("h5-external-storage", external("/etc/hostname")), ("h5-external-storage", external("/proc/self/environ"))]

    def virtual(path):
        def edit(h5):
            shape = h5["diffraction_to_obj"][key].shape
            layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
            layout[...] = h5py.VirtualSource(path, "marker", shape=shape)
            for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
                del group[name]
                group.create_virtual_dataset(name, layout, fillvalue=0)
        return edit

    edits += [("h5-virtual-dataset", virtual(str(folder / "marker.h5"))), ("h5-virtual-dataset", virtual("marker.h5"))]

    def soft(h5):
        group = h5["diffraction_to_obj"]
        del group[key]
        group[key] = h5py.SoftLink(f"/autoencoder/diffraction_to_obj.{key}")

    def soft_loop(h5):
        group = h5["diffraction_to_obj"]
        del group[key]
        group[key] = h5py.SoftLink(f"/diffraction_to_obj/{key}")

    def external_link(path):
        def edit(h5):
            for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
                del group[name]
                group[name] = h5py.ExternalLink(path, "/marker")
        return edit

    def external_group(h5):
        del h5["autoencoder"]
        h5["autoencoder"] = h5py.ExternalLink(str(folder / "marker.h5"), "/")

    edits += [("h5-soft-link", soft), ("h5-soft-link", soft_loop),
              ("h5-external-link", external_link(str(folder / "marker.h5"))), ("h5-external-link", external_link("marker.h5")),
              ("h5-external-link", external_group)]

    def hard_alias(h5):  # the same dataset under two names: legal, and harmless
        group = h5["diffraction_to_obj"]
        data = group[key][()]
        del group[key]
        group[key] = h5["autoencoder"][f"diffraction_to_obj.{key}"]
        assert np.array_equal(group[key][()], data)

    def group_loop(h5):
        h5["diffraction_to_obj"]["loop"] = h5["diffraction_to_obj"]

    edits += [("h5-hard-link", hard_alias), ("h5-group-loop", group_loop)]

    for shape in [(20000, 20000), (2**30, 2**30), (2**16, 2**16, 16), (0,), (1, 0, 3, 3)]:
        def huge(h5, shape=shape):
            _replace_dataset(h5["diffraction_to_obj"], key, shape=shape, dtype=np.float32)  # never written
        edits.append(("h5-huge-declared-shape", huge))

    def huge_filled(h5):
        _replace_dataset(h5["diffraction_to_obj"], key, shape=(4096, 4096), dtype=np.float32, chunks=(256, 256),
                         compression="gzip", fillvalue=MARKER)
    edits.append(("h5-compressed-chunked", huge_filled))

    def chunked(h5):
        data = h5["diffraction_to_obj"][key][()]
        _replace_dataset(h5["diffraction_to_obj"], key, data=data, chunks=True)
    edits.append(("h5-compressed-chunked", chunked))

    for dtype in (np.float64, np.float16, np.int32, np.int64, np.complex64, np.bool_, ">f4", "S8", h5py.string_dtype()):
        def retype(h5, dtype=dtype):
            data = h5["diffraction_to_obj"][key][()]
            if np.dtype(dtype).kind in "SO":
                _replace_dataset(h5["diffraction_to_obj"], key, shape=data.shape, dtype=dtype)
            else:
                _replace_dataset(h5["diffraction_to_obj"], key, data=data.astype(dtype))
        edits.append(("h5-wrong-dtype", retype))

    def compound(h5):
        data = h5["diffraction_to_obj"][key][()]
        rec = np.zeros(data.shape, dtype=[("a", "<f4"), ("b", "<i4")])
        _replace_dataset(h5["diffraction_to_obj"], key, data=rec)
    edits.append(("h5-wrong-dtype", compound))

    def reference(h5):
        _replace_dataset(h5["diffraction_to_obj"], key, shape=(2,), dtype=h5py.ref_dtype)
    edits.append(("h5-wrong-dtype", reference))

    for value in (np.nan, np.inf, -np.inf):
        def nonfinite(h5, value=value):
            for group, name in ((h5["diffraction_to_obj"], key), (h5["autoencoder"], f"diffraction_to_obj.{key}")):
                data = group[name][()]
                data.flat[3] = value
                group[name][...] = data
        edits.append(("h5-nonfinite-weight", nonfinite))

    def null_space(h5):
        _replace_dataset(h5["diffraction_to_obj"], key, data=h5py.Empty("f4"))
    edits.append(("h5-wrong-shape", null_space))

    def scalar_shape(h5):
        _replace_dataset(h5["diffraction_to_obj"], key, data=np.float32(1))
    edits.append(("h5-wrong-shape", scalar_shape))

    def many_axes(h5):
        _replace_dataset(h5["diffraction_to_obj"], key, data=np.zeros((1,) * 20, np.float32))
    edits.append(("h5-wrong-shape", many_axes))

    # architecture attribute
    architectures = [
        {"N": 64.0, "gridsize": 1, "n_filters_scale": 0.125}, {"N": 32, "gridsize": -1, "n_filters_scale": 0.125},
        {"N": 32, "gridsize": 1, "n_filters_scale": 20}, {"N": 32, "gridsize": 1, "n_filters_scale": 16},
        {"N": 2, "gridsize": 1, "n_filters_scale": 0.125}, {"N": 31, "gridsize": 1, "n_filters_scale": 0.125},
        {"N": 4096, "gridsize": 1, "n_filters_scale": 0.125}, {"N": 10**30, "gridsize": 1, "n_filters_scale": 1},
        {"N": "32", "gridsize": 1, "n_filters_scale": 0.125}, {"N": True, "gridsize": 1, "n_filters_scale": 0.125},
        {"N": None, "gridsize": 1, "n_filters_scale": 0.125}, {"N": [32], "gridsize": 1, "n_filters_scale": 0.125},
        {"N": 32, "gridsize": 1, "n_filters_scale": 0}, {"N": 32, "gridsize": 1, "n_filters_scale": -1},
        {"N": 32, "gridsize": 1, "n_filters_scale": 1e308}, {"N": 32, "gridsize": 3, "n_filters_scale": 0.125},
        {"N": 32, "gridsize": 2, "n_filters_scale": 0.125}, {"N": 64, "gridsize": 1, "n_filters_scale": 0.125},
        {"N": 32, "gridsize": 1}, {"gridsize": 1, "n_filters_scale": 0.125},
        {"N": 32, "gridsize": 1, "n_filters_scale": 0.125, "evil": 1}, {}, [], 3, "text", None,
    ]
    texts = [json.dumps(a) for a in architectures] + [
        '{"N": 32, "gridsize": 1, "n_filters_scale": NaN}', '{"N": 32, "gridsize": 1, "n_filters_scale": Infinity}',
        '{"N": 32, "gridsize": 1, "n_filters_scale": 1e999}', '{"N": ' + "9" * 5000 + ', "gridsize": 1}',
        '{"N": ' + "9" * 4000 + ', "gridsize": 1}', "[" * 100000 + "]" * 100000, '{"a":' * 5000 + "1" + "}" * 5000,
        "{not json", "\udcff", "x" * 200000,
    ]
    for text in texts:
        def arch(h5, text=text):
            h5.attrs["architecture"] = text.encode("utf-8", "surrogateescape") if "\udcff" in text else text
        edits.append(("h5-architecture", arch))

    def arch_number(h5):
        h5.attrs["architecture"] = 32
    edits.append(("h5-architecture", arch_number))

    def arch_array(h5):
        h5.attrs["architecture"] = np.array(["a", "b"], dtype=h5py.string_dtype())
    edits.append(("h5-architecture", arch_array))

    for value in (0.0, -1.0, np.nan, np.inf, "3.25", np.array([3.25, 1.0]), 1e300, np.complex64(3.25), True, 2**63 - 1):
        def scale(h5, value=value):
            h5.attrs["intensity_scale"] = value
        edits.append(("h5-intensity-scale", scale))

    def no_scale(h5):
        del h5.attrs["intensity_scale"]
    edits.append(("h5-intensity-scale", no_scale))

    def probe_edit(transform):
        def edit(h5):
            probe = transform(h5["probe"][()])
            for group, name in ((h5, "probe"), (h5["autoencoder"], "probe")):
                _replace_dataset(group, name, data=probe)
        return edit

    for transform in (np.zeros_like, lambda p: p * np.nan, lambda p: p.astype(np.complex128), lambda p: p[:-1],
                      lambda p: p.real.astype(np.float32), lambda p: np.tile(p, (2, 2))):
        edits.append(("h5-probe", probe_edit(transform)))

    def root_probe_only(h5):
        data = h5["probe"][()]
        data[0, 0] += 1
        h5["probe"][...] = data
    edits.append(("h5-probe", root_probe_only))

    def no_probe(h5):
        del h5["probe"]
    edits.append(("h5-probe", no_probe))

    def nested_group(h5):
        h5["diffraction_to_obj"].create_group("sub").create_dataset("x", data=np.ones(3, np.float32))
    edits.append(("h5-structure", nested_group))

    def named_type(h5):
        h5["diffraction_to_obj"]["type"] = np.dtype("f4")
    edits.append(("h5-structure", named_type))

    def extra_group(h5):
        h5.create_group("extra").create_dataset("x", data=np.ones(3, np.float32))
    edits.append(("h5-structure", extra_group))

    def many_attrs(h5):
        for i in range(200):
            h5.attrs[f"a{i}"] = i
    edits.append(("h5-structure", many_attrs))

    def big_attr(h5):
        h5.attrs["big"] = np.zeros(10000, np.float32)
    edits.append(("h5-structure", big_attr))

    def many_datasets(h5):
        group = h5.create_group("many")
        for i in range(5000):
            group.create_dataset(str(i), data=np.float32(i))
    edits.append(("h5-structure", many_datasets))

    def missing_group(h5):
        del h5["diffraction_to_obj"]
    edits.append(("h5-structure", missing_group))

    def group_as_dataset(h5):
        del h5["diffraction_to_obj"]
        h5.create_dataset("diffraction_to_obj", data=np.ones(3, np.float32))
    edits.append(("h5-structure", group_as_dataset))

    def shared_differs(h5):
        data = h5["diffraction_to_obj"][key][()]
        data.flat[0] += 1
        h5["diffraction_to_obj"][key][...] = data
    edits.append(("h5-structure", shared_differs))

    def buffer_scale_differs(h5):
        h5["diffraction_to_obj"]["intensity_scale"][()] = np.float32(7.0)
        h5["autoencoder"]["diffraction_to_obj.intensity_scale"][()] = np.float32(7.0)
    edits.append(("h5-structure", buffer_scale_differs))
    return edits


Mutant = tuple[str, "functools.partial[bytes]"]  # (kind, a call that makes the bytes)

# sha256 and CRC-32 of 1 GiB of zeros (computed once; hashing a GiB takes seconds)
ZEROS_GIB_SHA256 = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"
ZEROS_GIB_CRC32 = 1533330096


def _repacked(members: dict[str, bytes], changes: dict[str, bytes | None], manifest_changes=None, **overrides) -> bytes:
    """Members changed (None: removed) with a manifest whose checksums match, then edited."""
    new = dict(members)
    for name, data in changes.items():
        if data is None:
            new.pop(name, None)
        else:
            new[name] = data
    return zip_members(with_manifest(new, manifest_changes), **overrides)


def _edited_weights(members: dict[str, bytes], edit) -> bytes:
    return _repacked(members, {"wts.h5": _h5_edit(members["wts.h5"], edit)})


def _flipped(data: bytes, positions: np.ndarray, values: np.ndarray, xor: bool) -> bytes:
    out = bytearray(data)
    for position, value in zip(positions, values):
        out[position] = out[position] ^ int(value) if xor else int(value)
    return bytes(out)


def _flipped_weights(members: dict[str, bytes], positions, values, xor) -> bytes:
    return _repacked(members, {"wts.h5": _flipped(members["wts.h5"], positions, values, xor)})


def _bomb_bundle(members: dict[str, bytes], declared: int, listed: bool) -> bytes:
    """history.csv replaced by 1 GiB of zeros (1 MB deflated), declaring ``declared`` bytes;
    ``listed``: the manifest carries the bomb's true sha256."""
    bomb, _ = zero_bomb(1024)
    source = with_manifest(members)
    if listed:
        manifest = json.loads(source["manifest.json"])
        manifest["members"]["history.csv"] = ZEROS_GIB_SHA256
        source["manifest.json"] = json.dumps(manifest).encode()
    entries = [_entry(n, d) for n, d in source.items() if n != "history.csv"]
    entries.append({"name": b"history.csv", "data": bomb, "method": 8, "crc": ZEROS_GIB_CRC32, "size": declared})
    return raw_zip(entries)


def _bombs_sharing_data(members: dict[str, bytes]) -> bytes:
    bomb, _ = zero_bomb(1024)
    entries = [_entry(n, d) for n, d in with_manifest({**members, "bomb.bin": b""}).items()]
    entries += [{"name": f"bomb{i}.bin".encode(), "data": bomb, "method": 8, "crc": ZEROS_GIB_CRC32, "size": 1 << 30}
                for i in range(3)]
    return raw_zip(entries)


def bundle_mutants(base: bytes, folder: Path, rng: np.random.Generator, n_random: int) -> list[Mutant]:
    """Structural mutants (all of them) plus ``n_random`` random ones of each random kind.

    Each mutant is made only when its call runs, so a sample of them is cheap.
    """
    members = read_members(base)
    weights = members["wts.h5"]
    mutants: list[Mutant] = []

    def add(kind: str, make, *args, **kwargs) -> None:
        mutants.append((kind, functools.partial(make, *args, **kwargs)))

    # HDF5 structure, checksums recomputed
    for kind, edit in _weights_edits(folder):
        add(kind, _edited_weights, members, edit)

    # the global heap that holds the string attributes: object sizes and indices edited. One
    # byte here made libhdf5 loop for ever (found by an exhaustive single-byte search).
    for text in (b'{"N": ', b"0.1.0"):
        start = weights.index(text)
        for offset, values in ((-8, (0, 0xFF)), (-7, (0xFF,)), (-1, (0x7F,)), (-16, (0, 0xFF)), (-14, (0xFF,))):
            for value in values:
                add("h5-global-heap", _flipped_weights, members, np.array([start + offset]), np.array([value]), False)

    # zip members removed / added / renamed
    for name in members:
        add("zip-member-removed", zip_members, {n: d for n, d in members.items() if n != name})
        if name != "manifest.json":
            add("zip-member-removed", _repacked, members, {name: None})
    for name in ["notes.txt", "../evil.txt", "/etc/evil", "a\\b.txt", "dir/", "x\x00y", "é.txt", "a" * 300,
                 "model.keras", "params.dill", ".hidden", "a/../../b", "con\nsole", "wts.h5.bak"]:
        add("zip-member-added", _repacked, members, {name: b"hello"})
        add("zip-member-added", zip_members, {**members, name: b"hello"})
    for old, new in [("wts.h5", "weights.h5"), ("history.csv", "../history.csv"), ("config.json", "/config.json"),
                     ("manifest.json", "MANIFEST.json"), ("wts.h5", "wts.h5/"), ("history.csv", "history\x01.csv")]:
        renamed = {(new if n == old else n): d for n, d in members.items()}
        add("zip-member-renamed", zip_members, renamed)
        if old != "manifest.json":
            add("zip-member-renamed", zip_members, with_manifest(renamed))
    add("zip-member-duplicated", raw_zip, [{"name": b"wts.h5", "data": weights}] + [{"name": n.encode(), "data": d} for n, d in members.items()])

    # methods, flags, names, declared sizes
    for method in (1, 6, 9, 12, 14, 93, 95, 98, 99, 255):
        add("zip-method", zip_members, members, **{"wts.h5": {"method": method}})
        add("zip-method", zip_members, members, **{"history.csv": {"method": method}})
    for flags in (0x1, 0x41, 0x800, 0x8, 0x20, 0x2000):
        add("zip-flags", zip_members, members, **{"wts.h5": {"flags": flags}})
    add("zip-flags", zip_members, members, **{"wts.h5": {"flags": 0x800, "name": b"wts\xff.h5"}})
    for size in (0, 1, len(weights) - 1, len(weights) + 1, 1 << 30, (1 << 32) - 1):
        add("zip-declared-size", zip_members, members, **{"wts.h5": {"size": size}})
        add("zip-declared-size", zip_members, members, **{"history.csv": {"size": size}})
    for csize in (0, 1, 10**9, (1 << 32) - 1):
        add("zip-declared-size", zip_members, members, **{"wts.h5": {"csize": csize}})

    # zip bombs: 1 GiB of zeros declared honestly, declared small, listed with its checksum or not
    for size in (1 << 30, 1000, len(members["history.csv"]), 0):
        for listed in (False, True):
            add("zip-bomb", _bomb_bundle, members, size, listed)
    add("zip-bomb", _bombs_sharing_data, members)

    # manifest edits, checksums recomputed
    manifest_changes = [
        {"format": "other"}, {"format": None}, {"format": ["ptycho-bundle"]}, {"backend": "tensorflow"}, {"backend": 1},
        {"format_version": 0}, {"format_version": 3}, {"format_version": 1.0}, {"format_version": "1"},
        {"format_version": True}, {"format_version": 10**30}, {"format_version": -1}, {"models": ["autoencoder"]},
        {"models": [1, "a"]}, {"models": "autoencoder"}, {"models": None}, {"members": []}, {"members": {"wts.h5": 1}},
        {"members": {"wts.h5": "00"}}, {"members": None}, {"package_version": {"a": [1] * 1000}},
        {"members": {"wts.h5": "z" * 64}}, {"extra_key": "ignored"},
    ]
    for change in manifest_changes:
        add("manifest-edit", _repacked, members, {}, change)
    manifest_texts = [
        b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe{}", b"[" * 100000 + b"]" * 100000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"format_version": ' + b"9" * 5000 + b"}", b'{"format_version": NaN}', b'{"format_version": 1e999}',
        b" " * (2 << 20), b'{"format": "ptycho-bundle"}',
    ]
    for text in manifest_texts:
        add("manifest-text", zip_members, {**members, "manifest.json": text})
    manifest = json.loads(with_manifest(members)["manifest.json"])
    for broken in ({**manifest, "members": {**manifest["members"], "wts.h5": "0" * 64}},
                   {**manifest, "members": {**manifest["members"], "manifest.json": "0" * 64}},
                   {**manifest, "members": {k: v for k, v in manifest["members"].items() if k != "wts.h5"}}):
        add("manifest-edit", zip_members, {**members, "manifest.json": json.dumps(broken).encode()})

    # random: byte flips and truncations of the zip, and of wts.h5 with checksums recomputed
    def draws(size: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        count = int(rng.integers(1, 9))
        return rng.integers(0, size, count), rng.integers(low, high, count)

    for _ in range(n_random):
        add("zip-byte-flip", _flipped, base, *draws(len(base), 1, 256), True)
        add("zip-truncated", bytes.__getitem__, base, slice(0, int(rng.integers(0, len(base)))))
        add("h5-byte-flip", _flipped_weights, members, *draws(len(weights), 1, 256), True)
        # bytes set at random in the first 4 KiB: superblock, root object header, B-tree, heap
        add("h5-metadata-byte-flip", _flipped_weights, members, *draws(min(4096, len(weights)), 0, 256), False)
        add("h5-truncated", _repacked, members, {"wts.h5": weights[: int(rng.integers(0, len(weights)))]})
    return mutants


def plant_markers(folder: Path, count: int = 1 << 16) -> None:
    """Files a mutant may point at; their values must never appear in a loaded model."""
    (folder / "marker.bin").write_bytes(np.full(count, MARKER, np.float32).tobytes())
    with h5py.File(folder / "marker.h5", "w") as h5:
        h5.create_dataset("marker", data=np.full(count, MARKER, np.float32))
        for name in ("autoencoder", "diffraction_to_obj"):
            h5.create_group(name)


# ---------------------------------------------------------------------------------------------
# NPZ mutants


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_with_header(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    body = header.encode("latin1")
    body += b" " * ((64 - (10 + len(body) + 1) % 64) % 64) + b"\n"
    length = struct.pack("<H", len(body)) if version == (1, 0) else struct.pack("<I", len(body))
    return b"\x93NUMPY" + bytes(version) + length + body + data


def npz_arrays(n_patterns: int = 6, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """A small valid canonical dataset (object present, positions inside it)."""
    rng = np.random.default_rng(seed)
    return {
        "diffraction": rng.random((n_patterns, size, size)).astype(np.float32) + 0.1,
        "xcoords": np.linspace(10.0, 20.0, n_patterns),
        "ycoords": np.linspace(12.0, 18.0, n_patterns),
        "probeGuess": (rng.random((size, size)) + 1j).astype(np.complex64),
        "objectGuess": np.ones((40, 40), np.complex64),
        "scan_index": np.arange(n_patterns, dtype=np.int64),
        "metadata": np.array(json.dumps({"nphotons": 1e5})),
    }


def npz_members(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {f"{key}.npy": _npy(value) for key, value in arrays.items()}


def npz_mutants(rng: np.random.Generator, n_random: int) -> list[tuple[str, bytes]]:
    """Mutants of a small valid NPZ (cheap to make, so made at once)."""
    arrays = npz_arrays()
    members = npz_members(arrays)
    base = zip_members(members)
    mutants: list[tuple[str, bytes]] = []

    def with_arrays(**changes) -> bytes:
        new = dict(arrays)
        for key, value in changes.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        return zip_members(npz_members(new))

    def with_member(name: str, data: bytes | None) -> bytes:
        new = dict(members)
        if data is None:
            new.pop(name, None)
        else:
            new[name] = data
        return zip_members(new)

    diffraction = arrays["diffraction"]
    # degenerate data
    mutants += [
        ("npz-degenerate", with_arrays(diffraction=np.zeros_like(diffraction))),
        ("npz-degenerate", with_arrays(probeGuess=np.zeros_like(arrays["probeGuess"]))),
        ("npz-degenerate", with_arrays(diffraction=diffraction[:1], xcoords=arrays["xcoords"][:1], ycoords=arrays["ycoords"][:1], scan_index=arrays["scan_index"][:1])),
        ("npz-degenerate", with_arrays(scan_index=np.array([0, 1, 2, 3, 4, -1]))),
        ("npz-degenerate", with_arrays(scan_index=np.array([0, 1, 2, 3, 4, 4]))),
    ]
    for size in (2, 4, 8, 14):
        mutants.append(("npz-degenerate", with_arrays(diffraction=diffraction[:, :size, :size].copy(), probeGuess=arrays["probeGuess"][:size, :size].copy(), objectGuess=None)))
    for key, value in (("diffraction", np.nan), ("diffraction", np.inf), ("diffraction", -1.0), ("xcoords", np.nan),
                       ("probeGuess", np.nan), ("objectGuess", np.inf), ("ycoords", -np.inf)):
        changed = arrays[key].copy()
        changed.flat[1] = value
        mutants.append(("npz-nonfinite-or-negative", with_arrays(**{key: changed})))

    # npy headers claiming huge or impossible shapes, odd dtypes
    for shape in ["(1000000000, 16, 16)", "(6, 16, 16000000000000)", "(-6, 16, 16)", "(6, 16, " + "9" * 5000 + ")",
                  "(6, 16, " + "9" * 40 + ")", "(6, 16)", "()", "(6, 16, 16, 1)", "(0, 16, 16)", "[6, 16, 16]",
                  "(6, 16, 16.0)", "(6, 16, 'a')"]:
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"
        mutants.append(("npy-header-shape", with_member("diffraction.npy", _npy_with_header(header, diffraction.tobytes()))))
    for descr in ["'|O'", "'<U1000000000'", "'<f16'", "'>f4'", "[('a', '<f4')]", "'V4'", "'<M8[s]'", "'b1'", "'<c8'",
                  "'<i8'", "'nope'", "42", "\"__import__('os').system('touch /tmp/pwned')\""]:
        header = "{'descr': " + descr + ", 'fortran_order': False, 'shape': (6, 16, 16), }"
        mutants.append(("npy-header-dtype", with_member("diffraction.npy", _npy_with_header(header, diffraction.tobytes()))))
    for header in ["{'descr': '<f4', 'fortran_order': True, 'shape': (6, 16, 16), }", "{}", "not a dict",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 16, 16), 'extra': 1}", "{" * 5000,
                   "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (6, 16, 16), }", "x" * 20000]:
        mutants.append(("npy-header-other", with_member("diffraction.npy", _npy_with_header(header, diffraction.tobytes()))))
    for version in ((2, 0), (3, 0), (9, 9)):
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 16, 16), }"
        mutants.append(("npy-header-other", with_member("diffraction.npy", _npy_with_header(header, diffraction.tobytes(), version))))
    mutants.append(("npy-header-other", with_member("diffraction.npy", b"\x93NUMPY")))
    mutants.append(("npy-header-other", with_member("diffraction.npy", b"not npy at all")))
    mutants.append(("npy-header-other", with_member("diffraction.npy", _npy(diffraction)[:-7])))
    mutants.append(("npy-header-other", with_member("diffraction.npy", _npy(diffraction) + b"trailing")))
    mutants.append(("npy-header-other", with_member("metadata.npy", _npy(np.array([{"a": 1}], dtype=object)))))

    # metadata JSON
    for text in ["[" * 100000 + "]" * 100000, '{"a":' * 3000 + "1" + "}" * 3000, '{"a":' * 40 + "1" + "}" * 40,
                 '{"nphotons": ' + "9" * 5000 + "}", '{"nphotons": ' + "9" * 4000 + "}", '{"nphotons": NaN}',
                 '{"nphotons": 1e999}', "{bad", "[]", '"x"', '{"diffraction_quantity": "intensity"}',
                 '{"diffraction_quantity": "photons"}', '{"diffraction_quantity": ["amplitude"]}', "\ud800"]:
        mutants.append(("npz-metadata", with_arrays(metadata=np.array(text))))
    mutants.append(("npz-metadata", with_arrays(metadata=np.array(b"\xff\xfe"))))
    mutants.append(("npz-metadata", with_arrays(metadata=np.array([1, 2]))))

    # members removed / added / renamed, methods, flags, declared sizes, bombs
    for name in members:
        mutants.append(("npz-member-removed", with_member(name, None)))
    for name in ["extra.npy", "../evil.npy", "notes.txt", "dir/", "a\x00.npy", "diff3d.npy", "a" * 300 + ".npy"]:
        mutants.append(("npz-member-added", with_member(name, _npy(np.ones(3)))))
    for old, new in [("diffraction.npy", "diff3d.npy"), ("probeGuess.npy", "probe.npy"), ("xcoords.npy", "xcoords")]:
        mutants.append(("npz-member-renamed", zip_members({(new if n == old else n): d for n, d in members.items()})))
    mutants.append(("npz-member-duplicated", raw_zip([{"name": n.encode(), "data": d} for n, d in members.items()] * 2)))
    for method in (1, 9, 12, 14, 99):
        mutants.append(("npz-zip-method", zip_members(members, **{"diffraction.npy": {"method": method}})))
    for flags in (0x1, 0x41, 0x8):
        mutants.append(("npz-zip-flags", zip_members(members, **{"diffraction.npy": {"flags": flags}})))
    for size in (0, 100, 1 << 30, (1 << 32) - 1):
        mutants.append(("npz-declared-size", zip_members(members, **{"diffraction.npy": {"size": size}})))
    # an npy member whose header honestly declares 1 GiB of float32 zeros, compressed to 1 MiB
    header = _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (268435456,), }")
    bomb, bomb_crc = zero_bomb(1024, header)
    entries = [_entry(n, d) for n, d in members.items()]
    for size in (len(header) + (1 << 30), 1000):
        bomb_entry = {"name": b"zeros.npy", "data": bomb, "method": 8, "crc": bomb_crc, "size": size, "csize": len(bomb)}
        mutants.append(("npz-bomb", raw_zip(entries + [bomb_entry])))
        mutants.append(("npz-bomb", raw_zip([e for e in entries if e["name"] != b"diffraction.npy"] + [{**bomb_entry, "name": b"diffraction.npy"}])))

    # random byte flips and truncations of the zip and of single members
    for _ in range(n_random):
        data = bytearray(base)
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] ^= int(rng.integers(1, 256))
        mutants.append(("npz-byte-flip", bytes(data)))
        mutants.append(("npz-truncated", base[: int(rng.integers(0, len(base)))]))
        name = list(members)[int(rng.integers(0, len(members)))]
        data = bytearray(members[name])
        for position in rng.integers(0, min(128, len(data)), rng.integers(1, 5)):  # the npy header
            data[position] = int(rng.integers(32, 127))
        mutants.append(("npy-header-byte-flip", with_member(name, bytes(data))))

    # the patterns stored uncompressed, as save_dataset writes them (load_dataset(by_rows=True) reads them in place)
    raw = members["diffraction.npy"]
    stored = {"data": raw, "method": 0, "crc": zlib.crc32(raw), "size": len(raw), "csize": len(raw)}
    base_stored = zip_members(members, **{"diffraction.npy": stored})
    mutants.append(("npz-stored", base_stored))
    for size in (0, 100, len(raw) - 4, len(raw) + 4, 1 << 30):
        mutants.append(("npz-stored-declared-size", zip_members(members, **{"diffraction.npy": {**stored, "size": size}})))
        mutants.append(("npz-stored-declared-size", zip_members(members, **{"diffraction.npy": {**stored, "size": size, "csize": size}})))
    data_start = base_stored.index(raw) + len(_npy(np.zeros((6, 16, 16), np.float32))) - diffraction.nbytes
    for _ in range(n_random):
        data = bytearray(base_stored)
        for position in rng.integers(data_start, data_start + diffraction.nbytes, rng.integers(1, 5)):
            data[position] ^= int(rng.integers(1, 256))
        mutants.append(("npz-stored-data-flip", bytes(data)))
        mutants.append(("npz-stored-truncated", base_stored[: int(rng.integers(0, len(base_stored)))]))
    return mutants


# ---------------------------------------------------------------------------------------------
# running


def run_mutants(loader: str, mutants: list, folder: Path, timeout_s: float = 20.0) -> list[dict]:
    """Load every mutant in a worker process; one result dict per mutant, in order.

    Outcomes: "refused" (BundleError/DataError), "loaded", "raw" (any other exception),
    "crash" (the worker died), "hang" (no answer within ``timeout_s``), "outside" (a loaded
    value came from a planted file), "memory" (the worker's peak memory grew by > 1 GiB).
    """
    suffix = {"bundle": ".zip", "npz": ".npz", "cxi": ".cxi", "ptychodus": ""}[loader]
    paths = []
    for index, (_, data) in enumerate(mutants):
        path = folder / f"m{index:05d}{suffix}"
        data = data() if callable(data) else data
        if isinstance(data, dict):  # a scan folder of several files
            path.mkdir()
            for name, content in data.items():
                (path / name).write_bytes(content)
        else:
            path.write_bytes(data)
        paths.append(path)
    (folder / "index.txt").write_text("\n".join(p.name for p in paths) + "\n")
    results: dict[int, dict] = {}
    start = 0
    while start < len(paths):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), loader, str(folder), str(start)], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        current, buffer = None, b""
        while True:
            ready, _, _ = select.select([worker.stdout], [], [], timeout_s)
            if not ready:  # no line within the timeout: the current mutant hangs
                worker.kill()
                worker.wait()
                results[current] = {"outcome": "hang", "detail": f"no answer in {timeout_s} s"}
                break
            chunk = os.read(worker.stdout.fileno(), 65536)
            if not chunk:  # the worker died: the mutant it was loading crashed it
                status = worker.wait()
                if current is not None and current not in results:
                    results[current] = {"outcome": "crash", "detail": f"worker exit status {status}"}
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                record = json.loads(line)
                if "start" in record:
                    current = record["start"]
                else:
                    results[record.pop("index")] = record
        done = [i for i in results if i >= start]
        start = (max(done) + 1) if done else start + 1
        worker.stdout.close()
    return [{"kind": kind, **results.get(i, {"outcome": "missing", "detail": ""})} for i, (kind, _) in enumerate(mutants)]


def summary(results: list[dict]) -> dict[str, Counter]:
    """{kind: Counter(outcome)}, plus "all"."""
    table: dict[str, Counter] = {"all": Counter()}
    for result in results:
        table.setdefault(result["kind"], Counter())[result["outcome"]] += 1
        table["all"][result["outcome"]] += 1
    return table


def format_summary(table: dict[str, Counter], results: list[dict] | None = None) -> str:
    lines = []
    for kind in sorted(table, key=lambda k: (k == "all", k)):
        counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted(table[kind].items()))
        lines.append(f"{kind:28s} {sum(table[kind].values()):5d}: {counts}")
    if results:
        times = sorted(r.get("seconds", 0.0) for r in results)
        slow = [r for r in results if r.get("seconds", 0.0) > 5]
        lines.append(f"seconds per mutant: median {times[len(times) // 2]:.2f}, max {times[-1]:.2f}; "
                     f"{len(slow)} took > 5 s ({', '.join(sorted({r['kind'] for r in slow})) or 'none'})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# scan-file mutants: CXI and ptychodus (product.h5 + diffraction.h5)

SCAN_SIZE = 16


def _h5_bytes(write) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        write(h5)
    return buffer.getvalue()


def _scan_arrays(count: int = 12) -> dict[str, np.ndarray]:
    """Counts with a centred bright zero frequency, positions inside a 48 px object, a probe."""
    rng = np.random.default_rng(0)
    patterns = rng.poisson(50.0, (count, SCAN_SIZE, SCAN_SIZE)).astype(np.uint32)
    patterns[:, SCAN_SIZE // 2, SCAN_SIZE // 2] += 5000
    rows, cols = np.mgrid[0:SCAN_SIZE, 0:SCAN_SIZE] - SCAN_SIZE / 2
    probe = (30 * np.exp(-(rows**2 + cols**2) / 12.5)).astype(np.complex64)
    return {"patterns": patterns, "x_px": rng.uniform(9, 38, count), "y_px": rng.uniform(9, 38, count), "probe": probe}


CXI_ENERGY_J = 8000 * 1.602176634e-19
CXI_PIXEL_M, CXI_DISTANCE_M = 75e-6, 2.0
CXI_OBJECT_PIXEL_M = 1.98644586e-25 / CXI_ENERGY_J * CXI_DISTANCE_M / (SCAN_SIZE * CXI_PIXEL_M)
DETECTOR = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"


def cxi_base() -> bytes:
    """A small valid CXI scan (the layout tests/test_io_cxi.py writes)."""
    arrays = _scan_arrays()

    def write(h5):
        h5["cxi_version"] = 160
        detector = h5.create_group(DETECTOR)
        detector["data"] = arrays["patterns"].astype(np.float32)
        detector["distance"] = CXI_DISTANCE_M
        detector["x_pixel_size"] = CXI_PIXEL_M
        detector["y_pixel_size"] = CXI_PIXEL_M
        detector["mask"] = np.zeros((SCAN_SIZE, SCAN_SIZE), np.uint32)
        source = h5.create_group(SOURCE)
        source["energy"] = CXI_ENERGY_J
        source["illumination"] = arrays["probe"]
        h5.create_group("entry_1/data_1")["data"] = h5py.SoftLink(f"/{DETECTOR}/data")
        x, y = arrays["x_px"] * CXI_OBJECT_PIXEL_M, arrays["y_px"] * CXI_OBJECT_PIXEL_M
        h5.create_group("entry_1/sample_1/geometry_1")["translation"] = np.stack([x, y, 0 * x], axis=1)
    return _h5_bytes(write)


def _replaced(h5, path, **kwargs):
    if path in h5 or h5.get(path, getlink=True) is not None:
        del h5[path]
    h5.create_dataset(path, **kwargs)


def _link_edits(folder: Path, data_path: str, numeric_paths: list[str]) -> list[tuple[str, object]]:
    """Links, storage and declared sizes: the same mutants for any HDF5 scan file."""
    marker_h5, marker_bin = str(folder / "marker.h5"), str(folder / "marker.bin")
    edits: list[tuple[str, object]] = []

    def external_link(path, target_file, target="/marker"):
        def edit(h5):
            del h5[path]
            h5[path] = h5py.ExternalLink(target_file, target)
        return edit

    for path in [data_path, *numeric_paths[:2]]:
        edits += [("h5-external-link", external_link(path, marker_h5)), ("h5-external-link", external_link(path, "marker.h5")),
                  ("h5-external-link", external_link(path, "/dev/zero")), ("h5-external-link", external_link(path, "/proc/self/environ"))]

    def external(path, target):
        def edit(h5):
            shape, dtype = h5[path].shape, h5[path].dtype
            del h5[path]
            h5.create_dataset(path, shape=shape, dtype=dtype, external=[(target, 0, h5py.h5f.UNLIMITED)])
        return edit

    for target in (marker_bin, "marker.bin", "/etc/hostname", "/dev/zero"):
        edits.append(("h5-external-storage", external(data_path, target)))

    def virtual(path, target):
        def edit(h5):
            shape, dtype = h5[path].shape, h5[path].dtype
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(target, "marker", shape=shape)
            del h5[path]
            h5.create_virtual_dataset(path, layout, fillvalue=0)
        return edit

    edits += [("h5-virtual-dataset", virtual(data_path, marker_h5)), ("h5-virtual-dataset", virtual(data_path, "marker.h5"))]

    def soft(path, target):
        def edit(h5):
            del h5[path]
            h5[path] = h5py.SoftLink(target)
        return edit

    edits += [("h5-soft-link-loop", soft(data_path, "/" + data_path)), ("h5-soft-link-loop", soft(numeric_paths[0], "/" + numeric_paths[0])),
              ("h5-soft-link-dangling", soft(numeric_paths[0], "/nowhere/at/all"))]

    def two_cycle(h5):
        del h5[numeric_paths[0]]
        h5[numeric_paths[0]] = h5py.SoftLink("/cycle_b")
        h5["cycle_b"] = h5py.SoftLink("/" + numeric_paths[0])
    edits.append(("h5-soft-link-loop", two_cycle))

    def group_loop(h5):
        parent = data_path.rsplit("/", 1)[0] if "/" in data_path else "/"
        h5[parent]["loop"] = h5[parent]
    edits.append(("h5-hard-link", group_loop))

    for shape, chunks in [((100000, 100000, 16), (1, 64, 16)), ((12, 2**20, 2**20), (1, 16, 16)), ((20000, 20000), None),
                          ((1 << 31,), None)]:
        def huge(h5, shape=shape, chunks=chunks):
            _replaced(h5, data_path, shape=shape, dtype=np.float32, chunks=chunks)  # never written
        edits.append(("h5-huge-declared-shape", huge))

    def bomb(h5):
        _replaced(h5, data_path, shape=(2000, 1024, 1024), dtype=np.float32, chunks=(1, 1024, 1024), compression="gzip",
                  fillvalue=MARKER)
        h5[data_path][0] = np.ones((1024, 1024), np.float32)  # one chunk written: the rest is fill value
    edits.append(("h5-huge-declared-shape", bomb))
    return edits


def _value_edits(path: str, values) -> list[object]:
    def make(value):
        def edit(h5):
            _replaced(h5, path, data=value)
        return edit
    return [make(value) for value in values]


def _cxi_edits(folder: Path) -> list[tuple[str, object]]:
    data_path = f"{DETECTOR}/data"
    edits = _link_edits(folder, data_path, [f"{SOURCE}/energy", TRANSLATION])
    patterns = _scan_arrays()["patterns"].astype(np.float32)
    count = len(patterns)
    for path, values in [
        (f"{SOURCE}/energy", [0.0, -1.0, 1e-300, 1e300, np.nan, np.inf, 8000.0, np.array([1e-15, 2e-15]), np.bytes_(b"8 keV"),
                              np.int64(1), np.complex128(1e-15)]),
        (f"{DETECTOR}/distance", [0.0, -2.0, 1e300, 1e-300, np.nan, np.bytes_(b"2 m"), np.zeros(0)]),
        (f"{DETECTOR}/x_pixel_size", [0.0, 1e300, 1e-300, -75e-6, np.inf, np.bytes_(b"75 um")]),
    ]:
        edits += [("cxi-value", edit) for edit in _value_edits(path, values)]

    def wavelength_only(value):
        def edit(h5):
            del h5[f"{SOURCE}/energy"]
            h5[f"{SOURCE}/wavelength"] = value
        return edit
    edits += [("cxi-value", wavelength_only(v)) for v in (1.5e-10, 0.0, 1e300, -1e-10)]

    shapes = [patterns[:, :0, :0], patterns[:, :, :-2], patterns[:0], patterns[:, :, :, None], patterns[:, 0],
              patterns[:, :15, :15], patterns.astype(np.complex64), patterns.astype(bool), -patterns,
              np.where(patterns > 100, np.nan, patterns), patterns.astype(np.float16), patterns[:, ::-1, ::-1].copy(),
              np.fft.ifftshift(patterns, axes=(-2, -1)), np.zeros_like(patterns), np.full_like(patterns, 3e38),
              np.array([b"x"] * count)]
    edits += [("cxi-data", edit) for edit in _value_edits(data_path, shapes)]
    translation = np.zeros((count, 3))
    edits += [("cxi-translation", edit) for edit in _value_edits(TRANSLATION, [
        np.array([b"1e-6"] * count), translation[:, :1], np.zeros((count + 1, 3)), translation[:-1], np.zeros(count),
        np.full((count, 3), np.nan), np.full((count, 3), 1e300), np.full((count, 3), 1.0), translation.astype(bool)])]
    edits += [("cxi-mask", edit) for edit in _value_edits(f"{DETECTOR}/mask", [
        np.array([b"ok"] * SCAN_SIZE), np.zeros((SCAN_SIZE, SCAN_SIZE - 2), np.uint32), np.ones((SCAN_SIZE, SCAN_SIZE), np.uint32),
        np.full((SCAN_SIZE, SCAN_SIZE), np.nan), np.zeros((2, SCAN_SIZE, SCAN_SIZE), np.uint32), np.float64(1)])]
    edits += [("cxi-probe", edit) for edit in _value_edits(f"{SOURCE}/illumination", [
        np.zeros((SCAN_SIZE, SCAN_SIZE), np.complex64), np.full((SCAN_SIZE, SCAN_SIZE), np.nan, np.complex64),
        np.ones((SCAN_SIZE, SCAN_SIZE - 2), np.complex64), np.ones((3, 2, SCAN_SIZE, SCAN_SIZE), np.complex64),
        np.ones((0, SCAN_SIZE, SCAN_SIZE), np.complex64)])]

    def removed(path):
        def edit(h5):
            del h5[path]
        return edit
    for path in (data_path, "entry_1/data_1/data", TRANSLATION, f"{SOURCE}/energy", f"{DETECTOR}/distance",
                 f"{DETECTOR}/y_pixel_size", "entry_1"):
        edits.append(("cxi-removed", removed(path)))
    return edits


def _ptychodus_pair() -> tuple[bytes, bytes]:
    arrays = _scan_arrays()
    count, pixel = len(arrays["patterns"]), 2e-8
    obj = (np.ones((48, 48)) * np.exp(0.3j * np.random.default_rng(1).random((48, 48)))).astype(np.complex64)

    def product(h5):
        h5.attrs["name"] = "fuzz"
        h5.attrs["detector_object_distance_m"] = 1.5
        h5.attrs["photon_energy_eV"] = 10000.0
        h5["probe_position_indexes"] = np.arange(count)
        h5["probe_position_x_m"] = (arrays["x_px"] - 24) * pixel
        h5["probe_position_y_m"] = (arrays["y_px"] - 24) * pixel
        h5["probe"] = arrays["probe"][None, None]
        h5["probe"].attrs["pixel_width_m"] = pixel
        h5["probe"].attrs["pixel_height_m"] = pixel
        h5["object"] = obj[None]
        for key, value in (("center_x_m", 0.0), ("center_y_m", 0.0), ("pixel_width_m", pixel), ("pixel_height_m", pixel)):
            h5["object"].attrs[key] = value

    def diffraction(h5):
        h5["patterns"] = arrays["patterns"]
        h5["patterns"].attrs["detector_pixel_width_m"] = 75e-6
        h5["patterns"].attrs["detector_pixel_height_m"] = 75e-6
        h5["indexes"] = np.arange(count)
        h5["bad_pixels"] = np.zeros((SCAN_SIZE, SCAN_SIZE), dtype=bool)
    return _h5_bytes(product), _h5_bytes(diffraction)


def _attribute_edits(path: str, key: str, values) -> list[object]:
    def make(value):
        def edit(h5):
            if value is None:
                del h5[path].attrs[key]
            else:
                h5[path].attrs[key] = value
        return edit
    return [make(value) for value in values]


def _ptychodus_edits(folder: Path) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    """(edits of product.h5, edits of diffraction.h5)."""
    product = _link_edits(folder, "probe_position_x_m", ["probe_position_y_m", "probe_position_indexes"])
    product = [(kind, edit) for kind, edit in product if "huge" not in kind] + [
        (kind, edit) for kind, edit in _link_edits(folder, "object", ["probe", "probe_position_x_m"]) if "huge" in kind]
    bad_numbers = [0.0, -1.0, 1e-300, 1e300, np.nan, np.inf, "10 keV", np.array([1.0, 2.0]), None, True, np.complex128(1)]
    for path, key in (("/", "photon_energy_eV"), ("/", "detector_object_distance_m"), ("object", "pixel_width_m"),
                      ("object", "center_x_m"), ("object", "pixel_height_m")):
        product += [("ptychodus-value", edit) for edit in _attribute_edits(path, key, bad_numbers)]
    count = len(_scan_arrays()["patterns"])
    for path, values in [
        ("probe_position_indexes", [np.arange(count) + 1000, np.array([b"0"] * count), np.zeros(count), np.arange(count - 1),
                                    np.full(count, 2**62), np.full(count, np.nan), -np.arange(count)]),
        ("probe_position_x_m", [np.full(count, np.nan), np.full(count, 1e300), np.zeros((count, 2)), np.array([b"x"] * count),
                                np.zeros(count + 3)]),
        ("probe", [np.zeros((1, 1, SCAN_SIZE, SCAN_SIZE), np.complex64), np.ones((1, 1, SCAN_SIZE, SCAN_SIZE - 2), np.complex64),
                   np.ones((SCAN_SIZE, SCAN_SIZE)), np.ones((0, 1, SCAN_SIZE, SCAN_SIZE), np.complex64), np.array(b"probe"),
                   np.full((1, 1, SCAN_SIZE, SCAN_SIZE), np.nan, np.complex64)]),
        ("object", [np.ones((48, 48)), np.ones((0, 48, 48), np.complex64), np.ones((1, 1, 0), np.complex64),
                    np.ones((3, 48, 48), np.complex64), np.array(b"object")]),
    ]:
        product += [("ptychodus-product", edit) for edit in _value_edits(path, values)]

    diffraction = _link_edits(folder, "patterns", ["indexes", "bad_pixels"])
    patterns = _scan_arrays()["patterns"]
    diffraction += [("ptychodus-diffraction", edit) for edit in _value_edits("patterns", [
        patterns[:, :0, :0], patterns[:, :, :-2], patterns[:0], patterns[:, 0], patterns.astype(np.complex64),
        np.array([b"x"] * count), -patterns.astype(np.int64), patterns[:4]])]
    diffraction += [("ptychodus-diffraction", edit) for edit in _value_edits("indexes", [
        np.array([b"0"] * count), np.zeros(count, np.int64), np.arange(count) + 1000, np.full(count, np.nan)])]
    diffraction += [("ptychodus-diffraction", edit) for edit in _value_edits("bad_pixels", [
        np.ones((SCAN_SIZE, SCAN_SIZE), bool), np.zeros((SCAN_SIZE, SCAN_SIZE - 2), bool), np.array([b"bad"])])]
    diffraction += [("ptychodus-value", edit) for edit in _attribute_edits("patterns", "detector_pixel_width_m", bad_numbers)]
    return product, diffraction


def _random_h5_mutants(add, kind_prefix: str, make, data: bytes, rng: np.random.Generator, n_random: int) -> None:
    def draws(high: int, low: int, top: int):
        count = int(rng.integers(1, 9))
        return rng.integers(0, high, count), rng.integers(low, top, count)

    for _ in range(n_random):
        add(f"{kind_prefix}byte-flip", make, _flipped(data, *draws(len(data), 1, 256), True))
        add(f"{kind_prefix}metadata-byte-flip", make, _flipped(data, *draws(min(4096, len(data)), 0, 256), False))
        add(f"{kind_prefix}truncated", make, data[: int(rng.integers(0, len(data)))])


def _identity(data):
    return data


def _edited(data: bytes, edit) -> bytes:
    return _h5_edit(data, edit)


def cxi_mutants(folder: Path, rng: np.random.Generator, n_random: int) -> list[Mutant]:
    """Structural CXI mutants (all) plus ``n_random`` byte flips, metadata edits and truncations each."""
    base = cxi_base()
    mutants: list[Mutant] = [("cxi-valid", functools.partial(_identity, base))]
    for kind, edit in _cxi_edits(folder):
        mutants.append((kind, functools.partial(_edited, base, edit)))
    _random_h5_mutants(lambda kind, make, data: mutants.append((kind, functools.partial(make, data))), "h5-", _identity,
                       base, rng, n_random)
    return mutants


def _pair(product: bytes, diffraction: bytes, which: str = "", edit=None) -> dict[str, bytes]:
    if which == "product.h5":
        product = edit(product)
    elif which == "diffraction.h5":
        diffraction = edit(diffraction)
    return {"product.h5": product, "diffraction.h5": diffraction}


def ptychodus_mutants(folder: Path, rng: np.random.Generator, n_random: int) -> list[Mutant]:
    """Mutants of a ptychodus scan folder: each a {file name: bytes} pair, one of the two files edited."""
    product, diffraction = _ptychodus_pair()
    product_edits, diffraction_edits = _ptychodus_edits(folder)
    mutants: list[Mutant] = [("ptychodus-valid", functools.partial(_pair, product, diffraction))]
    for which, edits in (("product.h5", product_edits), ("diffraction.h5", diffraction_edits)):
        for kind, edit in edits:
            mutants.append((kind, functools.partial(_pair, product, diffraction, which, functools.partial(_h5_edit, edit=edit))))
    for which, data in (("product.h5", product), ("diffraction.h5", diffraction)):
        def add(kind, make, mutated, which=which):
            mutants.append((kind, functools.partial(_pair, product, diffraction, which, functools.partial(_identity_of, mutated))))
        _random_h5_mutants(add, "h5-", _identity, data, rng, n_random // 2 + 1)
    return mutants


def _identity_of(mutated: bytes, original: bytes) -> bytes:
    del original
    return mutated
