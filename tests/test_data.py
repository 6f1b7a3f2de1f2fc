"""Tests for ptycho/data.py: the dataset object, the canonical NPZ and its error messages."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ptycho.data import PtychoDataset, load_dataset, save_dataset, validate
from ptycho.errors import DataError

M, N, H, W = 6, 16, 40, 48  # windows need N/2 <= x <= W - N/2 = 40 and N/2 <= y <= H - N/2 = 32


def make_dataset(with_object: bool = True, metadata: dict | None = None) -> PtychoDataset:
    rng = np.random.default_rng(0)
    obj = (rng.random((H, W)) * np.exp(1j * rng.random((H, W)))).astype(np.complex64)
    return PtychoDataset(
        amplitudes=rng.random((M, N, N)).astype(np.float32),
        xcoords=np.array([8.0, 14.5, 20.0, 26.0, 34.0, 40.0]),
        ycoords=np.array([8.0, 12.0, 16.25, 20.0, 24.0, 32.0]),
        probe=(rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
        object=obj if with_object else None,
        scan_index=np.arange(10, 10 + M, dtype=np.int64),
        metadata={"nphotons": 1e6, "provenance": {"stage": "test"}} if metadata is None else metadata,
    )


def canonical_arrays() -> dict[str, np.ndarray]:
    """The NPZ members of make_dataset(), for building bad files by editing one key."""
    ds = make_dataset()
    return {
        "diffraction": ds.amplitudes,
        "xcoords": ds.xcoords,
        "ycoords": ds.ycoords,
        "probeGuess": ds.probe,
        "objectGuess": ds.object,
        "scan_index": ds.scan_index,
        "metadata": np.array(json.dumps(ds.metadata)),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def assert_same(a: PtychoDataset, b: PtychoDataset) -> None:
    for name in ("amplitudes", "xcoords", "ycoords", "probe", "scan_index"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.object is None:
        assert b.object is None
    else:
        assert a.object.dtype == b.object.dtype
        np.testing.assert_array_equal(a.object, b.object)
    assert a.metadata == b.metadata


# --- round trips and accepted variants -------------------------------------------------------


@pytest.mark.parametrize("with_object", [True, False])
def test_round_trip(tmp_path, with_object):
    ds = make_dataset(with_object=with_object)
    validate(ds, "memory")
    path = tmp_path / "sub" / "scan.npz"
    save_dataset(ds, path)
    loaded = load_dataset(path)
    assert_same(ds, loaded)
    assert loaded.n_patterns == M and loaded.pattern_size == N
    assert os.listdir(path.parent) == ["scan.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as npz:
        assert ("objectGuess" in npz.files) == with_object
        assert npz["diffraction"].dtype == np.float32 and npz["metadata"].shape == ()


def test_save_uses_the_name_as_given(tmp_path):
    path = tmp_path / "scan.data"  # np.savez on a name would have appended ".npz"
    save_dataset(make_dataset(), path)
    assert os.listdir(tmp_path) == ["scan.data"]
    assert_same(make_dataset(), load_dataset(path))


def test_defaults_when_optional_keys_absent(tmp_path):
    arrays = canonical_arrays()
    for key in ("scan_index", "metadata", "objectGuess"):
        del arrays[key]
    arrays["probeGuess"] = arrays["probeGuess"].real.astype(np.float64)  # a real probe is cast
    ds = load_dataset(write_npz(tmp_path / "min.npz", arrays))
    np.testing.assert_array_equal(ds.scan_index, np.arange(M))
    assert ds.scan_index.dtype == np.int64
    assert ds.metadata == {} and ds.object is None
    assert ds.probe.dtype == np.complex64 and np.all(ds.probe.imag == 0)


THROUGH_PREPARE = "convert the file once with `prepare` (prepare.source: npz"


def test_a_ptychopinn_key_is_refused_with_the_way_through_prepare(tmp_path):
    arrays = canonical_arrays()
    arrays["diff3d"] = arrays.pop("diffraction").astype(np.float64)
    path = write_npz(tmp_path / "d.npz", arrays)
    with pytest.raises(DataError, match="key 'diff3d': a PtychoPINN key") as info:
        load_dataset(path)
    assert str(path) in str(info.value) and THROUGH_PREPARE in str(info.value)


def test_the_legacy_nnm_order_is_refused_with_the_way_through_prepare(tmp_path):
    arrays = canonical_arrays()
    arrays["diffraction"] = np.transpose(arrays["diffraction"], (1, 2, 0))  # (N, N, M)
    with pytest.raises(DataError, match=r"key 'diffraction': shape \(16, 16, 6\) is PtychoPINN's \(N, N, M\) order") as info:
        load_dataset(write_npz(tmp_path / "nnm.npz", arrays))
    assert THROUGH_PREPARE in str(info.value)


def test_the_legacy_forms_go_through_prepare_to_the_same_dataset(tmp_path):
    # What load_dataset refuses, prepare's npz reader converts: diff3d in (N, N, M) order holding counts.
    from ptycho.config import PrepareConfig
    from ptycho.io import load_scan

    arrays = canonical_arrays()
    amplitudes = arrays.pop("diffraction")
    arrays["diff3d"] = np.transpose(np.square(amplitudes), (1, 2, 0))
    arrays["metadata"] = np.array(json.dumps({"diffraction_quantity": "intensity"}))
    path = write_npz(tmp_path / "legacy.npz", arrays)
    data, _ = load_scan(path, PrepareConfig(source="npz", train_file=str(path), N=N, input_checks="warn"))
    np.testing.assert_allclose(data.amplitudes, amplitudes, rtol=1e-6)
    assert data.metadata["pattern_order"] == "NNM" and data.metadata["converted_from"] == "intensity"


def test_cube_is_read_as_canonical(tmp_path):
    arrays = canonical_arrays()  # M == N == 8: (8, 8, 8) is ambiguous, canonical wins
    arrays["diffraction"] = np.random.default_rng(1).random((N, N, N)).astype(np.float32)
    for key in ("xcoords", "ycoords"):
        arrays[key] = np.full(N, 16.0)
    arrays["scan_index"] = np.arange(N)
    ds = load_dataset(write_npz(tmp_path / "cube.npz", arrays))
    np.testing.assert_array_equal(ds.amplitudes, arrays["diffraction"])
    assert "converted_from_order" not in ds.metadata


def test_declared_intensities_are_refused_with_the_way_through_prepare(tmp_path):
    arrays = canonical_arrays()
    arrays["diffraction"] = np.random.default_rng(2).poisson(50.0, size=(M, N, N))  # integer counts
    arrays["metadata"] = np.array(json.dumps({"diffraction_quantity": "intensity", "nphotons": 5}))
    with pytest.raises(DataError, match=r"key 'metadata.diffraction_quantity': 'intensity': a canonical file holds amplitudes") as info:
        load_dataset(write_npz(tmp_path / "counts.npz", arrays))
    assert THROUGH_PREPARE in str(info.value)
    # a file that declares amplitudes reads as it is
    arrays = canonical_arrays()
    arrays["metadata"] = np.array(json.dumps({"diffraction_quantity": "amplitude"}))
    ds = load_dataset(write_npz(tmp_path / "a.npz", arrays))
    np.testing.assert_array_equal(ds.amplitudes, arrays["diffraction"])
    assert ds.metadata == {"diffraction_quantity": "amplitude"}


def test_positions_on_the_object_edge_are_inside(tmp_path):
    # make_dataset() already uses x = 4 and 36 (= W - N/2), y = 4 and 28 (= H - N/2): the window
    # x - N/2 ... x + N/2 - 1 then touches columns 0 and W - 1 exactly.
    ds = make_dataset()
    assert ds.xcoords.min() == N // 2 and ds.xcoords.max() == W - N // 2
    assert ds.ycoords.min() == N // 2 and ds.ycoords.max() == H - N // 2
    validate(ds, "memory")


def test_subset():
    ds = make_dataset()
    sub = ds.subset([4, 1])
    np.testing.assert_array_equal(sub.amplitudes, ds.amplitudes[[4, 1]])
    np.testing.assert_array_equal(sub.xcoords, ds.xcoords[[4, 1]])
    np.testing.assert_array_equal(sub.ycoords, ds.ycoords[[4, 1]])
    np.testing.assert_array_equal(sub.scan_index, [14, 11])
    assert sub.probe is ds.probe and sub.object is ds.object
    assert sub.metadata == ds.metadata and sub.metadata is not ds.metadata
    assert sub.n_patterns == 2
    mask = np.zeros(M, dtype=bool)
    mask[2] = True
    assert ds.subset(mask).n_patterns == 1
    assert ds.subset([]).n_patterns == 0


# --- bad files ----------------------------------------------------------------------------------


def _set(key, value):
    def edit(a):
        a[key] = value(a) if callable(value) else value

    return edit


def _drop(key):
    return lambda a: a.pop(key)


def _bad_at(key, index, value):
    def edit(a):
        a[key] = a[key].copy()
        a[key][index] = value

    return edit


def _meta(text):
    return _set("metadata", np.array(text))


def _declared_intensity_with(value):
    def edit(a):
        _meta('{"diffraction_quantity": "intensity"}')(a)
        _bad_at("diffraction", (1, 2, 3), value)(a)

    return edit


BAD_FILES = [
    # id, edit of the canonical arrays, key named in the message, words in the message
    ("missing-diffraction", _drop("diffraction"), "diffraction", "missing"),
    ("missing-xcoords", _drop("xcoords"), "xcoords", "missing"),
    ("missing-ycoords", _drop("ycoords"), "ycoords", "missing"),
    ("missing-probe", _drop("probeGuess"), "probeGuess", "missing"),
    ("both-diffraction-keys", _set("diff3d", lambda a: a["diffraction"]), "diff3d", "prepare"),
    ("diffraction-2d", _set("diffraction", lambda a: a["diffraction"][0]), "diffraction", "3-D"),
    ("diffraction-4d", _set("diffraction", lambda a: a["diffraction"][None]), "diffraction", "3-D"),
    ("non-square", _set("diffraction", lambda a: a["diffraction"][:, :, :6]), "diffraction", "square"),
    ("odd-n", _set("diffraction", lambda a: a["diffraction"][:, :7, :7]), "diffraction", "even"),
    ("nan-amplitude", _bad_at("diffraction", (3, 1, 2), np.nan), "diffraction", "non-finite"),
    ("inf-amplitude", _bad_at("diffraction", (0, 0, 0), np.inf), "diffraction", "non-finite"),
    ("negative-amplitude", _bad_at("diffraction", (2, 0, 0), -0.5), "diffraction", "negative"),
    ("complex-diffraction", _set("diffraction", lambda a: a["diffraction"] + 0j), "diffraction", "complex"),
    ("string-diffraction", _set("diffraction", np.array([["a"]])), "diffraction", "dtype"),
    ("xcoords-2d", _set("xcoords", lambda a: a["xcoords"][:, None]), "xcoords", "1-D"),
    ("ycoords-0d", _set("ycoords", np.array(5.0)), "ycoords", "1-D"),
    ("xcoords-nan", _bad_at("xcoords", 1, np.nan), "xcoords", "non-finite"),
    ("ycoords-inf", _bad_at("ycoords", 1, np.inf), "ycoords", "non-finite"),
    ("xcoords-short", _set("xcoords", lambda a: a["xcoords"][:5]), "xcoords", "5 positions"),
    ("ycoords-long", _set("ycoords", lambda a: np.append(a["ycoords"], 9.0)), "ycoords", "7 positions"),
    ("xcoords-complex", _set("xcoords", lambda a: a["xcoords"] + 0j), "xcoords", "complex"),
    ("probe-1d", _set("probeGuess", lambda a: a["probeGuess"][0]), "probeGuess", "2-D"),
    ("probe-size", _set("probeGuess", lambda a: a["probeGuess"][:4, :4]), "probeGuess", "(4, 4)"),
    ("object-1d", _set("objectGuess", lambda a: a["objectGuess"][0]), "objectGuess", "2-D"),
    ("x-left-of-object", _bad_at("xcoords", 2, 3.5), "xcoords", "first at index 2: x=3.5"),
    ("x-right-of-object", _bad_at("xcoords", 4, W - N / 2 + 0.5), "xcoords", "1 of 6 positions"),
    ("y-below-object", _bad_at("ycoords", 5, H - N / 2 + 1), "ycoords", "first at index 5"),
    ("scan-index-short", _set("scan_index", np.arange(3)), "scan_index", "3 entries"),
    ("scan-index-float", _set("scan_index", np.arange(M) * 1.0), "scan_index", "dtype"),
    ("metadata-bad-json", _meta("{nphotons: 1"), "metadata", "invalid JSON"),
    ("metadata-not-object", _meta("[1, 2]"), "metadata", "object"),
    ("metadata-not-string", _set("metadata", np.arange(3)), "metadata", "0-d string"),
    ("quantity-unknown", _meta('{"diffraction_quantity": "counts"}'), "metadata.diffraction_quantity",
     "'intensity'"),
    ("intensity-negative", _declared_intensity_with(-4.0), "metadata.diffraction_quantity", "prepare"),
]


@pytest.mark.parametrize(("edit", "key", "words"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_refused_with_file_key_and_problem(tmp_path, edit, key, words):
    arrays = canonical_arrays()
    edit(arrays)
    path = write_npz(tmp_path / "bad_scan.npz", arrays)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert words in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match="file not found") as info:
        load_dataset(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["text", "npy", "truncated-zip", "corrupt-member"])
def test_not_an_npz(tmp_path, kind):
    path = tmp_path / "broken.npz"
    if kind == "text":
        path.write_text("diffraction,xcoords\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif kind == "truncated-zip":
        write_npz(path, canonical_arrays())
        path.write_bytes(path.read_bytes()[:-200])  # cut the zip's central directory
    else:
        write_npz(path, canonical_arrays())
        path.write_bytes(path.read_bytes().replace(b"'descr'", b"'descx'", 1))  # fails the CRC check
    with pytest.raises(DataError, match="not a valid NPZ") as info:
        load_dataset(path)
    assert str(path) in str(info.value)
    if kind == "corrupt-member":
        assert "diffraction" in str(info.value)


class _Payload:
    """Unpickling this creates the file `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("key", ["diffraction", "extra"])
def test_pickled_object_array_is_refused_without_running_it(tmp_path, key):
    marker = tmp_path / "pwned"
    arrays = canonical_arrays()
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    arrays[key] = payload
    path = write_npz(tmp_path / "evil.npz", arrays)  # np.savez pickles object arrays
    with pytest.raises(DataError, match="pickle") as info:
        load_dataset(path)
    assert f"{path}: key '{key}'" in str(info.value)
    assert not marker.exists()


# --- in-memory validation and saving ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"amplitudes": make_dataset().amplitudes.astype(np.float64)}, "diffraction", "float32"),
        ({"xcoords": make_dataset().xcoords.astype(np.float32)}, "xcoords", "float64"),
        ({"probe": make_dataset().probe.real.copy()}, "probeGuess", "complex64"),
        ({"scan_index": np.arange(M, dtype=np.int32)}, "scan_index", "int64"),
        ({"amplitudes": [[[1.0]]]}, "diffraction", "numpy array"),
        ({"metadata": {"when": object()}}, "metadata", "JSON"),
        ({"metadata": {"x": float("nan")}}, "metadata", "JSON"),
        ({"metadata": {"diffraction_quantity": "intensity"}}, "metadata.diffraction_quantity", "amplitudes"),
        ({"amplitudes": np.zeros((0, N, N), np.float32), "xcoords": np.zeros(0), "ycoords": np.zeros(0),
          "scan_index": np.zeros(0, np.int64)}, "diffraction", "no patterns"),
    ],
    ids=["amp-f64", "x-f32", "probe-real", "scan-i32", "amp-list", "meta-object", "meta-nan",
         "meta-intensity", "empty"],
)
def test_validate_refuses_without_converting(change, key, words):
    ds = replace(make_dataset(), **change)
    with pytest.raises(DataError) as info:
        validate(ds, "in-memory")
    assert str(info.value).startswith(f"in-memory: key '{key}': ")
    assert words in str(info.value)


def test_save_invalid_dataset_writes_nothing(tmp_path):
    ds = make_dataset()
    bad = PtychoDataset(ds.amplitudes, ds.xcoords[:3], ds.ycoords, ds.probe, ds.object, ds.scan_index)
    path = tmp_path / "out" / "scan.npz"
    with pytest.raises(DataError, match="key 'xcoords'.*3 positions.*6 patterns") as info:
        save_dataset(bad, path)
    assert str(path) in str(info.value)
    assert not path.exists()
    assert not path.parent.exists() or os.listdir(path.parent) == []


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "scan.npz"
    save_dataset(make_dataset(), path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # fails after the temp file holds the new bytes
    other = make_dataset(metadata={"run": 2})
    with pytest.raises(OSError, match="disk full"):
        save_dataset(other, path)
    assert os.listdir(tmp_path) == ["scan.npz"]
    assert path.read_bytes() == before


# --- untrusted input: sizes and bombs ------------------------------------------------------------


def _npy_header(shape: str, descr: str = "<f4") -> bytes:
    import struct

    body = ("{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }").encode()
    body += b" " * ((64 - (10 + len(body) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _with_member(tmp_path: Path, name: str, data: bytes) -> Path:
    import zipfile

    path = write_npz(tmp_path / "scan.npz", canonical_arrays())
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[name] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, d in members.items():
            archive.writestr(n, d)
    return path


@pytest.mark.parametrize("shape", ["(1000000000, 16, 16)", "(6, 16, 10000000000000)", "(-6, 16, 16)"])
def test_npy_header_claiming_a_huge_shape_is_refused_before_allocation(tmp_path, shape):
    data = make_dataset().amplitudes.tobytes()
    path = _with_member(tmp_path, "diffraction.npy", _npy_header(shape) + data)
    with pytest.raises(DataError, match="key 'diffraction'") as info:
        load_dataset(path)
    assert "bytes of data" in str(info.value) or "negative extent" in str(info.value)


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    from fuzzing import raw_zip, zero_bomb

    header = _npy_header("(268435456,)")  # 1 GiB of float32 zeros, about 1 MB deflated
    bomb, crc = zero_bomb(1024, header)
    members = {f"{k}.npy": _npy_bytes(v) for k, v in canonical_arrays().items() if k != "diffraction"}
    entry = {"name": b"diffraction.npy", "data": bomb, "method": 8, "crc": crc, "size": len(header) + (1 << 30)}
    path = tmp_path / "bomb.npz"
    path.write_bytes(raw_zip([*_entries(members), entry]))
    with pytest.raises(DataError, match="key 'diffraction': inflates from .* more than 500-fold"):
        load_dataset(path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def _entries(members: dict[str, bytes]) -> list[dict]:
    return [{"name": name.encode(), "data": data} for name, data in members.items()]  # stored


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a":' * 40 + "1" + "}" * 40,
                                  '{"nphotons": ' + "9" * 5000 + "}", '{"nphotons": NaN}', '{"nphotons": 1e999}'])
def test_hostile_metadata_json_is_a_data_error(tmp_path, text):
    arrays = canonical_arrays()
    arrays["metadata"] = np.array(text)
    with pytest.raises(DataError, match="key 'metadata'"):
        load_dataset(write_npz(tmp_path / "scan.npz", arrays))


def test_members_outside_the_contract_are_checked_but_not_read(tmp_path):
    from fuzzing import raw_zip

    members = {f"{k}.npy": _npy_bytes(v) for k, v in canonical_arrays().items()}
    extra = _npy_bytes(np.ones((4, 16, 16), np.float32))
    path = tmp_path / "scan.npz"
    # Its data fail the CRC check, which only a read would notice: the file loads.
    path.write_bytes(raw_zip([*_entries(members), {"name": b"patches.npy", "data": extra, "crc": 12345}]))
    assert load_dataset(path).n_patterns == M
    # Its header is still checked.
    path.write_bytes(raw_zip([*_entries(members), {"name": b"huge.npy", "data": _npy_header("(1000000000, 16, 16)")}]))
    with pytest.raises(DataError, match="key 'huge'"):
        load_dataset(path)


# --- degenerate data ------------------------------------------------------------------------------


def _scan_index(values):
    return {"scan_index": np.array(values, dtype=np.int64)}


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"amplitudes": np.zeros((M, N, N), np.float32)}, "diffraction", "all 6 patterns are zero"),
        ({"probe": np.zeros((N, N), np.complex64)}, "probeGuess", "zero everywhere"),
        ({"amplitudes": np.ones((M, 8, 8), np.float32), "probe": np.ones((8, 8), np.complex64), "object": None},
         "diffraction", "below the minimum of 16"),
        ({"amplitudes": np.ones((1, N, N), np.float32), "xcoords": np.array([20.0]), "ycoords": np.array([20.0]),
          "scan_index": np.array([0])}, "diffraction", "at least 2"),
        (_scan_index([0, 1, 2, 3, 4, -5]), "scan_index", "negative scan index -5 at position 5"),
        (_scan_index([0, 1, 2, 3, 3, 5]), "scan_index", "occur more than once, e.g. 3"),
        ({"probe": np.full((N, N), np.nan, np.complex64)}, "probeGuess", "non-finite"),
    ],
    ids=["zero-patterns", "zero-probe", "n-8", "one-pattern", "negative-index", "repeated-index", "nan-probe"],
)
def test_degenerate_data_are_refused_at_validation(tmp_path, change, key, words):
    dataset = replace(make_dataset(), **change)
    with pytest.raises(DataError) as info:
        validate(dataset, "in-memory")
    assert str(info.value).startswith(f"in-memory: key '{key}': ") and words in str(info.value)
    with pytest.raises(DataError, match=f"key '{key}'"):  # and nothing is written
        save_dataset(dataset, tmp_path / "scan.npz")
    assert not (tmp_path / "scan.npz").exists()


# ------------------------------------------------------------------------------------------
# Patterns read by rows from the file (load_dataset(..., by_rows=True))


def test_save_dataset_stores_the_patterns_uncompressed_and_the_rest_deflated(tmp_path):
    import zipfile

    path = tmp_path / "scan.npz"
    save_dataset(make_dataset(), path)
    with zipfile.ZipFile(path) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert methods.pop("diffraction.npy") == zipfile.ZIP_STORED
    assert set(methods.values()) == {zipfile.ZIP_DEFLATED}


def test_a_dataset_read_by_rows_equals_the_one_in_memory(tmp_path):
    from ptycho.rowfile import RowFile

    path = tmp_path / "scan.npz"
    save_dataset(make_dataset(), path)
    in_memory, by_rows = load_dataset(path), load_dataset(path, by_rows=True)
    assert isinstance(by_rows.amplitudes, RowFile) and isinstance(in_memory.amplitudes, np.ndarray)
    assert_same(in_memory, replace(by_rows, amplitudes=np.asarray(by_rows.amplitudes)))
    np.testing.assert_array_equal(by_rows.amplitudes[[5, 0, 0]], in_memory.amplitudes[[5, 0, 0]])
    assert by_rows.metadata == in_memory.metadata
    assert isinstance(by_rows.subset([1, 2]).amplitudes, np.ndarray)
    # written again without ever holding the patterns: the same bytes
    save_dataset(by_rows, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()


def test_a_compressed_file_is_read_into_memory_with_a_warning(tmp_path):
    from ptycho.errors import InputWarning

    path = tmp_path / "scan.npz"
    np.savez_compressed(path, **canonical_arrays())
    with pytest.warns(InputWarning, match="key 'diffraction': not stored uncompressed.*read into memory"):
        dataset = load_dataset(path, by_rows=True)
    assert isinstance(dataset.amplitudes, np.ndarray)
    assert_same(dataset, load_dataset(path))


def test_intensities_and_legacy_order_are_refused_when_read_by_rows_too(tmp_path):
    arrays = canonical_arrays()
    arrays["diffraction"] = arrays["diffraction"] ** 2
    arrays["metadata"] = np.array(json.dumps({"diffraction_quantity": "intensity"}))
    with pytest.raises(DataError, match=r"key 'metadata.diffraction_quantity'.*prepare"):
        load_dataset(write_npz(tmp_path / "i.npz", arrays), by_rows=True)
    arrays = canonical_arrays()
    arrays["diffraction"] = np.ascontiguousarray(np.transpose(arrays["diffraction"], (1, 2, 0)))
    with pytest.raises(DataError, match=r"\(N, N, M\) order.*prepare"):
        load_dataset(write_npz(tmp_path / "nnm.npz", arrays), by_rows=True)


def test_patterns_read_by_rows_are_checked_like_those_in_memory(tmp_path, monkeypatch):
    from ptycho import rowfile

    monkeypatch.setattr(rowfile, "CHUNK_BYTES", N * N * 4)  # one pattern per chunk: the first bad value is in a later chunk
    arrays = canonical_arrays()
    arrays["diffraction"] = arrays["diffraction"].copy()
    arrays["diffraction"][3, 2, 1] = np.nan
    arrays["diffraction"][4, 0, 0] = np.inf
    path = write_npz(tmp_path / "nan.npz", arrays)
    with pytest.raises(DataError) as by_rows:
        load_dataset(path, by_rows=True)
    with pytest.raises(DataError) as in_memory:
        load_dataset(path)
    assert str(by_rows.value) == str(in_memory.value) == f"{path}: key 'diffraction': 2 non-finite amplitude value(s) (NaN or inf), first at index (3, 2, 1)"
    arrays["diffraction"] = canonical_arrays()["diffraction"].copy()
    arrays["diffraction"][5, 1, 1] = -0.5
    with pytest.raises(DataError, match=r"1 negative amplitude value\(s\), first at index \(5, 1, 1\) \(-0.5\)"):
        load_dataset(write_npz(tmp_path / "neg.npz", arrays), by_rows=True)


def test_a_corrupt_stored_pattern_is_refused_on_opening(tmp_path):
    path = tmp_path / "scan.npz"
    save_dataset(make_dataset(), path)
    data = bytearray(path.read_bytes())
    data[data.index(b"diffraction.npy") + 200] ^= 0x01  # one bit inside the patterns
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="key 'diffraction': BadZipFile: Bad CRC-32"):
        load_dataset(path, by_rows=True)


def test_checking_and_writing_patterns_read_by_rows_holds_one_chunk_not_the_scan(tmp_path, monkeypatch):
    import tracemalloc

    from ptycho import physics, rowfile

    big = replace(make_dataset(with_object=False), amplitudes=np.random.default_rng(1).random((4000, 32, 32), dtype=np.float32))
    big = replace(big, xcoords=np.linspace(20, 60, 4000), ycoords=np.linspace(20, 60, 4000), probe=np.ones((32, 32), np.complex64),
                  scan_index=np.arange(4000))
    path = tmp_path / "big.npz"
    save_dataset(big, path)  # 16 MB of patterns
    monkeypatch.setattr(rowfile, "CHUNK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        dataset = load_dataset(path, by_rows=True)  # validates every pattern
        totals = physics.pattern_totals(dataset.amplitudes)
        save_dataset(dataset, tmp_path / "again.npz")  # validates and writes chunk by chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while checking and writing 16 MiB of patterns"
    np.testing.assert_array_equal(totals, physics.pattern_totals(big.amplitudes))
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()
