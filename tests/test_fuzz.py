"""Fuzzing the loaders of untrusted files: load_bundle, load_dataset and the CXI and ptychodus readers.

Every mutant is loaded in a worker process (tests/fuzzing.py), so a crash or a hang is counted
instead of ending the test run. A loader may load a mutant (many byte edits are harmless) or
refuse it with its own error; anything else fails: another exception ("raw"), a dead worker
("crash"), no answer in 20 s ("hang"), a loaded value read from a file planted next to the
bundle ("outside"), a NaN weight or degenerate data accepted ("bad-value"), or peak memory
grown by more than 1 GiB ("memory").

The default run takes one seeded mutant of each kind (seconds); the full run (marked slow:
``python -m pytest -m slow tests/test_fuzz.py -s``) takes more than 1,000 bundle and 300 NPZ
mutants, and more than 300 CXI and 300 ptychodus mutants (read by ``ptycho.io.load_scan``, as
``ptycho prepare`` does), and prints the counts by kind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fuzzing
from ptycho.bundle import save_bundle
from ptycho.model import Architecture, build_models

GOOD = set(fuzzing.OK_OUTCOMES)

# Kinds no loader may ever load: each breaks a rule of DESIGN.md §4/§5 (or the zip format).
MUST_REFUSE = {
    "h5-external-storage", "h5-virtual-dataset", "h5-soft-link", "h5-external-link", "h5-group-loop",
    "h5-huge-declared-shape", "h5-compressed-chunked", "h5-nonfinite-weight", "h5-wrong-dtype", "h5-wrong-shape",
    "h5-architecture", "h5-intensity-scale", "h5-probe", "h5-structure", "h5-truncated", "zip-bomb", "zip-method",
    "zip-member-renamed", "zip-member-duplicated", "zip-truncated", "manifest-text",
    "npz-degenerate", "npz-nonfinite-or-negative", "npy-header-shape", "npz-zip-method", "npz-truncated",
    "npz-member-duplicated", "npz-declared-size", "npz-stored-data-flip", "npz-stored-truncated",
    "h5-soft-link-loop", "h5-soft-link-dangling",
}


def base_bundle(folder) -> bytes:
    torch.manual_seed(0)
    architecture = Architecture(32, 1, 0.125)
    probe = (np.random.default_rng(0).random((32, 32)) + 0.5).astype(np.complex64)
    autoencoder, diffraction_to_obj = build_models(architecture, probe, 3.25)
    path = folder / "base.zip"
    save_bundle(path, autoencoder, diffraction_to_obj, architecture,
                extras={"history.csv": b"epoch,loss\n0,1.5\n", "config.json": b"{}\n"})
    return path.read_bytes()


def one_of_each_kind(mutants: list, seed: int) -> list:
    rng = np.random.default_rng(seed)
    kinds: dict[str, list] = {}
    for mutant in mutants:
        kinds.setdefault(mutant[0], []).append(mutant)
    return [group[int(rng.integers(len(group)))] for _, group in sorted(kinds.items())]


def check(results: list[dict]) -> None:
    table = fuzzing.summary(results)
    print("\n" + fuzzing.format_summary(table, results))
    bad = [r for r in results if r["outcome"] not in GOOD]
    assert not bad, f"{len(bad)} mutants were not loaded or refused cleanly, e.g. {bad[:5]}"
    loaded = [r for r in results if r["kind"] in MUST_REFUSE and r["outcome"] != "refused"]
    assert not loaded, f"mutants that must be refused were loaded: {loaded[:5]}"


def run_bundles(tmp_path, n_random: int, sample_seed: int | None) -> list[dict]:
    fuzzing.plant_markers(tmp_path)
    mutants = fuzzing.bundle_mutants(base_bundle(tmp_path), tmp_path, np.random.default_rng(1), n_random)
    if sample_seed is not None:
        mutants = one_of_each_kind(mutants, sample_seed)
    return fuzzing.run_mutants("bundle", mutants, tmp_path)


def run_npz(tmp_path, n_random: int, sample_seed: int | None) -> list[dict]:
    mutants = fuzzing.npz_mutants(np.random.default_rng(2), n_random)
    if sample_seed is not None:
        mutants = one_of_each_kind(mutants, sample_seed)
    return fuzzing.run_mutants("npz", mutants, tmp_path)


def test_the_harness_counts_a_crash_a_hang_and_a_raw_exception(tmp_path, monkeypatch):
    # Mutants that the worker itself turns into a segfault, an endless loop and a TypeError.
    monkeypatch.setenv("PTYCHO_FUZZ_SELF_TEST", "1")
    results = fuzzing.run_mutants("npz", [("x", b"crash"), ("x", b"hang"), ("x", b"raw"), ("x", b"PK")], tmp_path, timeout_s=3)
    assert [r["outcome"] for r in results] == ["crash", "hang", "raw", "refused"]


def test_a_sample_of_bundle_mutants(tmp_path):
    results = run_bundles(tmp_path, n_random=3, sample_seed=0)
    assert len(results) >= 30
    check(results)


def test_a_sample_of_npz_mutants(tmp_path):
    results = run_npz(tmp_path, n_random=3, sample_seed=0)
    assert len(results) >= 15
    check(results)


@pytest.mark.slow
def test_all_bundle_mutants(tmp_path):
    results = run_bundles(tmp_path, n_random=160, sample_seed=None)
    assert len(results) >= 1000
    check(results)


@pytest.mark.slow
def test_all_npz_mutants(tmp_path):
    results = run_npz(tmp_path, n_random=100, sample_seed=None)
    assert len(results) >= 300
    check(results)


def run_scans(tmp_path, loader: str, n_random: int, sample_seed: int | None) -> list[dict]:
    fuzzing.plant_markers(tmp_path)
    make = fuzzing.cxi_mutants if loader == "cxi" else fuzzing.ptychodus_mutants
    mutants = make(tmp_path, np.random.default_rng(3), n_random)
    if sample_seed is not None:
        mutants = one_of_each_kind(mutants, sample_seed)
    return fuzzing.run_mutants(loader, mutants, tmp_path)


@pytest.mark.parametrize("loader", ["cxi", "ptychodus"])
def test_a_sample_of_scan_file_mutants(tmp_path, loader):
    results = run_scans(tmp_path, loader, n_random=1, sample_seed=0)
    assert len(results) >= 14
    assert results[[r["kind"] for r in results].index(f"{loader}-valid")]["outcome"] == "loaded"
    check(results)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["cxi", "ptychodus"])
def test_all_scan_file_mutants(tmp_path, loader):
    results = run_scans(tmp_path, loader, n_random=70 if loader == "cxi" else 50, sample_seed=None)
    assert len(results) >= 300
    check(results)
