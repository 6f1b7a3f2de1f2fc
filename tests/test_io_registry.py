"""The reader registry: formats detected from content (and the detection recorded), clear refusals."""

import dataclasses

import h5py
import numpy as np
import pytest

from ptycho import cli
from ptycho.config import PrepareConfig, Source
from ptycho.errors import DataError
from ptycho.io import detect, read_scan


def test_each_family_is_detected_from_its_content(tmp_path):
    np.savez(tmp_path / "a.bin", diffraction=np.ones((2, 4, 4)), xcoords=np.zeros(2), ycoords=np.zeros(2))
    np.savez(tmp_path / "t.npz", data=np.ones((1, 2, 4, 4)), scan=np.zeros((1, 2, 2)), probe=np.ones((4, 4)))
    with h5py.File(tmp_path / "c.h5", "w") as h5:
        h5.create_group("entry_1")
    with h5py.File(tmp_path / "product.h5", "w") as h5:
        h5["probe_position_x_m"] = np.zeros(2)
    assert detect(tmp_path / "a.bin.npz")[0] is Source.NPZ  # the name does not matter, the keys do
    assert detect(tmp_path / "t.npz")[0] is Source.TIKE
    assert detect(tmp_path / "c.h5")[0] is Source.CXI
    assert detect(tmp_path / "product.h5")[0] is Source.PTYCHODUS
    assert detect(tmp_path)[0] is Source.PTYCHODUS  # a folder with a product file


def test_the_detection_is_recorded(tmp_path):
    np.savez(tmp_path / "t.npz", data=np.ones((1, 2, 4, 4)), scan=np.zeros((1, 2, 2)), probe=np.ones((4, 4)))
    raw = read_scan(tmp_path / "t.npz", PrepareConfig(source=Source.AUTO, train_file="t.npz"))
    assert raw.metadata["source_detected"] == "tike (an NPZ with 'data' and 'scan' (tike))"


def test_unknown_layouts_ask_for_prepare_source(tmp_path):
    np.savez(tmp_path / "u.npz", pictures=np.ones(3))
    (tmp_path / "text.txt").write_text("hello")
    for path in (tmp_path / "u.npz", tmp_path / "text.txt"):
        with pytest.raises(DataError, match="set prepare.source"):
            detect(path)


def test_the_cli_prints_input_warnings_on_one_line(tmp_path, capsys):
    size = 16
    x = np.array([20.0, 28.0, 36.0])
    rows, cols = np.mgrid[0:size, 0:size] - size / 2
    probe = np.exp(-(rows**2 + cols**2) / 8.0).astype(np.complex64)
    far = np.abs(np.fft.fftshift(np.fft.fft2(probe, norm="ortho"))) * 100  # probe 1e4 times too weak
    np.savez(tmp_path / "s.npz", diffraction=np.repeat(far[None], 3, 0).astype(np.float32),
             xcoords=x, ycoords=x, probeGuess=probe)
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  source: npz\n  train_file: {tmp_path / 's.npz'}\n  N: {size}\n  test_file: {tmp_path / 's.npz'}\n")
    status = cli.main(["prepare", "--params", str(params), "--train", str(tmp_path / "o" / "train.npz"),
                       "--test", str(tmp_path / "o" / "test.npz"), "--preview", str(tmp_path / "o" / "p.png")])
    captured = capsys.readouterr()
    assert status == 0
    assert "ptycho prepare: warning: " in captured.err and "prepare.probe_scale: counts" in captured.err
    assert "read as npz (prepare.source)" in captured.out
