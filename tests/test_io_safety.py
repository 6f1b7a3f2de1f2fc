"""Scan files as untrusted input (ptycho/io/safety.py): what a CXI or ptychodus file may not do."""

import io
import os

import h5py
import numpy as np
import pytest

import fuzzing
from ptycho.config import PrepareConfig, Source
from ptycho.errors import DataError
from ptycho.io import load_scan

DATA = "entry_1/instrument_1/detector_1/data"
ENERGY = "entry_1/instrument_1/source_1/energy"


def cxi(tmp_path, edit=None, name="scan.cxi"):
    buffer = io.BytesIO(fuzzing.cxi_base())
    if edit is not None:
        with h5py.File(buffer, "r+") as h5:
            edit(h5)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return path


def load(path):
    return load_scan(path, PrepareConfig(source=Source.CXI, train_file=str(path), N=fuzzing.SCAN_SIZE))


def replace(path, **kwargs):
    def edit(h5):
        del h5[path]
        h5.create_dataset(path, **kwargs)
    return edit


def refused(path, *words):
    with pytest.raises(DataError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and all(word in message for word in words), message
    return message


def test_the_base_file_loads(tmp_path):
    data, _ = load(cxi(tmp_path))
    assert data.n_patterns == 12


@pytest.mark.parametrize("value, words", [
    (0.0, ["plausible range"]), (1e-300, ["plausible range"]), (-1.0, ["plausible range"]), (np.bytes_(b"8 keV"), ["expected numbers"]),
])
def test_an_implausible_energy_names_the_key(tmp_path, value, words):
    refused(cxi(tmp_path, replace(ENERGY, data=value)), ENERGY, *words)


@pytest.mark.parametrize("key, value", [("x_pixel_size", 1e300), ("distance", 1e-300), ("distance", 0.0)])
def test_implausible_pixel_sizes_and_distances_name_the_key(tmp_path, key, value):
    refused(cxi(tmp_path, replace(f"entry_1/instrument_1/detector_1/{key}", data=value)), key, "plausible range")


def test_degenerate_shapes_and_strings_are_data_errors(tmp_path):
    patterns = fuzzing._scan_arrays()["patterns"].astype(np.float32)
    refused(cxi(tmp_path, replace(DATA, data=patterns[:, :0, :0])), "entry_1/data_1/data", "(12, 0, 0)")
    refused(cxi(tmp_path, replace(DATA, data=patterns[:, :, :-2])), "(16, 14)")
    refused(cxi(tmp_path, replace("entry_1/sample_1/geometry_1/translation", data=np.array([b"1e-6"] * 12))), "translation", "expected numbers")
    refused(cxi(tmp_path, replace("entry_1/instrument_1/detector_1/mask", data=np.array([b"ok"] * 16))), "mask", "expected numbers")


def test_links_to_other_files_and_virtual_data_are_refused(tmp_path):
    fuzzing.plant_markers(tmp_path)
    marker = str(tmp_path / "marker.h5")

    def external_link(h5):
        del h5[DATA]
        h5[DATA] = h5py.ExternalLink(marker, "/marker")

    def virtual(h5):
        layout = h5py.VirtualLayout(shape=(12, 16, 16), dtype=np.float32)
        layout[...] = h5py.VirtualSource(marker, "marker", shape=(12, 16, 16))
        del h5[DATA]
        h5.create_virtual_dataset(DATA, layout)

    refused(cxi(tmp_path, external_link), "external link", "marker.h5")
    refused(cxi(tmp_path, replace(DATA, shape=(12, 16, 16), dtype=np.float32, external=[(str(tmp_path / "marker.bin"), 0, h5py.h5f.UNLIMITED)])),
            "external storage")
    refused(cxi(tmp_path, virtual), "virtual dataset")


def test_soft_links_inside_the_file_are_followed_and_a_loop_is_refused(tmp_path):
    def loop(h5):
        del h5[ENERGY]
        h5[ENERGY] = h5py.SoftLink("/" + ENERGY)

    load(cxi(tmp_path))  # entry_1/data_1/data is a soft link to the detector's data
    refused(cxi(tmp_path, loop), ENERGY, "soft link")


def test_never_written_chunked_data_declaring_gib_are_refused_before_allocation(tmp_path):
    path = cxi(tmp_path, replace(DATA, shape=(100000, 100000, 16), dtype=np.float32, chunks=(1, 64, 16)))
    assert path.stat().st_size < 100_000
    refused(path, DATA, "GiB")
    refused(cxi(tmp_path, replace(DATA, shape=(12, 16, 16), dtype=np.float32)), DATA, "never written")


def test_devices_fifos_and_links_to_them_are_named_not_read(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.cxi")
    os.mkfifo(tmp_path / "pipe.cxi")
    os.symlink(tmp_path / "gone.cxi", tmp_path / "dangling.cxi")
    assert "a character device" in refused(tmp_path / "zero.cxi", "symbolic link to /dev/zero")
    refused(tmp_path / "pipe.cxi", "a FIFO")
    refused(tmp_path / "dangling.cxi", "file not found", "symbolic link")
    auto = PrepareConfig(source=Source.AUTO, train_file=str(tmp_path / "pipe.cxi"), N=16)
    with pytest.raises(DataError, match="a FIFO"):
        load_scan(tmp_path / "pipe.cxi", auto)


def test_non_square_tike_patterns_are_a_data_error(tmp_path):
    # (M, N, N - 2) reached the zero-frequency check and ended in an IndexError
    data = np.ones((12, 16, 14), np.float32)
    path = tmp_path / "scan.npz"
    np.savez(path, data=data, scan=np.zeros((12, 2)), probe=np.ones((1, 16, 16), np.complex64))
    with pytest.raises(DataError, match=r"key 'data': patterns are 16 x 14; expected square"):
        load_scan(path, PrepareConfig(source=Source.TIKE, train_file=str(path), N=16))
