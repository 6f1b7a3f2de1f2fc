"""Neighbour grouping: C members from the K nearest, seeded, offsets about the group centre."""

import numpy as np
import pytest

from ptycho.errors import ConfigError
from ptycho.grouping import make_groups


def grid_positions(n=6, step=5.0):
    ys, xs = np.mgrid[0:n, 0:n] * step
    return xs.ravel().astype(float), ys.ravel().astype(float)


def test_gridsize_one_is_one_position_per_group_with_zero_offset():
    xs, ys = grid_positions()
    groups = make_groups(xs, ys, gridsize=1, n_neighbours=1, rng=np.random.default_rng(0))
    assert groups.indices.shape == (36, 1)
    np.testing.assert_array_equal(groups.indices[:, 0], np.arange(36))
    np.testing.assert_array_equal(groups.offsets_xy, 0.0)
    np.testing.assert_array_equal(groups.centres_xy, np.stack([xs, ys], 1))


def test_gridsize_two_draws_from_the_k_nearest_and_offsets_sum_to_zero():
    xs, ys = grid_positions()
    groups = make_groups(xs, ys, gridsize=2, n_neighbours=5, rng=np.random.default_rng(0))
    assert groups.indices.shape == (36, 4)
    positions = np.stack([xs, ys], 1)
    for seed, members in enumerate(groups.indices):
        assert members[0] == seed and len(set(members)) == 4
        all_distances = np.sort(np.linalg.norm(positions - positions[seed], axis=1))
        distances = np.linalg.norm(positions[members] - positions[seed], axis=1)
        assert distances.max() <= all_distances[4] + 1e-9  # within the K = 5 nearest (seed included)
    np.testing.assert_allclose(groups.offsets_xy.sum(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(positions[groups.indices] - groups.centres_xy[:, None], groups.offsets_xy)


def test_grouping_is_reproducible_for_a_seed_and_varies_with_it():
    xs, ys = grid_positions()
    first = make_groups(xs, ys, 2, 7, np.random.default_rng(3)).indices
    again = make_groups(xs, ys, 2, 7, np.random.default_rng(3)).indices
    other = make_groups(xs, ys, 2, 7, np.random.default_rng(4)).indices
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_too_few_neighbours_or_positions_is_an_error():
    xs, ys = grid_positions()
    with pytest.raises(ConfigError, match="model.n_neighbours"):
        make_groups(xs, ys, 2, 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="model.gridsize"):
        make_groups(xs[:3], ys[:3], 2, 7, np.random.default_rng(0))


def test_canonical_groups_have_a_fixed_channel_order_on_a_jittered_raster():
    xs, ys = grid_positions(n=6, step=5.0)
    rng = np.random.default_rng(1)
    xs, ys = xs + rng.uniform(-0.8, 0.8, xs.size), ys + rng.uniform(-0.8, 0.8, ys.size)
    groups = make_groups(xs, ys, gridsize=2, n_neighbours=1, rng=None, layout="canonical")
    positions = np.stack([xs, ys], 1)
    steps = np.round((positions[groups.indices] - positions[groups.indices[:, :1]]) / 5.0)  # (G, 4, 2) in scan steps
    interior = [seed for seed in range(36) if seed % 6 < 5 and seed // 6 < 5]  # not on the right or bottom edge
    for seed in interior:  # seed, right, down, down-right
        assert groups.indices[seed, 0] == seed
        np.testing.assert_array_equal(steps[seed], [[0, 0], [1, 0], [0, 1], [1, 1]])
    # Right edge: the template is mirrored along x (seed, left, down, down-left), never a far pick.
    np.testing.assert_array_equal(steps[5], [[0, 0], [-1, 0], [0, 1], [-1, 1]])
    np.testing.assert_array_equal(steps[35], [[0, 0], [-1, 0], [0, -1], [-1, -1]])
    np.testing.assert_allclose(groups.offsets_xy.sum(axis=1), 0.0, atol=1e-9)


def test_canonical_three_by_three_puts_the_seed_first_and_its_eight_neighbours_row_by_row():
    xs, ys = grid_positions(n=5, step=4.0)
    groups = make_groups(xs, ys, gridsize=3, n_neighbours=1, rng=None, layout="canonical")
    seed = 12  # the centre of the 5 x 5 raster
    assert groups.indices[seed].tolist() == [12, 6, 7, 8, 11, 13, 16, 17, 18]


def test_an_unknown_grouping_is_refused():
    xs, ys = grid_positions()
    with pytest.raises(ConfigError, match="model.grouping"):
        make_groups(xs, ys, 2, 7, np.random.default_rng(0), layout="spiral")
