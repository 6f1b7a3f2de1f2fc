"""Near field is refused with the reason: the file's far_field flag, else the frames' motion with the scan."""

import bz2
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from foreign_data import build_scan
from io_helpers import gaussian_probe
from ptycho.config import InputChecks, PrepareConfig, Source
from ptycho.errors import DataError, InputWarning
from ptycho.io import load_scan, nearfield
from ptycho.simulate import simulate_train_test

PETRA = Path("/work/shared/data/petra-p25-near-field.cxi.bz2")


@pytest.mark.parametrize("shift", [(3, -2), (-5, 0), (0, 7)])
def test_frame_shift_recovers_a_known_shift_with_its_sign(shift):
    rng = np.random.default_rng(0)
    frame = rng.standard_normal((48, 48))
    moved = np.roll(frame, (shift[1], shift[0]), axis=(0, 1))  # content moves by +dx in columns, +dy in rows
    np.testing.assert_array_equal(nearfield.frame_shift(frame, moved), shift)


def fresnel_scan(size=48, step_px=3.0, fresnel_px=0.08, seed=0):
    """A near-field scan: exit waves P O propagated by the Fresnel transfer function, no magnification.

    fresnel_px: the pixel Fresnel number dx**2 / (wavelength z); the kernel is
    exp(-i pi (u**2 + v**2) / fresnel_px) with u, v in cycles per pixel.
    """
    rng = np.random.default_rng(seed)
    obj_px = size + 60
    rows, cols = np.mgrid[0:obj_px, 0:obj_px]
    phase = np.zeros((obj_px, obj_px))
    for _ in range(40):  # phase discs: edges that the propagation turns into fringes
        r0, c0, radius = rng.uniform(0, obj_px), rng.uniform(0, obj_px), rng.uniform(2, 7)
        phase += 0.6 * ((rows - r0) ** 2 + (cols - c0) ** 2 < radius**2)
    obj = np.exp(1j * phase) * (1 - 0.1 * (phase > 0))
    illumination = gaussian_probe(size, size / 3)  # a broad beam: the frame is a picture of the sample
    frequencies = np.fft.fftfreq(size)
    kernel = np.exp(-1j * np.pi * (frequencies[None, :] ** 2 + frequencies[:, None] ** 2) / fresnel_px)
    centres = np.arange(size // 2 + 2, obj_px - size // 2 - 2, step_px)
    xs, ys = [c.ravel() for c in np.meshgrid(centres, centres)]
    frames = []
    for x, y in zip(xs, ys):
        window = obj[int(y) - size // 2 : int(y) + size // 2, int(x) - size // 2 : int(x) + size // 2]
        frames.append(np.abs(np.fft.ifft2(np.fft.fft2(illumination * window) * kernel)) ** 2)
    counts = rng.poisson(np.array(frames) * 2000.0 / np.mean(frames))
    return np.sqrt(counts).astype(np.float32), xs.astype(float), ys.astype(float), illumination


def npz_config(path, size, **changes):
    return dataclasses.replace(PrepareConfig(source=Source.NPZ, train_file=str(path), N=size), **changes)


def test_a_synthetic_near_field_scan_is_refused_with_the_reason(tmp_path):
    amplitudes, xs, ys, probe = fresnel_scan()
    np.savez(tmp_path / "near.npz", diffraction=amplitudes, xcoords=xs, ycoords=ys, probeGuess=probe.astype(np.complex64))
    with pytest.raises(DataError, match=r"near.npz: key 'diffraction': the frames move with the scan, as in the near field .*"
                       r"Fresnel"):
        load_scan(tmp_path / "near.npz", npz_config(tmp_path / "near.npz", 48))
    with pytest.warns(InputWarning, match="as in the near field"):
        data, _ = load_scan(tmp_path / "near.npz", npz_config(tmp_path / "near.npz", 48, input_checks=InputChecks.WARN))
    assert data.metadata["far_field_check"].startswith("near field by the data")


def test_the_petra_near_field_scan_is_refused_with_the_reason(tmp_path):
    if not PETRA.is_file():
        pytest.skip(f"{PETRA} is not here")
    path = tmp_path / "petra.cxi"
    with bz2.open(PETRA) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    config = PrepareConfig(source=Source.CXI, train_file=str(path), N=100)
    with pytest.raises(DataError, match=r"petra.cxi: key '/entry_1/data_1/data': the frames move with the scan, "
                       r"as in the near field \(between 48 pairs"):
        load_scan(path, config)
    with pytest.warns(InputWarning):
        data, _ = load_scan(path, dataclasses.replace(config, input_checks=InputChecks.WARN))
    # measured: all 48 pairs agree, a median shift of 6.4 detector px (12.66 keV, 1.12 m, 55 um pixels)
    from ptycho.io import read_scan

    raw = read_scan(path, config)
    motion = nearfield.measure(raw.patterns.astype(np.float64) * raw.mask, raw.xcoords, raw.ycoords, raw.mask)
    assert motion.near_field and motion.agreeing_share >= 0.9 and motion.median_shift_px > 4


@pytest.mark.parametrize("spot_diameter_px", [24.0, 40.0])
def test_far_field_scans_are_not_taken_for_near_field(tmp_path, spot_diameter_px):
    """Simulated far-field data, with a focused probe and with strongly defocused rings (shadow-like patterns)."""
    small = PrepareConfig(N=32, train_object_px=96, test_object_px=64, step_px=4.0, probe_diameter_px=8.0, nphotons=1e5)
    train, _ = simulate_train_test(small)
    assert not nearfield.measure(train.amplitudes**2, train.xcoords, train.ycoords).near_field
    arrays = build_scan(size=32, n_per_side=10, step_px=5, spot_diameter_px=spot_diameter_px, seed=1)
    np.savez(tmp_path / "far.npz", **arrays)
    data, _ = load_scan(tmp_path / "far.npz", npz_config(tmp_path / "far.npz", 32))
    assert data.metadata["far_field_check"].startswith("far field by the data")
