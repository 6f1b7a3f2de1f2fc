"""A parameter sweep through DVC's experiment queue: queued with `dvc exp run --queue`, run with
`dvc queue start -j 2`, compared with `dvc exp show` (the README's recipe), on CI-sized parameters."""

import json
import subprocess
import sys
import tempfile
import time

import pytest

from test_pipeline import dvc, environment, make_repository

RATES = ("1e-3", "2e-3")


def queue_status(folder) -> str:
    return dvc(folder, "queue", "status").stdout


def wait_until(folder, done, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = queue_status(folder)
    while not done(status) and time.monotonic() < deadline:
        time.sleep(5)
        status = queue_status(folder)
    return status


def start_workers(folder, jobs: int) -> subprocess.CompletedProcess:
    """`dvc queue start -j jobs`, its output read from a file: the workers it leaves running inherit its
    stdout and stderr, so with pipes (``dvc``'s capture_output) waiting for their end could wait for the
    workers, and did (600 s, twice on the CI machine)."""
    with tempfile.TemporaryFile(mode="w+") as output:
        started = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=folder, stdout=output,
                                 stderr=subprocess.STDOUT, text=True, env=environment(), timeout=120)
        output.seek(0)
        started.stdout = output.read()
    return started


def experiments(shown: list[dict]) -> dict[str, dict]:
    """{name: data} of the experiments in `dvc exp show --json` output."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                found[revision["name"]] = revision["data"]
    return found


@pytest.mark.slow
def test_a_two_point_sweep_runs_from_the_queue_in_parallel(tmp_path):
    make_repository(tmp_path)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(command, cwd=tmp_path, check=True, env=environment(), capture_output=True)
    for rate in RATES:
        queued = dvc(tmp_path, "exp", "run", "--queue", "-S", f"train.learning_rate={rate}", "-n", f"lr-{rate}")
        assert queued.returncode == 0 and f"Queued experiment 'lr-{rate}'" in queued.stdout, queued.stdout + queued.stderr
    assert queue_status(tmp_path).count("Queued") == 2
    try:
        started = start_workers(tmp_path, 2)
        assert started.returncode == 0 and "Started '2' new experiments task queue workers" in started.stdout, started.stdout
        both_running = wait_until(tmp_path, lambda s: s.count("Running") == 2 or "Success" in s or "Failed" in s, 120)
        status = wait_until(tmp_path, lambda s: "Running" not in s and "Queued" not in s, 540)
        logs = "".join(dvc(tmp_path, "queue", "logs", f"lr-{rate}").stdout[-3000:] for rate in RATES)
        assert status.count("Success") == 2, status + logs
    finally:
        dvc(tmp_path, "queue", "stop")
        wait_until(tmp_path, lambda s: "0 active, 0 idle" in s, 60)  # workers gone before the folder is
    assert both_running.count("Running") == 2 or "Success" in both_running  # -j 2: side by side

    shown = dvc(tmp_path, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    found = experiments(json.loads(shown.stdout))
    assert set(found) == {f"lr-{rate}" for rate in RATES}
    for rate in RATES:
        data = found[f"lr-{rate}"]
        assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == float(rate)
        pinn = data["metrics"]["results/scores/pinn.json"]["data"]  # one metrics file per method
        assert 0.0 < pinn["data.r_factor"] < 1.0 and -1.0 <= pinn["amplitude.ssim"] <= 1.0
        assert data["outs"]["models/wts.h5.zip"]["hash"]  # the bundle is in the experiment's outputs
    # Queued experiments run in their own folders: the workspace is as committed.
    assert subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True).stdout == ""
    assert not (tmp_path / "models" / "wts.h5.zip").exists()
