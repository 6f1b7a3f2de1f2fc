"""The prepare workflow: simulation and NPZ ingestion write train/test files, bad input writes nothing."""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from ptycho import workflows
from ptycho.config import PrepareConfig, Source, load_section, section_from_mapping
from ptycho.data import load_dataset, save_dataset
from ptycho.errors import DataError
from ptycho.simulate import simulate_train_test

SMALL = PrepareConfig(N=32, train_object_px=96, test_object_px=64, step_px=6.0, probe_diameter_px=12.0, nphotons=1e4)


def outputs(folder):
    return folder / "train.npz", folder / "test.npz", folder / "preview.png"


def test_simulated_prepare_writes_train_test_and_preview(tmp_path):
    train_path, test_path, preview = outputs(tmp_path / "prepared")
    workflows.prepare(SMALL, train_path, test_path, preview)
    train, test = load_dataset(train_path), load_dataset(test_path)
    assert train.pattern_size == test.pattern_size == 32
    assert train.object.shape == (96, 96) and test.object.shape == (64, 64)
    assert train.metadata["role"] == "train" and test.metadata["role"] == "test"
    assert preview.read_bytes().startswith(b"\x89PNG")


def test_single_npz_is_split_spatially_with_a_guard_band(tmp_path):
    scan, _ = simulate_train_test(SMALL)
    source = tmp_path / "scan.npz"
    save_dataset(scan, source)
    config = dataclasses.replace(SMALL, source=Source.NPZ, train_file=str(source), test_fraction=0.3)
    train_path, test_path, preview = outputs(tmp_path)
    train, test = workflows.prepare(config, train_path, test_path, preview)
    assert train.n_patterns + test.n_patterns < scan.n_patterns  # the guard band drops some
    dropped = scan.n_patterns - train.n_patterns - test.n_patterns
    assert train.metadata["guard_band_dropped"] == test.metadata["guard_band_dropped"] == dropped
    assert test.n_patterns == pytest.approx(0.3 * scan.n_patterns, rel=0.25)
    assert train.xcoords.max() + 16 <= test.xcoords.min()  # at least N/2 apart
    np.testing.assert_array_equal(load_dataset(test_path).amplitudes, test.amplitudes)


def test_separate_test_file_is_used_as_given(tmp_path):
    train, test = simulate_train_test(SMALL)
    save_dataset(train, tmp_path / "a.npz")
    save_dataset(test, tmp_path / "b.npz")
    config = dataclasses.replace(SMALL, source=Source.NPZ, train_file=str(tmp_path / "a.npz"), test_file=str(tmp_path / "b.npz"))
    out = tmp_path / "out"
    workflows.prepare(config, *outputs(out))
    np.testing.assert_array_equal(load_dataset(out / "test.npz").amplitudes, test.amplitudes)


def test_bad_input_writes_nothing(tmp_path):
    train, test = simulate_train_test(SMALL)
    save_dataset(train, tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, diffraction=test.amplitudes, xcoords=test.xcoords[:-1], ycoords=test.ycoords, probeGuess=test.probe)
    config = dataclasses.replace(SMALL, source=Source.NPZ, train_file=str(tmp_path / "good.npz"), test_file=str(bad))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="bad.npz.*xcoords"):
        workflows.prepare(config, *outputs(out))
    assert not out.exists() or list(out.iterdir()) == []


def test_prepared_files_are_byte_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    workflows.prepare(SMALL, *outputs(first))
    workflows.prepare(SMALL, *outputs(second))
    for name in ("train.npz", "test.npz", "preview.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_the_default_prepared_files_have_the_md5_that_dvc_lock_records(tmp_path):
    # The simulation's bytes must not depend on the CPU (MKL's code path, the instruction set):
    # another machine's `dvc repro` must find the committed lock up to date. This test catches
    # a CPU (or a code change) that makes other bytes; CI can emulate one with
    # MKL_ENABLE_INSTRUCTIONS=AVX2 or SSE4_2.
    root = Path(__file__).resolve().parents[1]
    stage = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["prepare"]
    config = load_section(root / "params.yaml", "prepare")
    locked = section_from_mapping(PrepareConfig, "prepare", stage["params"]["params.yaml"]["prepare"])
    assert locked == config, "params.yaml's prepare section differs from dvc.lock's: run `dvc repro prepare`"
    recorded = {Path(out["path"]).name: out["md5"] for out in stage["outs"] if out["path"].endswith(".npz")}
    train_path, test_path, preview = outputs(tmp_path)
    workflows.prepare(config, train_path, test_path, preview)
    made = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in (train_path, test_path)}
    assert made == recorded


def test_prepare_command_says_how_many_patterns_the_guard_band_dropped(tmp_path, capsys):
    from ptycho import cli

    scan, _ = simulate_train_test(SMALL)
    save_dataset(scan, tmp_path / "scan.npz")
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  source: npz\n  N: 32\n  train_file: {tmp_path / 'scan.npz'}\n  test_fraction: 0.3\n")
    train_path, test_path, preview = outputs(tmp_path / "out")
    cli.main(["prepare", "--params", str(params), "--train", str(train_path), "--test", str(test_path), "--preview", str(preview)])
    train, test = load_dataset(train_path), load_dataset(test_path)
    dropped = scan.n_patterns - train.n_patterns - test.n_patterns
    assert dropped > 0
    assert f"({test.n_patterns} patterns; {dropped} dropped by the guard band" in capsys.readouterr().out
