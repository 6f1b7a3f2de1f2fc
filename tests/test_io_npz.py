"""NPZ input (canonical, PtychoPINN, ptychodus's PtychoPINN export): what used to load silently wrong."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from io_helpers import amplitudes, asymmetric_object, gaussian_probe
from ptycho import physics
from ptycho.config import DiffractionQuantity, InputChecks, PatternOrder, PrepareConfig, Source, ZeroFrequency
from ptycho.data import save_dataset
from ptycho.errors import DataError, InputWarning
from ptycho.io import detector, load_scan
from ptycho.simulate import simulate_train_test

SIZE = 16


def scan(n_positions=20):
    obj = asymmetric_object(48, 48)
    probe = (30 * gaussian_probe(SIZE, 2.5)).astype(np.complex64)  # ~ 6e3 counts per pattern
    rng = np.random.default_rng(1)
    x = rng.uniform(9, 38, n_positions)
    y = rng.uniform(9, 38, n_positions)
    return obj, probe, x, y, amplitudes(obj, probe, x, y)


def config(path, **changes):
    return dataclasses.replace(PrepareConfig(source=Source.NPZ, train_file=str(path), N=SIZE), **changes)


def test_canonical_file_round_trips(tmp_path):
    small = PrepareConfig(N=32, train_object_px=96, test_object_px=64, step_px=6.0, probe_diameter_px=12.0, nphotons=1e4)
    train, _ = simulate_train_test(small)
    save_dataset(train, tmp_path / "train.npz")
    data, factor = load_scan(tmp_path / "train.npz", config(tmp_path / "train.npz", N=32))
    np.testing.assert_array_equal(data.amplitudes, train.amplitudes)
    np.testing.assert_array_equal(data.xcoords, train.xcoords)
    np.testing.assert_array_equal(data.probe, train.probe)
    np.testing.assert_array_equal(data.object, train.object)
    assert factor == 1.0 and data.metadata["input_checks"] == []


def test_uint16_counts_without_metadata_are_refused_with_the_fix(tmp_path):
    obj, probe, x, y, amp = scan()
    counts = np.round(amp**2).astype(np.uint16)
    np.savez(tmp_path / "c.npz", diffraction=counts, xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match=r"c.npz: key 'diffraction': looks like photon counts \(integer dtype uint16.*diffraction_quantity: intensity"):
        load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz"))
    data, _ = load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz", diffraction_quantity=DiffractionQuantity.INTENSITY))
    np.testing.assert_allclose(data.amplitudes, np.sqrt(counts.astype(float)), rtol=1e-6)
    assert data.metadata["converted_from"] == "intensity"
    assert data.metadata["diffraction_quantity_origin"].startswith("intensity: prepare.diffraction_quantity")


def test_float_counts_are_caught_too_and_warn_mode_goes_on(tmp_path):
    obj, probe, x, y, amp = scan()
    np.savez(tmp_path / "c.npz", diffraction=np.round(amp**2).astype(np.float32), xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match="whole numbers"):
        load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz"))
    with pytest.warns(InputWarning) as caught:  # read as amplitudes: the probe is then far off too
        data, _ = load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz", input_checks=InputChecks.WARN))
    assert [str(w.message) for w in caught] == data.metadata["input_checks"]
    assert any("whole numbers" in message for message in data.metadata["input_checks"])
    assert any("not on the counts' scale" in message for message in data.metadata["input_checks"])


def test_amplitudes_are_not_mistaken_for_counts(tmp_path):
    obj, probe, x, y, amp = scan()
    noisy = np.sqrt(np.random.default_rng(2).poisson(amp.astype(float) ** 2)).astype(np.float32)
    np.savez(tmp_path / "a.npz", diffraction=noisy, xcoords=x, ycoords=y, probeGuess=probe)
    data, _ = load_scan(tmp_path / "a.npz", config(tmp_path / "a.npz"))
    np.testing.assert_array_equal(data.amplitudes, noisy)


def test_a_cube_is_ambiguous_and_pattern_order_resolves_it(tmp_path):
    obj, probe, x, y, amp = scan(n_positions=SIZE)  # M = N: (N, N, M) and (M, N, N) look alike
    cube = np.ascontiguousarray(np.transpose(amp, (1, 2, 0)))  # PtychoPINN's legacy (N, N, M)
    np.savez(tmp_path / "cube.npz", diff3d=cube, xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match=r"key 'diff3d': shape \(16, 16, 16\).*pattern_order: MNN.*NNM"):
        load_scan(tmp_path / "cube.npz", config(tmp_path / "cube.npz"))
    data, _ = load_scan(tmp_path / "cube.npz", config(tmp_path / "cube.npz", pattern_order=PatternOrder.NNM))
    np.testing.assert_array_equal(data.amplitudes, amp)


def test_patterns_with_the_zero_frequency_in_the_corners_are_refused(tmp_path):
    obj, probe, x, y, amp = scan()
    np.savez(tmp_path / "s.npz", diffraction=np.fft.ifftshift(amp, axes=(1, 2)), xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match="not centred; set prepare.zero_frequency: corners"):
        load_scan(tmp_path / "s.npz", config(tmp_path / "s.npz"))
    data, _ = load_scan(tmp_path / "s.npz", config(tmp_path / "s.npz", zero_frequency=ZeroFrequency.CORNERS))
    np.testing.assert_allclose(data.amplitudes, amp, rtol=1e-6)
    # ... and shifting an already centred file is caught the same way.
    np.savez(tmp_path / "c.npz", diffraction=amp, xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match="set prepare.zero_frequency: centre"):
        load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz", zero_frequency=ZeroFrequency.CORNERS))


def test_checks_see_the_data_after_the_mask(tmp_path):
    """Marker values in masked pixels (1e9 in a corner, -1, NaN) fail no check: they are not data."""
    obj, probe, x, y, amp = scan()
    marked = amp.copy()
    mask = np.ones((SIZE, SIZE), dtype=bool)
    mask[:3, :3] = False
    marked[:, :3, :3] = 1e9  # would put nearly all the energy in a corner: "not fftshifted"
    mask[8, 12] = False
    marked[:, 8, 12] = -1.0  # would be "negative value ... mark those pixels invalid in a mask"
    mask[12, 5] = False
    marked[:, 12, 5] = np.nan
    np.savez(tmp_path / "m.npz", diffraction=marked, xcoords=x, ycoords=y, probeGuess=probe, mask=mask)
    data, _ = load_scan(tmp_path / "m.npz", config(tmp_path / "m.npz"))
    np.testing.assert_allclose(data.amplitudes[:, mask], amp[:, mask], rtol=1e-6)
    assert np.all(data.amplitudes[:, ~mask] == 0) and data.metadata["input_checks"] == []
    # the same markers without the mask are still caught
    np.savez(tmp_path / "u.npz", diffraction=np.where(np.isnan(marked), 0, marked), xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match="negative amplitude value"):
        load_scan(tmp_path / "u.npz", config(tmp_path / "u.npz"))
    np.savez(tmp_path / "c.npz", diffraction=np.where(marked < 0, 0, np.nan_to_num(marked)), xcoords=x, ycoords=y, probeGuess=probe)
    with pytest.raises(DataError, match="not centred"):
        load_scan(tmp_path / "c.npz", config(tmp_path / "c.npz"))


def test_a_mask_of_the_wrong_shape_is_refused_naming_it(tmp_path):
    obj, probe, x, y, amp = scan()
    np.savez(tmp_path / "w.npz", diffraction=amp, xcoords=x, ycoords=y, probeGuess=probe, mask=np.ones((SIZE, SIZE + 2), bool))
    with pytest.raises(DataError, match=r"w.npz: key 'mask': shape \(16, 18\) does not match the 16 x 16 patterns"):
        load_scan(tmp_path / "w.npz", config(tmp_path / "w.npz"))


def test_ptychodus_ptychopinn_export(tmp_path):
    """ptychodus writes raw counts in diff3d, probe modes (K, N, N), bad_pixels and xcoords_start."""
    obj, probe, x, y, amp = scan()
    second = (0.5 * gaussian_probe(SIZE, 4.0)).astype(np.complex64)
    counts = np.round(amp.astype(float) ** 2 + np.abs(amplitudes(obj, second, x, y)) ** 2)
    bad = np.zeros((SIZE, SIZE), dtype=bool)
    bad[3, 4] = True
    counts[:, 3, 4] = 17.25  # ptychodus inpaints bad pixels: not a whole number
    np.savez(
        tmp_path / "export.npz", xcoords=x, ycoords=y, xcoords_start=x, ycoords_start=y, diff3d=counts,
        bad_pixels=bad, probeGuess=np.stack([probe, second]), objectGuess=obj, scan_index=np.zeros(len(x), dtype=int),
    )
    with pytest.raises(DataError, match="looks like photon counts"):
        load_scan(tmp_path / "export.npz", config(tmp_path / "export.npz"))
    data, _ = load_scan(tmp_path / "export.npz", config(tmp_path / "export.npz", diffraction_quantity=DiffractionQuantity.INTENSITY))
    assert data.probe_modes.shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(data.probe, probe)
    assert not data.mask[3, 4] and data.mask.sum() == SIZE * SIZE - 1
    assert np.all(data.amplitudes[:, 3, 4] == 0)  # invalid pixels hold no number
    valid = data.mask
    np.testing.assert_allclose(data.amplitudes[:, valid], np.sqrt(counts[:, valid]), rtol=1e-6)
    assert data.metadata["xcoords_start"].startswith("equal")


def ptychodus_x_px(x_m, center_m, pixel_m, width):
    """ptychodus 1.7.0's object-pixel x of a position (its own code where installed, else its formula)."""
    try:
        from ptychodus.api.object import ObjectGeometry
        from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    except ImportError:
        return (np.asarray(x_m) - center_m) / pixel_m + (width - 1) / 2
    geometry = ObjectGeometry(width_px=width, height_px=width, pixel_width_m=pixel_m, pixel_height_m=pixel_m,
                              center_x_m=center_m, center_y_m=center_m)
    positions = ProbePositionSequence([ProbePosition(i, x, 0.0) for i, x in enumerate(x_m)])
    return np.asarray(geometry.map_probe_positions_to_object_x_px(positions))


def test_ptychodus_export_positions_are_moved_half_a_pixel_to_the_window_centre(tmp_path):
    """ptychodus's export writes its (W - 1)/2 coordinate: read as is, everything landed -0.5 px in x and y."""
    width, pixel_m, center_m = 48, 1e-8, 2e-7
    obj = np.full((width, width), 0.3, dtype=np.complex64)
    obj[21, 27] = 3.0  # a bright pixel
    probe = (30 * gaussian_probe(SIZE, 2.5)).astype(np.complex64)
    # probe positions in metres; ptychodus puts the first one's window (from x_px - (N - 1)/2) at columns 19 ... 34,
    # so the bright pixel is its pixel N/2 = 8
    x_m = center_m + (np.array([27.0, 24.5, 30.25]) - width / 2) * pixel_m
    y_m = center_m + (np.array([21.0, 22.5, 19.75]) - width / 2) * pixel_m
    x_px, y_px = ptychodus_x_px(x_m, center_m, pixel_m, width), ptychodus_x_px(y_m, center_m, pixel_m, width)
    assert (x_px[0] - (SIZE - 1) / 2, y_px[0] - (SIZE - 1) / 2) == pytest.approx((27 - SIZE // 2, 21 - SIZE // 2))
    counts = amplitudes(obj, probe, x_px + 0.5, y_px + 0.5).astype(np.float64) ** 2
    np.savez(
        tmp_path / "export.npz", xcoords=x_px, ycoords=y_px, xcoords_start=x_px, ycoords_start=y_px, diff3d=counts,
        bad_pixels=np.zeros((SIZE, SIZE), bool), probeGuess=probe[None], objectGuess=obj, scan_index=np.zeros(3, dtype=int),
    )
    data, _ = load_scan(tmp_path / "export.npz", config(tmp_path / "export.npz", diffraction_quantity=DiffractionQuantity.INTENSITY))
    np.testing.assert_allclose(data.xcoords, x_px + 0.5)
    np.testing.assert_allclose(data.ycoords, y_px + 0.5)
    assert "x = xcoords + 1/2" in data.metadata["positions"]
    # bright-pixel test: our window centred at the first position holds the bright pixel at [N/2, N/2]
    with torch.no_grad():
        patch = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(data.xcoords[:1]), torch.from_numpy(data.ycoords[:1]), SIZE)[0].numpy()
    assert np.unravel_index(np.argmax(np.abs(patch)), patch.shape) == (SIZE // 2, SIZE // 2)
    # and the data agree with the object re-simulated at the corrected positions, not at the file's
    def misfit(x, y):
        return float(np.abs(amplitudes(obj, probe, x, y) - data.amplitudes).max() / data.amplitudes.max())
    assert misfit(data.xcoords, data.ycoords) < 1e-4 and misfit(x_px, y_px) > 0.05
    # a PtychoPINN file (no bad_pixels) keeps its positions
    np.savez(tmp_path / "pinn.npz", xcoords=x_px, ycoords=y_px, xcoords_start=x_px, ycoords_start=y_px, diff3d=np.sqrt(counts), probeGuess=probe)
    plain, _ = load_scan(tmp_path / "pinn.npz", config(tmp_path / "pinn.npz"))
    np.testing.assert_array_equal(plain.xcoords, x_px)


def test_xcoords_start_that_differ_are_reported(tmp_path):
    obj, probe, x, y, amp = scan()
    np.savez(tmp_path / "p.npz", diffraction=amp, xcoords=x, ycoords=y, xcoords_start=x + 3, ycoords_start=y, probeGuess=probe)
    with pytest.warns(InputWarning, match="xcoords_start': present and different from xcoords/ycoords, and not used"):
        load_scan(tmp_path / "p.npz", config(tmp_path / "p.npz"))


def test_a_file_without_probe_gets_the_focused_estimate(tmp_path):
    obj = np.ones((48, 48), dtype=np.complex64)
    probe = np.abs(gaussian_probe(SIZE, 2.0)).astype(np.complex64)  # real, even about [N/2, N/2], positive far field
    x = np.array([12.0, 20.0, 30.0])
    y = np.array([15.0, 25.0, 33.0])
    np.savez(tmp_path / "n.npz", diffraction=amplitudes(obj, probe, x, y), xcoords=x, ycoords=y)
    data, _ = load_scan(tmp_path / "n.npz", config(tmp_path / "n.npz"))
    # A flat object: every pattern is |F(P)|, so the estimate is the probe itself, centred on [N/2, N/2].
    np.testing.assert_allclose(np.abs(data.probe), np.abs(probe), atol=1e-3 * np.abs(probe).max())  # the truncated Gaussian ripples by 2e-4
    assert np.unravel_index(np.argmax(np.abs(data.probe)), data.probe.shape) == (SIZE // 2, SIZE // 2)
    assert "estimated" in data.metadata["probe_origin"]


def test_probe_estimate_far_field_is_the_mean_amplitude():
    rng = np.random.default_rng(0)
    intensities = rng.uniform(0, 10, (5, SIZE, SIZE))
    estimate = detector.probe_from_patterns(intensities, None)[0]
    far = np.abs(np.fft.fftshift(np.fft.fft2(estimate, norm="ortho")))
    np.testing.assert_allclose(far, np.sqrt(intensities.mean(axis=0)), rtol=1e-5)
