"""The reconstruction file: optional probe and pixel size, older files without them still load."""

import numpy as np
import pytest

from ptycho.errors import DataError
from ptycho.files import write_npz
from ptycho.reconstruction import Reconstruction, load_reconstruction, save_reconstruction


def test_probe_and_pixel_size_round_trip(tmp_path):
    probe = (np.arange(2 * 16 * 16).reshape(2, 16, 16) * (1 + 1j)).astype(np.complex64)
    rec = Reconstruction(np.ones((20, 30), np.complex64), (-3, 4), np.ones((20, 30), np.float32), "baseline-rpie",
                         probe=probe, pixel_size_m=(1e-8, 2e-8))
    save_reconstruction(rec, tmp_path / "r.npz")
    back = load_reconstruction(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.probe, probe)
    assert back.pixel_size_m == (1e-8, 2e-8) and back.origin == (-3, 4)


def test_an_older_file_without_probe_loads(tmp_path):
    write_npz(tmp_path / "old.npz", {"object": np.ones((4, 5), np.complex64), "origin": np.array([0, 0]),
                                     "coverage": np.ones((4, 5), np.float32), "method": np.array("pinn")})
    rec = load_reconstruction(tmp_path / "old.npz")
    assert rec.probe is None and rec.pixel_size_m is None


def test_a_bad_probe_is_refused(tmp_path):
    write_npz(tmp_path / "bad.npz", {"object": np.ones((4, 5), np.complex64), "origin": np.array([0, 0]),
                                     "coverage": np.ones((4, 5), np.float32), "method": np.array("pinn"),
                                     "probe": np.ones((16, 8), np.complex64)})
    with pytest.raises(DataError, match="bad.npz: key 'probe'"):
        load_reconstruction(tmp_path / "bad.npz")
