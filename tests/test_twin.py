"""The twin image: its physics, the scores with a truth, neighbour consensus and twin consensus."""

import numpy as np
import torch

from ptycho import physics, twin
from ptycho.simulate import gaussian_random_field, make_probe
from ptycho.stitching import Stitcher, canvas_frame

SIZE = 32


def random_object(shape, seed):
    rng = np.random.default_rng(seed)
    amplitude = 0.4 + 0.6 * gaussian_random_field(shape, 3.0, rng)
    phase = 1.5 * gaussian_random_field(shape, 3.0, rng)
    return torch.from_numpy((amplitude * np.exp(1j * phase)).astype(np.complex64))


def test_point_reflection_maps_the_centre_pixel_to_itself_and_a_bright_pixel_across_it():
    image = torch.zeros(SIZE, SIZE)
    image[SIZE // 2, SIZE // 2] = 1.0
    image[SIZE // 2 - 3, SIZE // 2 + 5] = 2.0  # up 3, right 5 -> down 3, left 5
    reflected = twin.point_reflect(image)
    assert reflected[SIZE // 2, SIZE // 2] == 1.0
    assert reflected[SIZE // 2 + 3, SIZE // 2 - 5] == 2.0
    assert reflected.sum() == 3.0


def test_the_twin_gives_the_same_diffraction_under_the_centrosymmetric_aperture_probe_and_not_under_an_asymmetric_one():
    probe = torch.from_numpy(make_probe("aperture", SIZE, 8.0))
    patches = physics.extract_patches(random_object((60, 60), 0), torch.tensor([20.0, 30.0]), torch.tensor([25.0, 33.0]), SIZE)
    twins = twin.twin_of(patches, probe)
    same = physics.forward_amplitude(patches, probe)
    np.testing.assert_allclose(physics.forward_amplitude(twins, probe), same, atol=1e-4 * float(same.max()))
    # A coma-like phase breaks the symmetry: the twin's pattern differs.
    rows, cols = torch.meshgrid(torch.arange(SIZE) - SIZE // 2, torch.arange(SIZE) - SIZE // 2, indexing="ij")
    asymmetric = probe * torch.polar(torch.ones(SIZE, SIZE), 0.002 * cols.float() ** 3)
    twins = twin.twin_of(patches, asymmetric)
    difference = (physics.forward_amplitude(twins, asymmetric) - physics.forward_amplitude(patches, asymmetric)).abs().sum()
    assert difference > 0.05 * physics.forward_amplitude(patches, asymmetric).sum()


def test_twin_scores_of_the_truth_are_0_of_twins_1_and_of_an_even_mix_a_half():
    probe = torch.from_numpy(make_probe("aperture", SIZE, 8.0))
    xs, ys = torch.meshgrid(torch.arange(20.0, 60.0, 4.0), torch.arange(20.0, 60.0, 4.0), indexing="xy")
    truth = physics.extract_patches(random_object((80, 80), 1), xs.reshape(-1), ys.reshape(-1), SIZE)
    twins = twin.twin_of(truth, probe)
    exact = twin.twin_scores(truth, truth, probe)
    assert exact["twin.fraction"] == 0.0 and exact["twin.blend"] < 1e-4
    assert exact["twin.correlation_true"] > 0.9999 and exact["twin.n_patches"] > 50
    mirrored = twin.twin_scores(twins * 1j, truth, probe)  # any constant phase: the scores ignore it
    assert mirrored["twin.fraction"] == 1.0 and mirrored["twin.blend"] > 1 - 1e-4
    mixed = twin.twin_scores(0.5 * (truth + twins), truth, probe)
    assert abs(mixed["twin.blend"] - 0.5) < 1e-3
    some = torch.cat((twins[:10], truth[10:]))
    assert abs(twin.twin_scores(some, truth, probe)["twin.fraction"] - 10 / exact["twin.n_patches"]) < 1e-9


def placed(patches, xs, ys, probe):
    origin, shape = canvas_frame(xs.numpy(), ys.numpy(), SIZE)
    stitcher = Stitcher(origin, shape, probe.abs() ** 2 / (probe.abs() ** 2).max())
    return stitcher.place(patches, xs, ys)


def test_twin_consensus_finds_the_twins_among_overlapping_patches_and_consensus_scores_them_lower():
    probe = torch.from_numpy(make_probe("aperture", SIZE, 8.0))
    xs, ys = torch.meshgrid(torch.arange(20.0, 72.0, 4.0), torch.arange(20.0, 72.0, 4.0), indexing="xy")
    xs, ys = xs.reshape(-1) + 0.3, ys.reshape(-1) - 0.2
    truth = physics.extract_patches(random_object((96, 96), 2), xs, ys, SIZE)
    # Each patch with its own phase offset, as the network gives them; a fifth of them twins.
    offsets = torch.polar(torch.ones(len(xs)), torch.linspace(0, 6, len(xs))).view(-1, 1, 1)
    is_twin = torch.from_numpy(np.random.default_rng(3).random(len(xs)) < 0.2)
    patches = torch.where(is_twin.view(-1, 1, 1), twin.twin_of(truth, probe), truth) * offsets
    boxes = placed(patches, xs, ys, probe)
    twin_boxes = placed(twin.twin_of(patches, probe), xs, ys, probe)
    chosen = twin.choose_twins(boxes.values, twin_boxes.values, boxes.corners)
    np.testing.assert_array_equal(chosen, is_twin.numpy())
    clean = placed(truth * offsets, xs, ys, probe)
    assert twin.neighbour_consensus(clean.values, clean.corners) > twin.neighbour_consensus(boxes.values, boxes.corners) + 0.05


def test_stitched_twin_scores_of_the_truth_are_zero_and_of_a_point_reflected_conjugate_are_not():
    probe = make_probe("aperture", SIZE, 8.0)
    obj = random_object((80, 80), 4).numpy()
    xs, ys = np.meshgrid(np.arange(24.0, 56.0, 4.0), np.arange(24.0, 56.0, 4.0))
    exact = twin.stitched_twin_scores(obj, obj, (0, 0), xs.ravel(), ys.ravel(), probe)
    assert exact["twin.fraction"] == 0.0 and exact["twin.blend"] < 1e-4
    # One window's twin, seen through the single position at that window's centre.
    centre = 40
    mirrored = obj.copy()
    window = slice(centre - SIZE // 2, centre + SIZE // 2)
    mirrored[window, window] = twin.twin_of(torch.from_numpy(obj[window, window]), torch.from_numpy(probe)).numpy()
    one = twin.stitched_twin_scores(mirrored, obj, (0, 0), np.array([40.0]), np.array([40.0]), probe)
    assert one["twin.fraction"] == 1.0 and one["twin.blend"] > 0.99
