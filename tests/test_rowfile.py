"""Tests for ptycho/rowfile.py: rows read from a file give exactly what indexing the array gives."""

import numpy as np
import pytest

from ptycho import rowfile
from ptycho.errors import DataError
from ptycho.rowfile import RowFile, ScratchRows, array_chunks


@pytest.fixture
def rows_and_array(tmp_path):
    array = np.random.default_rng(0).random((23, 4, 5)).astype(np.float32)
    path = tmp_path / "rows.bin"
    path.write_bytes(b"x" * 17 + array.tobytes() + b"tail")  # rows at an odd offset, bytes after them
    return RowFile.open(path, 17, array.shape, array.dtype, source="rows.bin"), array


@pytest.mark.parametrize("index", [
    0, 22, -1, -23, np.int64(5), slice(None), slice(3, 9), slice(20, 40), slice(9, 3), slice(1, 20, 3),
    np.array([4, 2, 2, 9, 10, 11, 0]), np.array([[1, 2], [7, 6]]), np.array([], dtype=np.int64), np.array([-1, 0]),
    np.arange(23) % 3 == 0,
])
def test_rows_read_from_the_file_equal_the_indexed_array(rows_and_array, index):
    rows, array = rows_and_array
    got = rows[index]
    assert isinstance(got, np.ndarray) and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array[index])


def test_shape_length_and_the_whole_array(rows_and_array):
    rows, array = rows_and_array
    assert (rows.shape, rows.ndim, len(rows), rows.nbytes) == (array.shape, 3, 23, array.nbytes)
    np.testing.assert_array_equal(np.asarray(rows), array)
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float64), array.astype(np.float64))


@pytest.mark.parametrize("index", [23, -24, np.array([0, 23]), np.ones(5, bool), np.array([0.5])])
def test_bad_indices_are_refused(rows_and_array, index):
    rows, _ = rows_and_array
    with pytest.raises((IndexError, TypeError)):
        rows[index]


def test_a_file_shorter_than_its_rows_is_reported_with_the_callers_error(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(np.zeros((3, 4), np.float32).tobytes())
    rows = RowFile.open(path, 0, (5, 4), np.float32, source="short.bin", error=DataError)
    np.testing.assert_array_equal(rows[:3], np.zeros((3, 4)))
    with pytest.raises(DataError, match="short.bin: the file ends 32 bytes early"):
        rows[:5]


@pytest.mark.parametrize("max_bytes", [1, 80, 81, 10**6])
def test_chunks_cover_every_row_once_in_order(rows_and_array, max_bytes):
    rows, array = rows_and_array
    for source in (rows, array):
        parts = list(array_chunks(source, max_bytes))
        assert [start for start, _ in parts] == list(np.cumsum([0] + [len(chunk) for _, chunk in parts[:-1]]))
        np.testing.assert_array_equal(np.concatenate([chunk for _, chunk in parts]), array)
        assert all(chunk.nbytes <= max(max_bytes, 80) for _, chunk in parts)


def test_the_default_chunk_size_is_read_when_called(monkeypatch):
    monkeypatch.setattr(rowfile, "CHUNK_BYTES", 8)
    assert [len(chunk) for _, chunk in array_chunks(np.zeros((5, 2), np.float32))] == [1] * 5


def test_scratch_rows_read_back_what_was_appended(tmp_path):
    parts = [np.full((k, 3, 2), k, np.complex64) * (1 + 2j) for k in (4, 1, 7)]
    with ScratchRows((3, 2), np.complex64, folder=tmp_path) as scratch:
        for part in parts:
            scratch.append(part)
        rows = scratch.rows()
        assert rows.shape == (12, 3, 2)
        np.testing.assert_array_equal(rows[:], np.concatenate(parts))
        np.testing.assert_array_equal(rows[4:5], parts[1])
        with pytest.raises(ValueError, match="expected rows of shape"):
            scratch.append(np.zeros((1, 2, 3), np.complex64))
    assert list(tmp_path.iterdir()) == []  # nothing left behind
