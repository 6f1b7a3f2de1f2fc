"""infer.precision: auto and infer.device: bf16 only where the hardware has it, a clear error for an absent GPU."""

import json

import numpy as np
import pytest
import torch

from ptycho import workflows
from ptycho.benchmarks import scale
from ptycho.bundle import save_bundle
from ptycho.config import InferConfig, InferPrecision
from ptycho.data import PtychoDataset
from ptycho.errors import ConfigError
from ptycho.inference import resolve_device, resolve_precision
from ptycho.model import Architecture, build_models

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return path


@pytest.mark.parametrize("flags, expected", [("avx512f avx512_bf16", "bf16"), ("amx_tile amx_bf16", "bf16"), ("avx512f", "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(tmp_path, flags, expected):
    precision, why = resolve_precision(InferPrecision.AUTO, torch.device("cpu"), cpuinfo(tmp_path, flags))
    assert precision.value == expected
    assert why.startswith("auto: ") and ("bf16" in why)
    assert resolve_precision(InferPrecision.AUTO, torch.device("cpu"), tmp_path / "absent")[0] is InferPrecision.FP32


def test_an_explicit_precision_is_kept(tmp_path):
    for precision in (InferPrecision.FP32, InferPrecision.BF16):
        assert resolve_precision(precision, torch.device("cpu"), cpuinfo(tmp_path, ""))[0] is precision


def test_a_device_name_that_torch_does_not_know_is_refused():
    with pytest.raises(ConfigError, match="infer.device: must be cpu, cuda or cuda:<index>, got 'gpu'"):
        InferConfig(device="gpu")


@NO_CUDA
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="infer.device: cuda asked for, but torch sees no CUDA device"):
        resolve_device("cuda")
    assert scale.main(["--device", "cuda", "--sizes", "10", "--output", str(tmp_path / "s.json")]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_infer_records_the_precision_it_used_and_why(tmp_path):
    size, count = 16, 12
    rng = np.random.default_rng(0)
    ticks = 10 + 4 * np.arange(4.0)
    x, y = (grid.ravel()[:count] for grid in np.meshgrid(ticks, ticks))
    data = PtychoDataset(rng.random((count, size, size), dtype=np.float32), x, y, np.ones((size, size), np.complex64), None, np.arange(count), {})
    architecture = Architecture(size, 1, 0.125)
    autoencoder, network = build_models(architecture, np.ones((size, size), np.complex64), 1.0)
    save_bundle(tmp_path / "b.zip", autoencoder, network, architecture, extras={"config.json": b'{"model": {"n_neighbours": 1}}'})
    expected, why = resolve_precision(InferPrecision.AUTO, torch.device("cpu"))
    workflows.infer(data, tmp_path / "b.zip", InferConfig(), tmp_path / "r.npz", tmp_path / "r.png", tmp_path / "s.json")
    stats = json.loads((tmp_path / "s.json").read_text())
    assert (stats["precision"], stats["precision_reason"], stats["device"]) == (expected.value, why, "cpu")


def test_the_scale_benchmark_runs_from_the_command_line(tmp_path):
    from ptycho import cli

    output = tmp_path / "scale.json"
    assert cli.main(["benchmark", "scale", "--sizes", "30", "--repeats", "1", "--no-rpie", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    entry = report["sizes"]["30"]["now"]
    assert entry["patterns_per_s"] > 0 and entry["by_rows"]["peak_rss_bytes"] > 0
    assert report["precision_resolved"] in ("fp32", "bf16")


def test_the_scale_benchmark_measures_the_childs_own_memory_not_its_parents(tmp_path):
    """Linux carries a parent's resident size at fork into the child's ru_maxrss; the child reports its own VmHWM."""
    ballast = np.ones(512 << 17)  # 512 MiB, touched, held by this (the parent) process
    child = scale.run_child(["infer", "--help"], tmp_path)
    assert 0 < child["peak_rss_bytes"] < ballast.nbytes
    assert "usage" in child["stdout"]
