"""The scenario benchmark's machinery on a tiny grid (the real grid is not a test), and the timing benchmark's CLI."""

import json

import pytest
import torch

from ptycho import cli
from ptycho.benchmarks import scenarios
from ptycho.benchmarks.sweeps import SweepPoint, first_reaching
from ptycho.config import BaselineConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, RefineConfig, Source, TrainConfig
from ptycho.errors import ConfigError

# Halved by --size small: N = 32, 8 px probe, 64 / 56 px objects; step 1.0 x 8 px gives 16 training and 9 test patterns.
TINY_PARAMS = """
prepare: {train_object_px: 128, test_object_px: 112}
model: {n_filters_scale: 0.25}
train: {batch_size: 8}
baseline: {iterations: 6}
"""


def test_a_tiny_grid_runs_end_to_end_and_writes_well_formed_output(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(TINY_PARAMS)
    output = tmp_path / "scenarios.json"
    threads_before = torch.get_num_threads()
    status = cli.main([
        "benchmark", "scenarios", "--params", str(params), "--overlaps", "1", "--doses", "1e4", "--epochs", "1",
        "--refine-sweeps", "2", "--max-sweeps", "8", "--workdir", str(tmp_path / "work"), "--output", str(output),
    ])
    assert status == 0
    assert torch.get_num_threads() == threads_before  # --threads 1 is restored afterwards
    report = json.loads(output.read_text())
    assert report["command"].startswith("ptycho benchmark scenarios --params")
    assert report["settings"]["prepare"]["N"] == 32 and report["settings"]["train"]["epochs"] == 1
    assert report["settings"]["train"]["num_threads"] == 1 and report["settings"]["refine"]["iterations"] == 2
    (record,) = report["scenarios"]
    assert record["scenario"] == "step1x_1e04" and record["step_px"] == 8.0 and record["nphotons"] == 1e4
    assert (record["n_train_patterns"], record["n_test_patterns"]) == (16, 9)
    assert record["train"]["epochs_run"] == 1
    for method in ("pinn", "refined", "baseline"):
        for key in ("amplitude.ssim", "phase.ssim", "data.r_factor", "wall_time_s"):
            assert isinstance(record[method][key], float) and -1.0 <= record[method][key] < 1e3, (method, key)
    assert record["refined"]["wall_time_s"] >= record["pinn"]["wall_time_s"]  # the hybrid's time includes the network's
    # rPIE scored per sweep up to --max-sweeps; at the baseline's sweep count it is the run evaluate scored
    curve = record["rpie_curve"]
    assert [row[0] for row in curve] == list(range(1, 9))
    assert curve[5][1] == pytest.approx(record["baseline"]["amplitude.ssim"], abs=1e-4)
    assert curve[5][2] == pytest.approx(record["baseline"]["phase.ssim"], abs=1e-4)
    assert record["rpie_at_refine_sweeps"]["sweeps"] == 2 and record["rpie_at_refine_sweeps"]["amplitude_ssim"] == curve[1][1]
    assert record["rpie_best"]["amplitude_ssim"] + record["rpie_best"]["phase_ssim"] == pytest.approx(max(row[1] + row[2] for row in curve))
    match = record["rpie_to_match_refined"]
    if match is not None:
        row = curve[match["sweeps"] - 1]
        assert row[1] >= record["refined"]["amplitude.ssim"] - 1e-4 and row[2] >= record["refined"]["phase.ssim"] - 1e-4
    printed = capsys.readouterr().out
    assert "| 1 (8 px) | 1e4 | 16 / 9 |" in printed and "| 1 (8 px) | 1e4 | " in printed.split("rPIE-6 |")[1]
    assert (tmp_path / "work" / "step1x_1e04" / "comparison.png").is_file()


def test_small_size_halves_every_length_and_always_simulates():
    prepare = PrepareConfig(source=Source.NPZ, train_file="data/raw/scan.npz")
    small, evaluate = scenarios.sized("small", prepare, EvaluateConfig(margin_px=4))
    assert small.source is Source.SIMULATE and small.train_file == ""
    assert (small.N, small.train_object_px, small.test_object_px) == (32, 128, 80)
    assert (small.probe_diameter_px, small.feature_px, small.jitter_px, evaluate.margin_px) == (8.0, 3.0, 0.25, 2)
    same, evaluate = scenarios.sized("default", PrepareConfig(), EvaluateConfig())
    assert same == PrepareConfig() and evaluate == EvaluateConfig()
    with pytest.raises(ConfigError, match="--size"):
        scenarios.sized("huge", prepare, EvaluateConfig())


def test_a_scenario_sets_the_step_from_the_probe_diameter_and_the_dose():
    grid = scenarios.grid()
    assert [(s.step_fraction, s.nphotons) for s in grid[:4]] == [(0.25, 1e6), (0.25, 1e4), (0.25, 1e3), (0.5, 1e6)]
    config = grid[4].prepare_config(PrepareConfig(probe_diameter_px=16.0))
    assert (config.step_px, config.nphotons) == (8.0, 1e4)
    with pytest.raises(ConfigError):
        scenarios.Scenario(0.0, 1e4)


def test_settings_refuse_fewer_tracked_sweeps_than_the_baseline_runs():
    with pytest.raises(ConfigError, match="max-sweeps"):
        scenarios.Settings(PrepareConfig(), ModelConfig(), TrainConfig(), InferConfig(), RefineConfig(), BaselineConfig(iterations=30),
                           EvaluateConfig(), max_sweeps=29)


def test_first_reaching_needs_both_ssims():
    curve = [SweepPoint(1, 0.5, 0.9, 0.1), SweepPoint(2, 0.8, 0.6, 0.2), SweepPoint(3, 0.8, 0.8, 0.3)]
    assert first_reaching(curve, 0.7, 0.7).sweep == 3
    assert first_reaching(curve, 0.5, 0.9).sweep == 1
    assert first_reaching(curve, 0.9, 0.1) is None


def test_the_table_marks_the_best_method_per_ssim():
    def method(amplitude, phase):
        return {"amplitude.ssim": amplitude, "phase.ssim": phase, "data.r_factor": 0.1, "wall_time_s": 1.0}

    record = {
        "step_fraction": 0.5, "step_px": 4.0, "nphotons": 1e3, "n_train_patterns": 9, "n_test_patterns": 4,
        "pinn": method(0.7, 0.2), "refined": method(0.6, 0.5), "baseline": method(0.5, 0.4), "refine_sweeps": 5, "baseline_sweeps": 30,
        "rpie_best": {"sweeps": 3, "seconds": 0.1, "amplitude_ssim": 0.55, "phase_ssim": 0.45}, "rpie_to_match_refined": None,
        "rpie_at_refine_sweeps": {"sweeps": 5, "seconds": 0.1, "amplitude_ssim": 0.45, "phase_ssim": 0.35},
        "refine_to_match_rpie": {"sweeps": 1, "seconds": 1.2, "amplitude_ssim": 0.6, "phase_ssim": 0.5},
        "rpie_curve": [[100, 0.5, 0.4, 1.0]], "train": {"wall_time_s": 12.0, "epochs_run": 3},
    }
    quality, speed = scenarios.markdown_tables([record]).split("\n\n")
    assert "| 0.5 (4 px) | 1e3 | 9 / 4 | **0.700** / 0.200 | 0.600 / **0.500** | 0.450 / 0.350 | 0.500 / 0.400 | 0.550 / 0.450 (3) |" in quality
    assert "| not in 100 | 1 (1.20 s) |" in speed


@pytest.mark.parametrize("option, value", [("--overlaps", "0.5,-1"), ("--doses", "many"), ("--epochs", "0")])
def test_bad_grid_options_are_refused(option, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["benchmark", "scenarios", option, value])
    assert stopped.value.code == 2 and option in capsys.readouterr().err


def test_timing_benchmark_runs_from_the_cli(trained_run, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("infer: {batch_size: 16}\nevaluate: {margin_px: 2}\n")
    output = tmp_path / "benchmark.json"
    status = cli.main([
        "benchmark", "timing", "--params", str(params), "--test-data", str(trained_run.test_path),
        "--bundle", str(trained_run.bundle_path), "--repeats", "1", "--max-iterations", "20", "--output", str(output),
    ])
    assert status == 0
    report = json.loads(output.read_text())
    assert set(report) == {"n_patterns", "network", "epie", "rpie"}
    for algorithm in ("epie", "rpie"):
        sweeps = report[algorithm]["sweeps_to_match"]
        assert sweeps is None or 1 <= sweeps <= 20
