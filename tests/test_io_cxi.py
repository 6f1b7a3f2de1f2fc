"""CXI files: counts, translations in metres (sign as an option), units, the detector mask."""

import dataclasses

import h5py
import numpy as np
import pytest

from io_helpers import amplitudes, asymmetric_object, gaussian_probe
from ptycho.config import CxiTranslation, PrepareConfig, Source
from ptycho.errors import DataError, InputWarning
from ptycho.io import load_scan, units

SIZE = 16
ENERGY_J = 8000 * units.ELECTRON_VOLT_J  # 8 keV
DISTANCE_M = 2.0
PIXEL_M = 75e-6
OBJECT_PIXEL_M = units.wavelength_from_energy_j(ENERGY_J) * DISTANCE_M / (SIZE * PIXEL_M)


def cxi_file(path, translation_sign=+1.0, energy=ENERGY_J, mask=None, probe=None):
    """A CXI scan simulated from a known object at known probe-window centres (object pixels)."""
    obj = asymmetric_object(48, 48)
    true_probe = (30 * gaussian_probe(SIZE, 2.5)).astype(np.complex64)
    rng = np.random.default_rng(3)
    x = rng.uniform(9, 38, 25)
    y = rng.uniform(9, 38, 25)
    counts = amplitudes(obj, true_probe, x, y).astype(np.float64) ** 2
    translation = np.stack([x * OBJECT_PIXEL_M, y * OBJECT_PIXEL_M, np.zeros_like(x)], axis=1) * translation_sign
    with h5py.File(path, "w") as h5:
        h5["cxi_version"] = 160
        detector = h5.create_group("entry_1/instrument_1/detector_1")
        detector["data"] = counts.astype(np.float32)
        detector["distance"] = DISTANCE_M
        detector["x_pixel_size"] = PIXEL_M
        detector["y_pixel_size"] = PIXEL_M
        if mask is not None:
            detector["mask"] = mask
        source = h5.create_group("entry_1/instrument_1/source_1")
        source["energy"] = energy
        if probe is not None:
            source["illumination"] = probe
        h5.create_group("entry_1/data_1")["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        h5.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
    return obj, true_probe, x, y, counts


def config(path, **changes):
    return dataclasses.replace(PrepareConfig(source=Source.CXI, train_file=str(path), N=SIZE), **changes)


def test_round_trip_positions_units_and_amplitudes(tmp_path):
    obj, probe, x, y, counts = cxi_file(tmp_path / "scan.cxi", probe=None)
    data, _ = load_scan(tmp_path / "scan.cxi", config(tmp_path / "scan.cxi"))
    np.testing.assert_allclose(data.amplitudes, np.sqrt(counts), rtol=1e-6)
    # positions: same up to one shift (the reader puts the smallest window corner at 0)
    offset = np.array(data.metadata["position_offset_m"]) / OBJECT_PIXEL_M
    np.testing.assert_allclose(data.xcoords + offset[0], x, atol=1e-9)
    np.testing.assert_allclose(data.ycoords + offset[1], y, atol=1e-9)
    assert data.xcoords.min() == pytest.approx(SIZE / 2)
    assert data.metadata["object_pixel_size_m"] == pytest.approx([OBJECT_PIXEL_M, OBJECT_PIXEL_M])
    assert data.metadata["wavelength_m"] == pytest.approx(1.5498e-10, rel=1e-4)  # 8 keV
    assert data.metadata["detector_distance_m"] == DISTANCE_M


def test_translation_sign_option_and_a_mirrored_sign_shows(tmp_path):
    """Sample-motion files (translation = minus the probe position) need cxi_translation: sample."""
    obj, probe, x, y, counts = cxi_file(tmp_path / "m.cxi", translation_sign=-1.0)
    right, _ = load_scan(tmp_path / "m.cxi", config(tmp_path / "m.cxi", cxi_translation=CxiTranslation.SAMPLE))
    wrong, _ = load_scan(tmp_path / "m.cxi", config(tmp_path / "m.cxi"))
    def misfit(data):  # re-simulate the known object at the positions read (offset restored)
        offset = np.array(data.metadata["position_offset_m"]) / OBJECT_PIXEL_M
        xs, ys = data.xcoords + offset[0], data.ycoords + offset[1]
        if xs.min() < 8 or ys.min() < 8 or xs.max() > 40 or ys.max() > 40:
            xs, ys = data.xcoords, data.ycoords  # mirrored positions fall off this object: compare in place
        return np.abs(amplitudes(obj, probe, xs, ys) - data.amplitudes).max() / data.amplitudes.max()
    assert misfit(right) < 1e-4
    assert misfit(wrong) > 0.05
    assert "sample motion" in right.metadata["positions"]


def test_mask_follows_the_cxi_bits_and_records_them(tmp_path):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint32)
    mask[2, 3] = 0x1  # invalid
    mask[5, 6] = 0x2  # saturated: its counts are wrong, so invalid too
    mask[7, 7] = 0x8  # dead (a file with only this bit gave 5 bad pixels here, 6 in ptychodus)
    mask[9, 9] = 0x20  # in a crystallographic peak mask: informational, the pixel is fine
    mask[4, 4] = 0x800 | 0x4  # artifact corrected but hot: invalid
    cxi_file(tmp_path / "k.cxi", mask=mask)
    data, _ = load_scan(tmp_path / "k.cxi", config(tmp_path / "k.cxi"))
    assert not data.mask[2, 3] and not data.mask[5, 6] and not data.mask[7, 7] and not data.mask[4, 4]
    assert data.mask[9, 9]
    assert data.mask.sum() == SIZE * SIZE - 4
    assert np.all(data.amplitudes[:, 7, 7] == 0) and np.any(data.amplitudes[:, 9, 9] > 0)
    found = data.metadata["mask_bits"]["found"]
    assert found["0x8 dead"] == "1 px, invalid" and found["0x20 in peak mask"] == "1 px, ignored (informational)"
    assert found["0x800 artifact corrected"] == "1 px, ignored (informational)" and found["0x4 hot"] == "1 px, invalid"


def test_probe_modes_from_illumination(tmp_path):
    modes = np.stack([30 * gaussian_probe(SIZE, 2.5), 3 * gaussian_probe(SIZE, 4.0)]).astype(np.complex64)  # counts' scale
    cxi_file(tmp_path / "p.cxi", probe=modes)
    data, _ = load_scan(tmp_path / "p.cxi", config(tmp_path / "p.cxi"))
    np.testing.assert_array_equal(data.probe_modes, modes)


def test_energy_in_electronvolts_is_refused(tmp_path):
    cxi_file(tmp_path / "e.cxi", energy=8000.0)
    with pytest.raises(DataError, match="source_1/energy': 8000 is far too large for joules"):
        load_scan(tmp_path / "e.cxi", config(tmp_path / "e.cxi"))


def test_missing_positions_name_the_paths(tmp_path):
    cxi_file(tmp_path / "x.cxi")
    with h5py.File(tmp_path / "x.cxi", "a") as h5:
        del h5["entry_1/sample_1/geometry_1/translation"]
    with pytest.raises(DataError, match="geometry_1/translation': missing.*data_1/translation"):
        load_scan(tmp_path / "x.cxi", config(tmp_path / "x.cxi"))


def test_a_combined_files_4d_probe_is_read_opr_mode_zero_with_its_incoherent_modes(tmp_path):
    """ptychodus writes its probe as (OPR, modes, N, N); it was dropped and replaced by an estimate."""
    modes = np.stack([30 * gaussian_probe(SIZE, 2.5), 3 * gaussian_probe(SIZE, 4.0)]).astype(np.complex64)
    opr = np.stack([modes, 0.5 * modes])  # OPR mode 1 is not used
    cxi_file(tmp_path / "p.cxi", probe=opr)
    data, _ = load_scan(tmp_path / "p.cxi", config(tmp_path / "p.cxi"))
    np.testing.assert_array_equal(data.probe_modes, modes)
    assert "OPR mode 0 of 2, 2 incoherent mode(s)" in data.metadata["probe_origin"]
    # a probe that cannot serve is reported, not silently replaced
    cxi_file(tmp_path / "r.cxi", probe=np.ones((SIZE, SIZE), np.float32))
    with pytest.warns(InputWarning, match="cannot serve"):
        estimated, _ = load_scan(tmp_path / "r.cxi", config(tmp_path / "r.cxi"))
    assert estimated.metadata["probe_origin"].startswith("estimated")


def write_ptychodus_pair(folder):
    """ptychodus 1.7.0's split CXI files (its CXIProductFileIO / CXIDiffractionFileWriter layout), from cxi_file's scan."""
    folder.mkdir()
    obj, probe, x, y, counts = cxi_file(folder / "combined.cxi")
    extra = np.random.default_rng(5).poisson(20.0, (3, SIZE, SIZE)).astype(np.float64)  # patterns without a position
    order = np.random.default_rng(6).permutation(len(x))  # the product lists positions in another order
    all_counts = np.concatenate([counts, extra])
    with h5py.File(folder / "diffraction.cxi", "w") as h5:
        h5["cxi_version"] = 160
        detector = h5.create_group("entry_1/instrument_1/detector_1")
        detector["data"] = all_counts.astype(np.float32)
        detector["distance"], detector["x_pixel_size"], detector["y_pixel_size"] = DISTANCE_M, PIXEL_M, PIXEL_M
        detector["mask"] = np.zeros((SIZE, SIZE), np.uint32)
        h5.create_group("entry_1/instrument_1/source_1")["energy"] = ENERGY_J
        h5.create_group("entry_1/data_1")["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
    modes = np.stack([probe, 0.1 * gaussian_probe(SIZE, 4.0)]).astype(np.complex64)
    with h5py.File(folder / "product.cxi", "w") as h5:
        h5["cxi_version"] = 160
        translation = np.stack([x * OBJECT_PIXEL_M, y * OBJECT_PIXEL_M, np.zeros_like(x)], axis=1)[order]
        h5.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
        h5.create_group("entry_1/data_1")["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        h5.create_group("entry_1/instrument_1/source_1")["energy"] = ENERGY_J
        h5.create_group("entry_1/instrument_1/detector_1")["distance"] = DISTANCE_M
        h5.create_group("entry_1/image_1")["data"] = modes[None]
        h5["entry_1/instrument_1/source_1"]["illumination"] = h5py.SoftLink("/entry_1/image_1/data")
        h5.create_group("entry_1/image_2")["data"] = obj[None]
        extras = h5.create_group("entry_1/ptychodus")
        extras["probe_position_indexes"] = order.astype(np.int64)
        extras["object_pixel_width_m"] = extras["object_pixel_height_m"] = OBJECT_PIXEL_M
        extras["probe_pixel_width_m"] = extras["probe_pixel_height_m"] = OBJECT_PIXEL_M
        extras["object_center_x_m"] = extras["object_center_y_m"] = 24 * OBJECT_PIXEL_M
    return x, y, counts, modes, order


def test_ptychodus_cxi_pair_ingests_from_either_file(tmp_path):
    """product.cxi (positions, probe, object) + diffraction.cxi (patterns): refused before (no patterns in the product)."""
    x, y, counts, modes, order = write_ptychodus_pair(tmp_path / "pair")
    for given in ("product.cxi", "diffraction.cxi"):
        data, _ = load_scan(tmp_path / "pair" / given, config(tmp_path / "pair" / given))
        assert data.n_patterns == len(x)  # the 3 patterns without a position are not used
        np.testing.assert_allclose(data.amplitudes, np.sqrt(counts[order]), rtol=1e-6)
        offset = np.array(data.metadata["position_offset_m"]) / OBJECT_PIXEL_M
        np.testing.assert_allclose(data.xcoords + offset[0], x[order], atol=1e-9)
        np.testing.assert_allclose(data.ycoords + offset[1], y[order], atol=1e-9)
        np.testing.assert_array_equal(data.scan_index, order)
        np.testing.assert_array_equal(data.probe_modes, modes)
        assert data.metadata["source_format"].startswith("cxi pair") and data.metadata["object_pixel_size_m"] == pytest.approx([OBJECT_PIXEL_M] * 2)
    try:  # the product holds what ptychodus's own CXI reader expects
        from ptychodus.plugins.cxi_file import CXIProductFileIO
    except ImportError:
        return
    product = CXIProductFileIO().read(tmp_path / "pair" / "product.cxi")
    np.testing.assert_array_equal(product.probe_positions.get_indexes(), order)
    assert product.probes.get_array().shape == (1, 2, SIZE, SIZE)


def test_a_product_without_its_diffraction_file_is_refused_naming_the_pair(tmp_path):
    write_ptychodus_pair(tmp_path / "pair")
    (tmp_path / "pair" / "diffraction.cxi").unlink()
    with pytest.raises(DataError, match="product.cxi: key '/entry_1/data_1/data': missing .* no diffraction.cxi beside it"):
        load_scan(tmp_path / "pair" / "product.cxi", config(tmp_path / "pair" / "product.cxi"))
