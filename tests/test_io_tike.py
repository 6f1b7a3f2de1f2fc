"""tike scans: counts with the zero frequency in the corners, minimum-corner (row, col) positions."""

import bz2
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from io_helpers import asymmetric_object, gaussian_probe
from ptycho.config import PrepareConfig, ProbeScale, Source
from ptycho.errors import DataError, InputWarning
from ptycho.io import checks, load_scan

STAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tike-siemens-star-small.npz.bz2"
STAR = STAR if STAR.is_file() else Path("/work/shared/data/tike-siemens-star-small.npz.bz2")


def tike_scan(folder, size=16, scan=None, obj=None, probe=None, stored_probe_factor=1.0):
    """A file in tike's layout, simulated with tike's model: counts |fft2(P * psi[s0:s0+N, s1:s1+N])|^2, unshifted."""
    obj = asymmetric_object(48, 56) if obj is None else obj
    probe = gaussian_probe(size, 3.0) if probe is None else probe
    scan = np.array([[3, 5], [10, 7], [20, 30], [25, 12], [30, 38]], dtype=np.float32) if scan is None else scan
    data = []
    for s0, s1 in scan.astype(int):
        patch = obj[s0 : s0 + size, s1 : s1 + size]
        data.append(np.abs(np.fft.fft2(probe * patch, norm="ortho")) ** 2)
    path = folder / "scan.npz"
    np.savez(path, data=np.array(data, dtype=np.float32)[None], scan=scan[None], probe=(stored_probe_factor * probe)[None, None, None, None])
    return path, obj, probe, scan


def config(path, **changes):
    return dataclasses.replace(PrepareConfig(source=Source.TIKE, train_file=str(path), N=16), **changes)


def test_patterns_are_centred_amplitudes_and_positions_are_window_centres(tmp_path):
    path, obj, probe, scan = tike_scan(tmp_path)
    data, _ = load_scan(path, config(path))
    offset_x, offset_y = data.metadata["position_offset_px"]
    # Bright pixel of each window: tike puts probe pixel [r, c] on psi[s0 + r, s1 + c]; we put
    # window pixel [N/2, N/2] on (x, y), so psi[s0 + N/2, s1 + N/2] must sit at (x, y) + offset.
    np.testing.assert_allclose(data.xcoords + offset_x, scan[:, 1] + 8)
    np.testing.assert_allclose(data.ycoords + offset_y, scan[:, 0] + 8)
    # The patterns, re-simulated by our own forward model at the read positions, match.
    from io_helpers import amplitudes

    expected = amplitudes(obj, probe, data.xcoords + offset_x, data.ycoords + offset_y)
    np.testing.assert_allclose(data.amplitudes, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(data.probe, probe)
    assert "fftshift" in data.metadata["zero_frequency"] and data.metadata["converted_from"] == "intensity"


def test_swapped_axes_would_not_match(tmp_path):
    """The known-answer check above fails for the mirrored reading (x = scan[:, 0]): it can tell."""
    path, obj, probe, scan = tike_scan(tmp_path)
    data, _ = load_scan(path, config(path))
    from io_helpers import amplitudes

    swapped = amplitudes(obj, probe, scan[:, 0].astype(float) + 8, scan[:, 1].astype(float) + 8)
    assert np.abs(swapped - data.amplitudes).max() > 0.1 * data.amplitudes.max()


def test_probe_scale_is_reported_and_can_be_matched_to_the_counts(tmp_path):
    path, *_ = tike_scan(tmp_path, stored_probe_factor=0.01)  # a probe in arbitrary units
    with pytest.warns(InputWarning, match="probe_scale: counts"):
        load_scan(path, config(path))
    data, factor = load_scan(path, config(path, probe_scale=ProbeScale.COUNTS))
    counts = np.mean(np.sum(data.amplitudes.astype(float) ** 2, axis=(1, 2)))
    assert np.sum(np.abs(data.probe) ** 2) == pytest.approx(counts, rel=1e-4)
    assert data.metadata["probe_scale_factor"] == pytest.approx(factor)


def test_wrong_pattern_size_names_prepare_n(tmp_path):
    path, *_ = tike_scan(tmp_path)
    with pytest.raises(DataError, match="prepare.N = 32.*set prepare.N: 16"):
        load_scan(path, config(path, N=32))


@pytest.mark.skipif(not STAR.is_file(), reason="shared test data not present")
def test_siemens_star_loads_centred_with_the_probe_scale_reported(tmp_path):
    path = tmp_path / "star.npz"
    with bz2.open(STAR) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    with pytest.warns(InputWarning, match="not on the counts' scale"):
        data, _ = load_scan(path, dataclasses.replace(config(path), source=Source.AUTO, N=128))
    assert data.amplitudes.shape == (516, 128, 128) and data.metadata["source_detected"].startswith("tike")
    centre, corners = checks.zero_frequency_shares(data.amplitudes.astype(float) ** 2)
    assert centre > 0.9 and corners < 0.01
    assert data.xcoords.min() == pytest.approx(64) and data.ycoords.min() == pytest.approx(64)
    assert 390 < data.xcoords.max() < 400  # positions span about 330 px
