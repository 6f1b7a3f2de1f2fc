"""The pipeline through DVC in a temporary git repository, on CI-sized parameters."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ptycho.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "prepare": {"N": 32, "train_object_px": 96, "test_object_px": 72, "step_px": 5.0, "probe_diameter_px": 8.0, "feature_px": 4.0, "nphotons": 1e5,
                "detector_crop_px": 0},  # the check's figures were set on 32 px patterns
    # and a 16 px window (share 0.99): a 2-epoch network with the default 0.999 window (22 px here) can
    # come out anti-correlated, which the check's Pearson >= 0 refuses; the mechanics are what is tested
    "model": {"n_filters_scale": 0.125, "window_share": 0.99, "unrolled_sweeps": 3},
    "train": {"epochs": 2, "unrolled_steps": 10},
    "infer": {},
    "evaluate": {"margin_px": 2},
    "check": {},
    "baseline": {"iterations": 5, "batch_size": 16},
}

# A training step with the legacy bug this project exists to avoid: it fits, then never saves.
TRAIN_WITHOUT_SAVE = '''
import sys
import numpy as np
from ptycho import config, training
from ptycho.data import load_dataset
from ptycho.grouping import grouped_tensors, make_groups
from ptycho.model import Architecture, build_models, intensity_scale_of
data = load_dataset("data/prepared/train.npz")
model_config, train_config = config.load_section("params.yaml", "model"), config.load_section("params.yaml", "train")
groups = make_groups(data.xcoords, data.ycoords, 1, 1, np.random.default_rng(0))
amplitudes, offsets = grouped_tensors(data.amplitudes, groups)
autoencoder, _ = build_models(Architecture(data.pattern_size, 1, model_config.n_filters_scale), data.probe, intensity_scale_of(data.amplitudes))
training.fit(autoencoder, amplitudes, offsets, train_config, "models/checkpoints")
print("trained; bundle not written")
'''


def make_repository(folder: Path) -> None:
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for tree in ("stages", "ptycho"):
        shutil.copytree(ROOT / tree, folder / tree, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "data" / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "raw" / "README.md", folder / "data" / "raw" / "README.md")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, overrides in SMALL.items():
        params[section].update(overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=folder, check=True, env=environment())
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=folder, check=True, env=environment())


def environment() -> dict:
    # the stages run `python`: make it this interpreter, which has ptycho installed
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.org"}


def dvc(folder: Path, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *arguments], cwd=folder, capture_output=True, text=True, env={**environment(), **(env or {})})


# Put on PYTHONPATH, this records at exit which files of the ptycho package a stage script
# (stages/<stage>.py) imported, relative to the package's parent folder, in <log>/<stage>.txt.
IMPORT_LOGGER = '''
import atexit, os, sys

def _record():
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    package = sys.modules.get("ptycho")
    if os.path.basename(os.path.dirname(script)) != "stages" or package is None:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
    files = sorted({os.path.relpath(os.path.abspath(module.__file__), root) for name, module in list(sys.modules.items())
                    if (name == "ptycho" or name.startswith("ptycho.")) and getattr(module, "__file__", None)})
    with open(os.path.join(os.environ["PTYCHO_IMPORT_LOG"], os.path.basename(script)[:-3] + ".txt"), "w") as log:
        log.write("\\n".join(files))

atexit.register(_record)
'''


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """A repository after its first `dvc repro`, with the ptycho files each stage imported."""
    folder = tmp_path_factory.mktemp("repro")
    hook, log = tmp_path_factory.mktemp("hook"), tmp_path_factory.mktemp("imports")
    (hook / "sitecustomize.py").write_text(IMPORT_LOGGER)
    make_repository(folder)
    first = dvc(folder, "repro", env={"PYTHONPATH": str(hook), "PTYCHO_IMPORT_LOG": str(log)})
    imports = {path.stem: set(path.read_text().split()) for path in log.glob("*.txt")}
    return folder, first, imports


def test_dvc_repro_runs_every_stage_then_nothing(repro):
    folder, first, _ = repro
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("prepare", "train", "infer", "baseline", "refine", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    load_bundle(folder / "models" / "wts.h5.zip")
    assert (folder / "results" / "reconstruction.npz").is_file()
    # dvc metrics show: one row per method under shared columns, one for training
    shown = dvc(folder, "metrics", "show").stdout.splitlines()
    header = shown[0].split()
    rows = sorted(line.split()[0] for line in shown[1:] if line.strip())
    assert rows == ["models/train_metrics.json", "results/scores/baseline.json", "results/scores/pinn.json", "results/scores/refined.json"]
    assert "amplitude.ssim" in header and "frc.reached_0.5" in header and len(header) <= 36, header  # 36: training adds the learned sweeps' five
    second = dvc(folder, "repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout
    checked = subprocess.run([sys.executable, "-m", "ptycho.cli", "check"], cwd=folder, capture_output=True, text=True, env=environment())
    assert checked.returncode == 0, checked.stderr


def test_every_ptycho_file_a_stage_imports_is_one_of_its_dvc_deps(repro):
    """A stage whose code changed must re-run: dvc.yaml's deps cover what the stage really imports."""
    folder, first, imports = repro
    assert first.returncode == 0, first.stdout + first.stderr
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(imports) == sorted(stages)  # every stage ran and was recorded
    for stage, imported in imports.items():
        assert "ptycho/workflows.py" in imported and "ptycho/training.py" not in imports["prepare"]  # the record works
        if "ptycho/bundle/sandbox.py" in imported:
            imported = imported | {"ptycho/bundle/_hdf5_child.py"}  # the sandbox runs it as a script in a child process
        deps = [str(dep).rstrip("/") for dep in stages[stage]["deps"]]
        missing = sorted(path for path in imported if not any(path == dep or path.startswith(dep + "/") for dep in deps))
        assert not missing, f"dvc.yaml: stage {stage} imports {missing} without listing them (or their folder) in deps"


def test_a_train_step_that_skips_the_save_fails_the_pipeline_at_train(tmp_path):
    make_repository(tmp_path)
    (tmp_path / "stages" / "train.py").write_text(TRAIN_WITHOUT_SAVE)
    result = dvc(tmp_path, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'train'" in output and "wts.h5.zip" in output
    assert "does not exist" in output or "missing" in output
    for later in ("infer", "evaluate"):
        assert f"Running stage '{later}'" not in output
    assert not (tmp_path / "results" / "reconstruction.npz").exists()
    assert not (tmp_path / "results" / "metrics.json").exists()


def set_params(folder: Path, **prepare) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["prepare"].update(prepare)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def small_scan(path: Path, seed: int) -> None:
    from ptycho.config import PrepareConfig
    from ptycho.data import save_dataset
    from ptycho.simulate import simulate_train_test

    config = PrepareConfig(N=32, train_object_px=96, test_object_px=72, step_px=5.0, probe_diameter_px=8.0, nphotons=1e5, seed=seed)
    save_dataset(simulate_train_test(config)[0], path)


def test_a_rewritten_input_file_reruns_prepare(tmp_path):
    """Input files are DVC dependencies (the data/raw folder): a changed file re-runs prepare."""
    make_repository(tmp_path)
    small_scan(tmp_path / "data" / "raw" / "scan.npz", seed=1)
    set_params(tmp_path, source="npz", train_file="data/raw/scan.npz")
    first = dvc(tmp_path, "repro", "prepare")
    assert first.returncode == 0 and "Running stage 'prepare'" in first.stdout, first.stdout + first.stderr
    assert "Running stage" not in dvc(tmp_path, "repro", "prepare").stdout
    small_scan(tmp_path / "data" / "raw" / "scan.npz", seed=2)  # the file is rewritten, the parameters are not
    again = dvc(tmp_path, "repro", "prepare")
    assert again.returncode == 0 and "Running stage 'prepare'" in again.stdout, again.stdout + again.stderr
    # dvc exp run -S prepare.train_file=... picks another file of the folder
    small_scan(tmp_path / "data" / "raw" / "other.npz", seed=3)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "inputs"]):
        subprocess.run(command, cwd=tmp_path, check=True, env=environment(), capture_output=True)
    experiment = dvc(tmp_path, "exp", "run", "prepare", "-S", "prepare.train_file=data/raw/other.npz")
    assert experiment.returncode == 0 and "Running stage 'prepare'" in experiment.stdout, experiment.stdout + experiment.stderr


def test_an_input_outside_data_raw_is_refused(tmp_path):
    make_repository(tmp_path)
    small_scan(tmp_path / "scan.npz", seed=1)
    set_params(tmp_path, source="npz", train_file="scan.npz")
    result = dvc(tmp_path, "repro", "prepare")
    assert result.returncode != 0
    assert "prepare.train_file: 'scan.npz' is outside data/raw/" in result.stdout + result.stderr


def test_each_plot_is_declared_once_and_plot_output_is_git_ignored():
    # A file in a stage's plots: and again in the top-level plots: is drawn twice by `dvc plots show`.
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    top_level = {next(iter(entry)) if isinstance(entry, dict) else entry for entry in pipeline["plots"]}
    in_stages = {next(iter(entry)) if isinstance(entry, dict) else entry
                 for stage in pipeline["stages"].values() for entry in stage.get("plots", [])}
    assert not top_level & in_stages
    outs = {next(iter(entry)) if isinstance(entry, dict) else entry for stage in pipeline["stages"].values() for entry in stage.get("outs", [])}
    assert top_level <= outs | in_stages  # every plotted file is some stage's output
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    leftovers = ["dvc_plots/index.html", "models/.wts.h5.zip.0123abcd.tmp", "results/.metrics.json.0123abcd.tmp"]
    ignored = subprocess.run(["git", "check-ignore", *leftovers], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == leftovers
