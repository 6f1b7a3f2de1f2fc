"""Single-pattern data consistency (``ptycho.iterative.single``): fixed point, descent, mask, support."""

import pytest
import torch

from ptycho import physics
from ptycho.config import InferConfig, ProbeKind
from ptycho.errors import ConfigError
from ptycho.iterative.single import fit_patterns
from ptycho.model import window_mask
from ptycho.simulate import make_probe

SIZE, WINDOW = 32, 24


def smooth_patches(count: int, seed: int) -> torch.Tensor:
    """(count, N, N) complex patches: smooth random amplitude and phase, zero outside the window."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 2, SIZE // 4, SIZE // 4, generator=generator)
    smooth = torch.nn.functional.interpolate(noise, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    patches = torch.polar(0.7 + 0.2 * torch.tanh(smooth[:, 0]), 0.8 * torch.tanh(smooth[:, 1]))
    return patches * window_mask(SIZE, WINDOW)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.from_numpy(make_probe(ProbeKind.APERTURE, SIZE, 10.0)).to(torch.complex64) * 30.0


def misfit(patches: torch.Tensor, amplitudes: torch.Tensor, probe: torch.Tensor) -> float:
    modulus = physics.propagate(probe * patches).abs()
    return float(torch.sum((modulus - amplitudes) ** 2) / torch.sum(amplitudes**2)) ** 0.5


def test_the_true_patch_is_a_fixed_point(probe):
    truth = smooth_patches(4, seed=1)
    amplitudes = physics.propagate(probe * truth).abs()
    fitted = fit_patterns(truth, amplitudes, probe, 20, rpie_alpha=0.01, floor=1e-30, support=window_mask(SIZE, WINDOW))
    assert torch.allclose(fitted, truth, atol=1e-4)


def test_iterations_bring_a_perturbed_patch_closer_to_its_pattern_and_to_the_truth(probe):
    truth = smooth_patches(8, seed=2)
    amplitudes = physics.propagate(probe * truth).abs()
    start = truth * torch.polar(torch.full_like(truth.real, 0.9), 0.4 * torch.tanh(torch.real(smooth_patches(8, seed=3)) - 0.7))
    start = start * window_mask(SIZE, WINDOW)
    fitted = fit_patterns(start, amplitudes, probe, 50, rpie_alpha=0.01, floor=1e-30, support=window_mask(SIZE, WINDOW))
    assert misfit(fitted, amplitudes, probe) < 0.5 * misfit(start, amplitudes, probe)
    bright = (probe.abs() ** 2 > 0.1 * probe.abs().max() ** 2).expand_as(truth)
    # each patch's free constant phase removed before the comparison
    def error(patches):
        aligned = patches * torch.exp(-1j * torch.angle(torch.sum(patches * truth.conj() * bright, dim=(-2, -1), keepdim=True)))
        return float(torch.linalg.vector_norm((aligned - truth)[bright]))
    assert error(fitted) < error(start)


def test_the_support_is_kept_and_zero_iterations_change_nothing(probe):
    start = smooth_patches(3, seed=4)
    amplitudes = physics.propagate(probe * smooth_patches(3, seed=5)).abs()
    support = window_mask(SIZE, WINDOW)
    fitted = fit_patterns(start, amplitudes, probe, 5, rpie_alpha=0.01, floor=1e-30, support=support)
    assert torch.all(fitted[..., support == 0] == 0)
    assert torch.equal(fit_patterns(start, amplitudes, probe, 0, rpie_alpha=0.01, floor=1e-30, support=support), start)


def test_masked_detector_pixels_do_not_matter(probe):
    truth = smooth_patches(3, seed=6)
    amplitudes = physics.propagate(probe * truth).abs()
    valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
    valid[3:6, 10:14] = False  # hot pixels, unshifted frame
    hot = amplitudes.clone()
    hot[..., ~valid] = 1e4
    start = smooth_patches(3, seed=7)
    kwargs = dict(rpie_alpha=0.01, floor=1e-30, valid=valid)
    assert torch.allclose(fit_patterns(start, hot, probe, 10, **kwargs), fit_patterns(start, amplitudes, probe, 10, **kwargs), atol=1e-6)
    assert not torch.allclose(fit_patterns(start, hot, probe, 10, rpie_alpha=0.01, floor=1e-30),
                              fit_patterns(start, amplitudes, probe, 10, rpie_alpha=0.01, floor=1e-30), atol=1e-3)


def test_a_negative_iteration_count_is_a_named_config_error():
    with pytest.raises(ConfigError, match="infer.consistency_iterations"):
        InferConfig(consistency_iterations=-1)


def test_the_single_pattern_diagnostic_runs_on_a_trained_bundle(evaluated_run, tmp_path):
    from ptycho.benchmarks import single_pattern

    run, _ = evaluated_run
    output = tmp_path / "single.json"
    assert single_pattern.main(["--bundle", str(run.bundle_path), "--data", str(run.test_path), "--iterations", "0,20", "--output", str(output)]) == 0
    import json

    report = json.loads(output.read_text())
    rows = report["starts"]
    assert set(rows) == {"network", "flat", "truth"} and [row["iterations"] for row in rows["network"]] == [0, 20]
    # the fit lowers every start's misfit; the truth explains its patterns better than the network's patch does,
    # and stays the closest to itself
    for name in rows:
        assert rows[name][1]["r_factor"] < rows[name][0]["r_factor"]
    assert rows["truth"][0]["r_factor"] < rows["network"][0]["r_factor"]
    assert rows["truth"][1]["correlation_with_truth"] > max(rows["network"][1]["correlation_with_truth"], rows["flat"][1]["correlation_with_truth"])
