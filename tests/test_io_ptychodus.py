"""ptychodus products: reading a product/diffraction pair, the half-pixel convention, exporting ours."""

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch

from io_helpers import asymmetric_object, gaussian_probe
from ptycho import physics
from ptycho.config import PrepareConfig, Source
from ptycho.data import PtychoDataset
from ptycho.errors import DataError, InputWarning
from ptycho.io import detect, load_scan, units
from ptycho.io.product import NOMINAL_OBJECT_PIXEL_M, export_geometry, paired_diffraction_path, product_bytes, write_product
from ptycho.reconstruction import Reconstruction

SIZE = 16
PIXEL_M = units.object_pixel_size_m(units.wavelength_from_energy_ev(10000.0), 1.5, SIZE, 75e-6)  # 155 nm
CENTER = (3e-6, -1e-6)


def ptychodus_window(obj: np.ndarray, x_px: float, y_px: float, size: int) -> np.ndarray:
    """The window ptychodus 1.7.0 cuts at object pixel (x_px, y_px): lower corner at x_px - (N - 1)/2, bilinear.

    Written from ptychodus.api.interpolate._calculate_support_frac / BarycentricArrayInterpolator.
    """
    def support(x):
        lower = x - (size - 1) / 2
        whole = int(np.floor(lower))
        return whole, lower - whole
    col, fx = support(x_px)
    row, fy = support(y_px)
    block = obj[row : row + size + 1, col : col + size + 1]
    return ((1 - fy) * (1 - fx) * block[:-1, :-1] + (1 - fy) * fx * block[:-1, 1:]
            + fy * (1 - fx) * block[1:, :-1] + fy * fx * block[1:, 1:])


def write_pair(folder, obj, x_m, y_m, *, energy_key="photon_energy_eV", bad=None, layers=True):
    """product.h5 + diffraction.h5 in ptychodus 1.7.0's layout; patterns are arbitrary counts."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(x_m)
    probe = (10 * gaussian_probe(SIZE, 2.5)).astype(np.complex64)
    rng = np.random.default_rng(0)
    patterns = rng.poisson(50.0, (count, SIZE, SIZE)).astype(np.uint32)
    patterns[:, SIZE // 2, SIZE // 2] += 5000  # a centred far field
    with h5py.File(folder / "product.h5", "w") as h5:
        h5.attrs["name"] = "test"
        h5.attrs["detector_object_distance_m"] = 1.5
        h5.attrs[energy_key] = 10000.0
        h5.attrs["probe_photon_count"] = 0.0
        h5["probe_position_indexes"] = np.arange(count)[::-1] + 100  # matched by index, not order
        h5["probe_position_x_m"] = x_m[::-1]
        h5["probe_position_y_m"] = y_m[::-1]
        h5["probe"] = probe[None, None]
        h5["probe"].attrs["pixel_width_m"] = PIXEL_M
        h5["probe"].attrs["pixel_height_m"] = PIXEL_M
        h5["object"] = obj[None] if layers else obj
        h5["object"].attrs["center_x_m"] = CENTER[0]
        h5["object"].attrs["center_y_m"] = CENTER[1]
        h5["object"].attrs["pixel_width_m"] = PIXEL_M
        h5["object"].attrs["pixel_height_m"] = PIXEL_M
    with h5py.File(folder / "diffraction.h5", "w") as h5:
        h5["patterns"] = patterns
        h5["patterns"].attrs["detector_pixel_width_m"] = 75e-6
        h5["patterns"].attrs["detector_pixel_height_m"] = 75e-6
        h5["indexes"] = np.arange(count) + 100
        h5["bad_pixels"] = np.zeros((SIZE, SIZE), dtype=bool) if bad is None else bad
    return patterns, probe


def config(path, **changes):
    return dataclasses.replace(PrepareConfig(source=Source.PTYCHODUS, train_file=str(path), N=SIZE), **changes)


def metres(x_px, y_px, shape):
    """ptychodus 1.7.0: x_m = center_x_m + (x_px - (W - 1)/2) * pixel_width_m."""
    height, width = shape
    return CENTER[0] + (np.asarray(x_px) - (width - 1) / 2) * PIXEL_M, CENTER[1] + (np.asarray(y_px) - (height - 1) / 2) * PIXEL_M


def test_a_bright_object_pixel_lands_where_ptychodus_puts_it(tmp_path):
    """A position that ptychodus centres on (half a pixel before) a bright pixel puts it on our window centre."""
    obj = np.full((48, 56), 0.1, dtype=np.complex64)
    obj[20, 30] = 1.0
    # ptychodus window lower corner = 29.5 - 7.5 = 22: integer (a second position: a scan needs two)
    x_m, y_m = metres([29.5, 20.0], [19.5, 24.0], obj.shape)
    write_pair(tmp_path / "scan", obj, x_m, y_m)
    data, _ = load_scan(tmp_path / "scan", config(tmp_path / "scan"))
    first = int(np.argmin(np.hypot(data.xcoords - 30, data.ycoords - 20)))  # the other one is 9 px away
    assert (data.xcoords[first], data.ycoords[first]) == pytest.approx((30.0, 20.0))
    ours = physics.extract_patches(torch.from_numpy(obj), torch.tensor(data.xcoords), torch.tensor(data.ycoords), SIZE)[first].numpy()
    theirs = ptychodus_window(obj, 29.5, 19.5, SIZE)
    assert np.unravel_index(np.argmax(np.abs(ours)), ours.shape) == (SIZE // 2, SIZE // 2)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_sub_pixel_windows_agree_with_ptychodus_and_patterns_match_by_index(tmp_path):
    obj = asymmetric_object(48, 56)
    rng = np.random.default_rng(5)
    x_px, y_px = rng.uniform(10, 44, 12), rng.uniform(10, 36, 12)
    x_m, y_m = metres(x_px, y_px, obj.shape)
    patterns, probe = write_pair(tmp_path / "scan", obj, x_m, y_m)
    data, _ = load_scan(tmp_path / "scan", config(tmp_path / "scan"))
    ours = physics.extract_patches(torch.from_numpy(obj), torch.tensor(data.xcoords), torch.tensor(data.ycoords), SIZE).numpy()
    order = np.argsort(data.scan_index)  # the product lists positions in reverse
    for i, j in enumerate(order):
        np.testing.assert_allclose(ours[j], ptychodus_window(obj, x_px[i], y_px[i], SIZE), atol=2e-6)
        np.testing.assert_allclose(data.amplitudes[j], np.sqrt(patterns[i]), rtol=1e-6)
    np.testing.assert_array_equal(data.probe, probe)
    np.testing.assert_array_equal(data.object, obj)
    assert data.metadata["object_pixel_size_m"] == [PIXEL_M, PIXEL_M]
    assert data.metadata["wavelength_m"] == pytest.approx(units.wavelength_from_energy_ev(10000.0))
    assert detect(tmp_path / "scan")[0] is Source.PTYCHODUS


def test_older_energy_key_bad_pixels_and_the_product_npz(tmp_path):
    obj = asymmetric_object(48, 56)
    x_m, y_m = metres([20.0, 30.0], [20.0, 25.0], obj.shape)
    bad = np.zeros((SIZE, SIZE), dtype=bool)
    bad[1, 2] = True
    write_pair(tmp_path / "old", obj, x_m, y_m, energy_key="probe_energy_eV", bad=bad)
    from_h5, _ = load_scan(tmp_path / "old" / "product.h5", config(tmp_path / "old" / "product.h5"))
    assert not from_h5.mask[1, 2] and from_h5.mask.sum() == SIZE * SIZE - 1
    # The same product as product.npz (attributes flattened with prefixes).
    with h5py.File(tmp_path / "old" / "product.h5") as h5:
        flat = {key: h5[key][()] for key in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m", "probe", "object")}
        flat.update(photon_energy_eV=10000.0, detector_object_distance_m=1.5, probe_pixel_width_m=PIXEL_M, probe_pixel_height_m=PIXEL_M,
                    object_center_x_m=CENTER[0], object_center_y_m=CENTER[1], object_pixel_width_m=PIXEL_M, object_pixel_height_m=PIXEL_M)
    (tmp_path / "old" / "product.h5").unlink()
    np.savez(tmp_path / "old" / "product.npz", **flat)
    from_npz, _ = load_scan(tmp_path / "old", config(tmp_path / "old"))
    np.testing.assert_allclose(from_npz.xcoords, from_h5.xcoords)
    np.testing.assert_array_equal(from_npz.amplitudes, from_h5.amplitudes)


def test_a_constant_object_is_an_initial_guess_and_is_dropped(tmp_path):
    obj = np.ones((48, 56), dtype=np.complex64)
    write_pair(tmp_path / "s", obj, *metres([20.0, 30.0], [20.0, 25.0], obj.shape))
    data, _ = load_scan(tmp_path / "s", config(tmp_path / "s"))
    assert data.object is None and "initial guess" in data.metadata["reference_object"]


def test_a_product_pixel_inconsistent_with_the_geometry_is_reported(tmp_path):
    obj = asymmetric_object(48, 56)
    write_pair(tmp_path / "s", obj, *metres([20.0, 30.0], [20.0, 25.0], obj.shape))
    with h5py.File(tmp_path / "s" / "product.h5", "a") as h5:
        h5.attrs["detector_object_distance_m"] = 3.0  # twice the distance: half the pixel
    with pytest.warns(InputWarning, match="object pixel .* differs from wavelength z / \\(N p\\)"):
        load_scan(tmp_path / "s", config(tmp_path / "s"))


def test_missing_diffraction_file_is_named(tmp_path):
    obj = asymmetric_object(48, 56)
    write_pair(tmp_path / "s", obj, *metres([20.0, 30.0], [20.0, 25.0], obj.shape))
    (tmp_path / "s" / "diffraction.h5").unlink()
    with pytest.raises(DataError, match="diffraction.h5: file not found"):
        load_scan(tmp_path / "s", config(tmp_path / "s"))


def dataset(x, y, metadata):
    return PtychoDataset(
        amplitudes=np.ones((len(x), SIZE, SIZE), dtype=np.float32), xcoords=np.asarray(x, dtype=float),
        ycoords=np.asarray(y, dtype=float), probe=gaussian_probe(SIZE, 2.0), object=None,
        scan_index=np.arange(len(x), dtype=np.int64), metadata=metadata,
    )


def test_export_reads_back_by_the_format_facts(tmp_path):
    """Our reconstruction as product.h5: a bright canvas pixel under a position stays under it for ptychodus."""
    obj = np.full((40, 50), 0.2, dtype=np.complex64)
    origin = (-5, 3)  # canvas pixel [r, c] is at x = -5 + c, y = 3 + r
    obj[17, 25] = 1.0  # at x = 20, y = 20
    data = dataset([20.0, 31.5], [20.0, 24.25], {"object_pixel_size_m": [PIXEL_M, 2 * PIXEL_M], "photon_energy_eV": 9000.0,
                                                 "detector_distance_m": 2.0, "position_offset_m": [1e-6, 2e-6]})
    reconstruction = Reconstruction(obj, origin, np.ones(obj.shape, np.float32), "baseline-rpie", probe=gaussian_probe(SIZE, 3.0))
    write_product(tmp_path / "product.h5", reconstruction, data, losses=[0.5, 0.2])
    with h5py.File(tmp_path / "product.h5") as h5:
        stored = h5["object"]
        width, height = stored.shape[-1], stored.shape[-2]
        x_px = (h5["probe_position_x_m"][()] - stored.attrs["center_x_m"]) / stored.attrs["pixel_width_m"] + (width - 1) / 2
        y_px = (h5["probe_position_y_m"][()] - stored.attrs["center_y_m"]) / stored.attrs["pixel_height_m"] + (height - 1) / 2
        window = ptychodus_window(stored[0], x_px[0], y_px[0], SIZE)
        assert np.unravel_index(np.argmax(np.abs(window)), window.shape) == (SIZE // 2, SIZE // 2)
        np.testing.assert_allclose(x_px + 0.5, data.xcoords - origin[0])  # ptychodus' x_px is ours - 1/2
        np.testing.assert_allclose(y_px + 0.5, data.ycoords - origin[1])
        np.testing.assert_allclose(h5["probe_position_x_m"][()], data.xcoords * PIXEL_M + 1e-6)
        assert h5["probe"].shape == (1, 1, SIZE, SIZE) and h5["probe"].attrs["pixel_height_m"] == 2 * PIXEL_M
        assert h5.attrs["photon_energy_eV"] == 9000.0 and h5.attrs["detector_object_distance_m"] == 2.0
        np.testing.assert_array_equal(h5["loss_values"][()], [0.5, 0.2])
        np.testing.assert_array_equal(h5["probe"][0, 0], reconstruction.probe)


def test_export_without_units_writes_a_consistent_nominal_geometry_and_is_byte_deterministic(tmp_path):
    data = dataset([20.0], [20.0], {})
    obj = np.ones((40, 50), dtype=np.complex64)
    kwargs = dict(object_=obj, origin=(0, 0), probe=data.probe, xcoords=data.xcoords, ycoords=data.ycoords,
                  scan_index=data.scan_index, metadata={}, name="pinn", comments="")
    first, second = product_bytes(**kwargs), product_bytes(**kwargs)
    assert first == second
    (tmp_path / "p.h5").write_bytes(first)
    with h5py.File(tmp_path / "p.h5") as h5:
        pixel = h5["object"].attrs["pixel_width_m"]
        assert pixel == NOMINAL_OBJECT_PIXEL_M and "nominal geometry" in h5.attrs["ptycho_units"]
        assert "object_pixel_m" in json.loads(h5.attrs["ptycho_nominal_geometry"])
        # ptychodus's object pixel lambda z / (N p) with the diffraction file's detector pixel
        geometry = export_geometry({}, SIZE)
        derived = units.wavelength_from_energy_ev(h5.attrs["photon_energy_eV"]) * h5.attrs["detector_object_distance_m"] / (SIZE * geometry["detector_pixel_m"][0])
        assert derived == pytest.approx(pixel, rel=1e-9) and h5.attrs["photon_energy_eV"] > 0
        np.testing.assert_allclose(h5["probe_position_x_m"][()], [20.0 * pixel])
    assert export_geometry(units.units_metadata(wavelength_m=1e-10, distance_m=2.0, detector_pixel_m=(75e-6, 75e-6), size=SIZE), SIZE)["nominal"] == []


def split_export(tmp_path, metadata):
    """The test split (largest x) of a scan, reconstructed as its own object, exported: (test data, product path)."""
    from ptycho.workflows import split_spatially

    rng = np.random.default_rng(4)
    x, y = rng.uniform(10, 60, 40), rng.uniform(10, 30, 40)
    scan = dataclasses.replace(dataset(x, y, metadata), amplitudes=rng.uniform(0, 9, (40, SIZE, SIZE)).astype(np.float32))
    _, test = split_spatially(scan, 0.3, "scan")
    obj = asymmetric_object(40, 70)
    reconstruction = Reconstruction(obj, (0, 0), np.ones(obj.shape, np.float32), "pinn", probe=None)
    write_product(tmp_path / "reconstruction_product.h5", reconstruction, test)
    return test, obj, tmp_path / "reconstruction_product.h5"


def test_export_writes_the_diffraction_file_of_exactly_its_scan_beside_it(tmp_path):
    """A test-split product opened with the whole scan's patterns made ptychodus interpolate positions that do not exist."""
    test, obj, product = split_export(tmp_path, {})
    diffraction = paired_diffraction_path(product)
    assert diffraction.name == "reconstruction_product_diffraction.h5"
    with h5py.File(product) as h5, h5py.File(diffraction) as pairs:
        assert h5.attrs["ptycho_diffraction_file"] == diffraction.name and diffraction.name in h5.attrs["comments"]
        np.testing.assert_array_equal(pairs["indexes"][()], h5["probe_position_indexes"][()])
        np.testing.assert_array_equal(pairs["indexes"][()], test.scan_index)
        assert len(test.scan_index) < 40  # the split's own patterns, not the whole scan's
        np.testing.assert_allclose(pairs["patterns"][()], test.amplitudes.astype(np.float64) ** 2, rtol=1e-6)
        assert pairs["bad_pixels"].shape == (SIZE, SIZE) and not pairs["bad_pixels"][()].any()
    # our reader pairs them too, preferring the paired file over a folder's diffraction.h5
    (tmp_path / "diffraction.h5").write_bytes(b"not the pair")
    data, _ = load_scan(product, config(product))
    np.testing.assert_allclose(data.amplitudes, test.amplitudes, rtol=1e-6)
    np.testing.assert_array_equal(data.scan_index, test.scan_index)
    assert "object_pixel_m" in data.metadata["nominal_geometry"]  # the units read back are said to be nominal


@pytest.mark.parametrize("units_known", [False, True])
def test_ptychodus_application_loads_object_and_probe_of_an_export(tmp_path, units_known):
    """ptychodus's ModelCore loaded an empty object and probe for a unitless export (energy = distance = 0)."""
    pytest.importorskip("ptychodus.model", reason="ptychodus (optional: pip install ptychodus) is not installed")
    from ptychodus.model import ModelCore

    metadata = units.units_metadata(wavelength_m=1.2e-10, distance_m=1.5, detector_pixel_m=(75e-6, 75e-6), size=SIZE) if units_known else {}
    test, obj, product = split_export(tmp_path, metadata)
    with ModelCore() as core:
        patterns = core.workflow_api.load_assembled_diffraction_data(paired_diffraction_path(product))
        loaded = core.workflow_api.load_product(product, diffraction=patterns).get_product()
    np.testing.assert_array_equal(loaded.object_.get_layer(0), obj)
    assert loaded.probes.get_array().shape[-2:] == (SIZE, SIZE)
    assert sorted(position.index for position in loaded.probe_positions) == sorted(test.scan_index.tolist())
    assert loaded.metadata.photon_energy_eV > 0 and loaded.metadata.detector_distance_m > 0


def test_a_near_field_product_is_refused_by_its_far_field_flag(tmp_path):
    """ptychodus 1.7.0 writes far_field; a near-field product used to ingest silently as far field."""
    obj = asymmetric_object(48, 56)
    write_pair(tmp_path / "s", obj, *metres([20.0, 30.0], [20.0, 25.0], obj.shape))
    with h5py.File(tmp_path / "s" / "product.h5", "a") as h5:
        h5.attrs["far_field"] = np.bool_(False)
    with pytest.raises(DataError, match=r"product.h5 \+ diffraction.h5: key 'far_field': the file says the measurement is near field"):
        load_scan(tmp_path / "s", config(tmp_path / "s"))
    with h5py.File(tmp_path / "s" / "product.h5", "a") as h5:
        h5.attrs["far_field"] = np.bool_(True)
    data, _ = load_scan(tmp_path / "s", config(tmp_path / "s"))
    assert data.metadata["far_field"] is True and data.metadata["far_field_check"].startswith("the file says far field")


def test_the_diffraction_file_is_written_chunk_by_chunk_from_a_row_file_and_atomically(tmp_path, monkeypatch):
    """A 50,000-pattern scan read by rows must not be held whole to be exported (issue 18: peak memory)."""
    from ptycho import rowfile
    from ptycho.io.product import write_diffraction

    amplitudes = np.random.default_rng(0).uniform(0, 9, (7, SIZE, SIZE)).astype(np.float32)
    raw = tmp_path / "rows.bin"
    raw.write_bytes(amplitudes.tobytes())
    rows = rowfile.RowFile.open(raw, 0, amplitudes.shape, np.float32, source=str(raw))
    monkeypatch.setattr(rowfile, "CHUNK_BYTES", 2 * SIZE * SIZE * 4)  # two rows per chunk: four chunks
    kwargs = dict(scan_index=np.arange(7), mask=None, metadata={})
    write_diffraction(tmp_path / "rows.h5", amplitudes=rows, **kwargs)
    write_diffraction(tmp_path / "whole.h5", amplitudes=amplitudes, **kwargs)
    assert (tmp_path / "rows.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()
    with h5py.File(tmp_path / "rows.h5") as h5:
        np.testing.assert_array_equal(h5["patterns"][()], np.square(amplitudes))

    def failing_chunks(array, max_bytes=None):
        yield 0, np.asarray(array[0:2])
        raise OSError("disk full")

    monkeypatch.setattr("ptycho.io.product.array_chunks", failing_chunks)
    with pytest.raises(OSError, match="disk full"):
        write_diffraction(tmp_path / "failed.h5", amplitudes=rows, **kwargs)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rows.bin", "rows.h5", "whole.h5"]
