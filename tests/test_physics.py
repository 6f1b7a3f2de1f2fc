"""Physics identities and known answers for ptycho.physics (DESIGN.md §2)."""

import numpy as np
import pytest
import torch

from ptycho import physics


def random_complex(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator))


def test_parseval_holds_for_far_field():
    waves = random_complex(3, 2, 32, 32)
    amplitude = physics.forward_amplitude(waves, torch.ones(32, 32, dtype=torch.complex64))
    torch.testing.assert_close((amplitude**2).sum(dim=(-2, -1)), (waves.abs() ** 2).sum(dim=(-2, -1)), rtol=1e-5, atol=1e-4)


def test_zero_frequency_is_at_the_array_centre():
    flat = torch.ones(1, 16, 16, dtype=torch.complex64)
    amplitude = physics.far_field(flat).abs()[0]
    peak = np.unravel_index(int(amplitude.argmax()), amplitude.shape)
    assert peak == (8, 8)
    assert float(amplitude[8, 8]) == pytest.approx(16.0, rel=1e-6)  # sqrt(N*N) with norm="ortho"


@pytest.mark.parametrize("dx, dy", [(3.0, 0.0), (0.0, -5.0), (2.0, 4.0), (-7.0, 1.0)])
def test_translate_moves_a_bright_pixel_by_plus_shift(dx, dy):
    image = torch.zeros(1, 32, 32)
    image[0, 10, 12] = 1.0  # row 10, column 12
    moved = physics.translate(image, torch.tensor([[dx, dy]]))[0]
    row, col = np.unravel_index(int(moved.argmax()), moved.shape)
    assert (row, col) == (10 + dy, 12 + dx)
    assert float(moved.max()) == pytest.approx(1.0)


def test_translate_subpixel_is_bilinear():
    image = torch.zeros(1, 16, 16)
    image[0, 8, 8] = 1.0
    moved = physics.translate(image, torch.tensor([[0.25, 0.0]]))[0]
    assert float(moved[8, 8]) == pytest.approx(0.75, abs=1e-5)
    assert float(moved[8, 9]) == pytest.approx(0.25, abs=1e-5)


def test_extract_patches_centres_window_on_position():
    obj = torch.zeros(40, 50, dtype=torch.complex64)
    obj[17, 23] = 2.0 + 1.0j  # row 17, column 23
    patches = physics.extract_patches(obj, torch.tensor([23.0, 20.0]), torch.tensor([17.0, 15.0]), 8)
    assert complex(patches[0, 4, 4]) == pytest.approx(2.0 + 1.0j)  # centre pixel N/2 sits on the position
    # a window centred 3 columns left and 2 rows up sees the pixel 3 right and 2 down of centre
    assert complex(patches[1, 6, 7]) == pytest.approx(2.0 + 1.0j)
    assert float(patches.abs().sum()) == pytest.approx(2 * abs(2.0 + 1.0j), rel=1e-6)


def test_extract_patches_matches_translate_for_subpixel_positions():
    obj = random_complex(48, 48)
    x, y = 20.3, 25.6
    patch = physics.extract_patches(obj, torch.tensor([x]), torch.tensor([y]), 16)[0]
    # moving the object by -(x - 24, y - 24) brings (x, y) to the centre (24, 24)
    moved = physics.translate(obj.unsqueeze(0), torch.tensor([[24 - x, 24 - y]]))[0]
    torch.testing.assert_close(patch, moved[16:32, 16:32], rtol=1e-5, atol=1e-5)


def test_extract_patches_is_bilinear_and_zero_outside_the_object():
    obj = torch.zeros(10, 12, dtype=torch.complex64)
    obj[4, 5], obj[4, 6], obj[5, 5], obj[5, 6] = 1.0, 2.0, 3.0, 4.0j
    # centre at (x, y) = (5.25, 4.5): the centre pixel mixes the four with weights 0.375 / 0.125 / 0.375 / 0.125
    patch = physics.extract_patches(obj, torch.tensor([5.25]), torch.tensor([4.5]), 4)[0]
    assert complex(patch[2, 2]) == pytest.approx(0.375 * 1 + 0.125 * 2 + 0.375 * 3 + 0.125 * 4j)
    # a window hanging over the corner reads zeros beyond the edge, not the nearest object pixel
    corner = physics.extract_patches(torch.ones(10, 12, dtype=torch.complex64), torch.tensor([0.0]), torch.tensor([0.0]), 4)[0]
    assert torch.all(corner[:2] == 0) and torch.all(corner[:, :2] == 0) and torch.all(corner[2:, 2:] == 1)


def test_extract_patches_memory_grows_with_the_patches_not_the_object():
    # 5,000 windows of a 2048 px object: sampling the whole object per window would need ~335 GB
    obj = torch.ones(2048, 2048, dtype=torch.complex64)
    xs = torch.linspace(20.5, 2020.5, 5000, dtype=torch.float64)
    patches = physics.extract_patches(obj, xs, xs.flip(0), 32)
    assert patches.shape == (5000, 32, 32) and torch.allclose(patches, torch.ones_like(patches))


def test_merge_then_extract_returns_the_patches_of_one_consistent_object():
    # Patches cut from one object at known offsets agree where they overlap, so merging them and
    # cutting them out again must give them back wherever the canvas is covered.
    obj = random_complex(64, 64, seed=3)
    offsets = torch.tensor([[[-3.0, -2.0], [4.0, -3.0], [-2.0, 5.0], [3.0, 3.0]]])
    centre = 32.0
    patches = physics.extract_patches(obj, centre + offsets[0, :, 0], centre + offsets[0, :, 1], 16).unsqueeze(0)
    support = torch.ones(16, 16)
    again = physics.enforce_group_overlap(patches, offsets, support)
    inner = (slice(None), slice(None), slice(2, 14), slice(2, 14))  # away from bilinear edge pixels
    torch.testing.assert_close(again[inner], patches[inner], rtol=1e-4, atol=1e-4)


def test_merge_averages_disagreeing_patches_and_leaves_uncovered_pixels_zero():
    patches = torch.stack([torch.full((8, 8), 1.0 + 0j), torch.full((8, 8), 3.0 + 0j)]).unsqueeze(0)
    offsets = torch.tensor([[[-2.0, 0.0], [2.0, 0.0]]])
    canvas = physics.merge_group(patches, offsets, torch.ones(8, 8), pad=2)[0]
    row = canvas[6].real  # canvas is 12 x 12; first patch covers columns 0..7, second 4..11
    torch.testing.assert_close(row, torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], dtype=torch.float32))
    assert torch.all(canvas[0] == 0) and torch.all(canvas[-1] == 0)  # rows outside every patch
    assert torch.isfinite(canvas.real).all()


def test_merge_is_strictly_per_group():
    a = random_complex(1, 4, 16, 16, seed=1)
    b = random_complex(1, 4, 16, 16, seed=2)
    offsets = torch.tensor([[[-1.5, -1.0], [1.0, -2.0], [-2.0, 1.5], [2.0, 2.0]]])
    support = torch.ones(16, 16)
    together = physics.enforce_group_overlap(torch.cat([a, b]), offsets.repeat(2, 1, 1), support)
    alone = physics.enforce_group_overlap(a, offsets, support)
    torch.testing.assert_close(together[:1], alone)


def test_gridsize_one_overlap_is_identity_on_the_support():
    patches = random_complex(5, 1, 16, 16)
    support = torch.zeros(16, 16)
    support[4:12, 4:12] = 1.0
    again = physics.enforce_group_overlap(patches, torch.zeros(5, 1, 2), support)
    torch.testing.assert_close(again, patches * support)


def test_poisson_nll_is_smallest_at_the_measured_amplitude():
    measured = torch.full((1, 4, 4), 3.0)
    losses = [float(physics.poisson_nll(torch.full((1, 4, 4), a), measured)) for a in (2.0, 2.9, 3.0, 3.1, 4.0)]
    assert int(np.argmin(losses)) == 2


def test_poisson_nll_uses_the_intensity_scale_as_counts():
    predicted, measured = torch.full((2, 2), 0.5), torch.full((2, 2), 0.4)
    scale = 10.0
    lam, k = (scale * 0.5) ** 2, (scale * 0.4) ** 2
    expected = lam - k * np.log(lam + 1e-6)
    assert float(physics.poisson_nll(predicted, measured, intensity_scale=scale)) == pytest.approx(expected, rel=1e-5)


def test_gradients_flow_through_overlap_and_forward_model():
    patches = random_complex(2, 4, 16, 16).requires_grad_(True)
    offsets = torch.tensor([[[-1.5, -1.0], [1.0, -2.0], [-2.0, 1.5], [2.0, 2.0]]]).repeat(2, 1, 1)
    probe = random_complex(16, 16, seed=5)
    merged = physics.enforce_group_overlap(patches, offsets, torch.ones(16, 16))
    loss = physics.poisson_nll(physics.forward_amplitude(merged, probe), torch.rand(2, 4, 16, 16))
    loss.backward()
    assert patches.grad is not None and torch.isfinite(patches.grad.real).all()
    assert float(patches.grad.abs().sum()) > 0


def test_masked_losses_leave_invalid_pixels_out():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.rand(3, 8, 8, generator=generator) + 0.1
    measured = torch.rand(3, 8, 8, generator=generator) + 0.1
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2, :] = False
    spoiled = measured.clone()
    spoiled[:, 2, :] = 1e3
    for loss in (physics.poisson_nll, physics.amplitude_mae):
        masked = loss(predicted, spoiled, mask=mask)
        torch.testing.assert_close(masked, loss(predicted[:, mask], measured[:, mask]))
        assert loss(predicted, spoiled) > 10 * masked.abs()


# --------------------------------------------------------------------------------------------
# Fourier shift, propagation and modulus projection (the operators of the iterative engine)


def test_fourier_translate_moves_a_bright_pixel_by_plus_d():
    probe = torch.zeros(16, 16, dtype=torch.complex64)
    probe[8, 8] = 1.0
    moved = physics.fourier_translate(probe, torch.tensor([[3.0, -2.0], [0.0, 0.0]]))
    # content moves by +d: (dx, dy) = (3, -2) takes [8, 8] to [row 6, col 11]
    assert torch.argmax(moved[0].abs()).item() == 6 * 16 + 11
    np.testing.assert_allclose(moved[0].abs().max().item(), 1.0, atol=1e-5)
    np.testing.assert_allclose(moved[1].numpy(), probe.numpy(), atol=1e-6)


def test_fourier_translate_agrees_with_physics_translate_on_a_smooth_probe_and_is_unitary():
    rows, cols = np.mgrid[0:32, 0:32] - 16
    probe = torch.from_numpy(np.exp(-(rows**2 + cols**2) / 20.0 + 0.3j * cols).astype(np.complex64))
    shift = torch.tensor([[0.4, -0.3]])
    fourier = physics.fourier_translate(probe, shift)[0]
    bilinear = physics.translate(probe, shift[0].float())
    # measured max differences: 0.032 (bilinear interpolation error), 0.25 for the mirrored
    # shift, 0.13 for no shift at all
    difference = (fourier - bilinear).abs().max().item()
    assert difference < 0.05
    assert difference < 0.2 * (physics.fourier_translate(probe, -shift)[0] - bilinear).abs().max().item()
    assert difference < 0.4 * (probe - bilinear).abs().max().item()
    back = physics.fourier_translate(fourier.unsqueeze(0), -shift)[0]
    np.testing.assert_allclose(back.numpy(), probe.numpy(), atol=1e-5)


def dot(a, b):
    """<a, b> = Σ conj(a) b, in complex128."""
    return complex(torch.sum(a.to(torch.complex128).conj() * b.to(torch.complex128)))


def test_fourier_translate_pair_passes_the_dot_product_adjoint_test():
    images, other = random_complex(5, 16, 16, seed=1), random_complex(5, 16, 16, seed=2)
    shift = torch.tensor([[0.3, -0.7], [2.5, 0.1], [-1.2, 3.4], [0.0, 0.0], [7.9, -4.4]])
    forward = dot(other, physics.fourier_translate(images, shift))
    adjoint = dot(physics.fourier_translate_adjoint(other, shift), images)
    assert abs(forward - adjoint) < 1e-5 * abs(forward)
    # and the adjoint is the inverse (unitary)
    torch.testing.assert_close(physics.fourier_translate_adjoint(physics.fourier_translate(images, shift), shift), images, atol=1e-5, rtol=0)


def test_propagate_pair_passes_the_dot_product_adjoint_test_and_is_unitary():
    waves, far = random_complex(3, 2, 16, 16, seed=3), random_complex(3, 2, 16, 16, seed=4)
    forward = dot(far, physics.propagate(waves))
    adjoint = dot(physics.backpropagate(far), waves)
    assert abs(forward - adjoint) < 1e-5 * abs(forward)
    torch.testing.assert_close(physics.backpropagate(physics.propagate(waves)), waves, atol=1e-5, rtol=0)
    torch.testing.assert_close(physics.far_field(waves), physics.centre(physics.propagate(waves)))
    torch.testing.assert_close(physics.uncentre(physics.centre(waves)), waves)


def test_modulus_projection_sets_the_measured_modulus_and_keeps_the_phase():
    far = random_complex(4, 16, 16, seed=5)
    far[0, 3, 3] = 0  # a zero stays zero (no division by zero)
    measured = random_complex(4, 16, 16, seed=6).abs()
    projected = physics.modulus_projection(far, measured, far.abs(), floor=1e-30)
    expected = measured.clone()
    expected[0, 3, 3] = 0
    torch.testing.assert_close(projected.abs(), expected, atol=1e-5, rtol=1e-5)
    nonzero = far.abs() > 0
    torch.testing.assert_close(torch.angle(projected)[nonzero], torch.angle(far)[nonzero], atol=1e-5, rtol=0)
    # a projection: applied twice it changes nothing more
    again = physics.modulus_projection(projected, measured, projected.abs(), floor=1e-30)
    torch.testing.assert_close(again, projected, atol=1e-5, rtol=1e-5)


def test_modulus_projection_scales_incoherent_modes_together():
    far = random_complex(2, 3, 8, 8, seed=7)  # (B, K, N, N)
    modulus = torch.sqrt((far.abs() ** 2).sum(dim=1, keepdim=True))
    measured = 2 * modulus
    projected = physics.modulus_projection(far, measured, modulus, floor=1e-30)
    torch.testing.assert_close(projected, 2 * far)
