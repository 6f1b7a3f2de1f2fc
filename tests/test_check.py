"""`ptycho check`: passes on a good run, and names each kind of bad artifact."""

import json
import shutil

import numpy as np
import pytest

from ptycho import workflows
from ptycho.cli import main
from ptycho.config import CheckConfig

LENIENT = CheckConfig()


@pytest.fixture()
def artifacts(evaluated_run, tmp_path):
    run, _ = evaluated_run
    for name in ("wts.h5.zip", "test.npz", "reconstruction.npz", "metrics.json"):
        shutil.copy(run.folder / name, tmp_path / name)
    return tmp_path


def run_check(folder, config=LENIENT):
    return workflows.check(folder / "wts.h5.zip", folder / "test.npz", folder / "reconstruction.npz", folder / "metrics.json", config)


def test_good_artifacts_pass(artifacts):
    assert run_check(artifacts) == []


def corrupt_bundle(folder):
    data = (folder / "wts.h5.zip").read_bytes()
    (folder / "wts.h5.zip").write_bytes(data[: len(data) // 2])


def drop_reconstruction_key(folder):
    with np.load(folder / "reconstruction.npz") as archive:
        kept = {key: archive[key] for key in archive.files if key != "coverage"}
    np.savez(folder / "reconstruction.npz", **kept)


def drop_metric(folder):
    report = json.loads((folder / "metrics.json").read_text())
    del report["pinn"]["phase.ssim"]
    (folder / "metrics.json").write_text(json.dumps(report))


def nan_metric(folder):
    text = (folder / "metrics.json").read_text()
    report = json.loads(text)
    report["pinn"]["amplitude.ssim"] = float("nan")
    (folder / "metrics.json").write_text(json.dumps(report))


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (lambda folder: (folder / "wts.h5.zip").unlink(), "bundle:"),
        (corrupt_bundle, "bundle:"),
        (lambda folder: (folder / "reconstruction.npz").unlink(), "reconstruction:"),
        (drop_reconstruction_key, "'coverage'"),
        (lambda folder: (folder / "metrics.json").unlink(), "metrics:"),
        (drop_metric, "'phase.ssim'"),
        (nan_metric, "'amplitude.ssim'"),
    ],
)
def test_each_bad_artifact_is_reported(artifacts, spoil, needle):
    spoil(artifacts)
    failures = run_check(artifacts)
    assert failures and any(needle in failure for failure in failures), failures


def test_thresholds_are_applied_and_every_failure_is_listed(artifacts):
    strict = CheckConfig(min_amplitude_ssim=0.999, min_phase_ssim=0.999, min_amplitude_pearson=0.999, max_r_factor=1e-6)
    failures = run_check(artifacts, strict)
    assert len([failure for failure in failures if failure.startswith("threshold:")]) == 4


def test_cli_exits_non_zero_and_prints_failures(artifacts, tmp_path, capsys):
    (artifacts / "metrics.json").unlink()
    params = tmp_path / "params.yaml"
    params.write_text("check: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--params", str(params), "--bundle", str(artifacts / "wts.h5.zip"), "--test-data", str(artifacts / "test.npz"),
              "--reconstruction", str(artifacts / "reconstruction.npz"), "--metrics", str(artifacts / "metrics.json")])
    assert exit_info.value.code == 1
    assert "FAILED metrics:" in capsys.readouterr().err
