"""The twin image (DESIGN.md §2): diagnostics with and without a ground truth, and twin consensus.

For one far-field pattern the patch o(r) and its twin t(r) = o*(-r) P*(r) / P(r) give the same
|F(P o)| when the probe is centrosymmetric (P(-r) = P(r)): P t = conj(P(-r) o(-r)), and the
Fourier transform of a conjugated, point-reflected function has the same modulus. A network
that sees one pattern cannot choose between them; overlapping patches can.

Patches are N x N with the centre at pixel N/2 (DESIGN.md §2), so r -> -r maps pixel i to
(N - i) mod N. P*/P = exp(-2i arg P), taken as 0 where the probe is 0 (every score here weights
pixels by |P|^2, so those pixels do not count).

- ``twin_scores``: with a truth, each patch's probe-weighted, phase-invariant correlation with
  the true patch and with the true patch's twin; the twin fraction (share of the patches closer
  to the twin) and the blend (share of the twin in a least-squares fit rec = a o + b t).
- ``pair_agreement`` / ``neighbour_consensus``: without a truth, how well overlapping patches
  agree (phase-invariant, on the canvas grid of ``ptycho.stitching``).
- ``choose_twins``: twin consensus at stitching: each patch or its twin, whichever agrees better
  with its neighbours.
"""

from __future__ import annotations

import numpy as np
import torch

DISTINCT_BELOW = 0.95
"""A patch counts in the twin scores only where the truth and its twin differ: their correlation
below this (a flat patch is its own twin, and no reconstruction can be closer to one of them)."""


def point_reflect(images: torch.Tensor) -> torch.Tensor:
    """images(-r) for (..., N, N) patches centred at pixel N/2: pixel i goes to (N - i) mod N."""
    return torch.roll(torch.flip(images, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def twin_of(patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """The twins t(r) = conj(o(-r)) P*(r) / P(r) of object patches (..., N, N) under the probe (N, N)."""
    probe = probe.to(torch.complex64)
    magnitude = probe.abs()
    ratio = torch.where(magnitude > 0, (probe.conj() / torch.where(magnitude > 0, probe, 1)), 0)
    ratio = ratio / torch.where(ratio.abs() > 0, ratio.abs(), 1)  # unit modulus where P != 0
    return point_reflect(patches.to(torch.complex64)).conj() * ratio


def _inner(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum over pixels of w conj(a) b, per patch: (..., N, N) -> (...,) complex128."""
    return (weights * a.conj() * b).to(torch.complex128).sum(dim=(-2, -1))


def correlation(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """|<a, b>_w| / sqrt(<a, a>_w <b, b>_w) per patch, in [0, 1]: 1 when b = c a for any complex c
    (phase-invariant); 0 where either patch is zero under the weights."""
    norm = torch.sqrt(_inner(a, a, weights).real * _inner(b, b, weights).real)
    return torch.where(norm > 0, _inner(a, b, weights).abs() / torch.where(norm > 0, norm, 1), 0).to(torch.float64)


def twin_scores(reconstructed: torch.Tensor, truth: torch.Tensor, probe: torch.Tensor) -> dict[str, float]:
    """Twin diagnostics of reconstructed patches (P, N, N) against the true patches (P, N, N).

    Weights |P|^2 (probe (N, N), or (K, N, N) incoherent modes: intensities add; the twin is taken
    under mode 0). Returns
    - ``twin.correlation_true`` / ``twin.correlation_twin``: mean correlation with the truth / its twin;
    - ``twin.fraction``: share of the distinct patches (truth and twin correlate below
      ``DISTINCT_BELOW``) closer to the twin than to the truth: 0 for the truth, 1 for twins;
    - ``twin.blend``: mean over distinct patches of |b| / (|a| + |b|) in the weighted least-squares
      fit rec = a o + b t: 0 for the truth, 1 for a twin, 0.5 for an equal mix;
    - ``twin.n_patches``: distinct patches counted. NaN scores when there are none.
    """
    probe = probe if probe.ndim == 3 else probe[None]
    weights = (probe.abs() ** 2).sum(dim=0).to(torch.float32)
    truth = truth.to(torch.complex64)
    twins = twin_of(truth, probe[0])
    reconstructed = reconstructed.to(torch.complex64)
    to_truth = correlation(reconstructed, truth, weights)
    to_twin = correlation(reconstructed, twins, weights)
    distinct = correlation(truth, twins, weights) < DISTINCT_BELOW
    count = int(distinct.sum())
    if count == 0:
        nan = float("nan")
        return {"twin.fraction": nan, "twin.blend": nan, "twin.correlation_true": nan, "twin.correlation_twin": nan, "twin.n_patches": 0}
    # Least squares rec = a o + b t under the weights: the 2 x 2 normal equations per patch.
    o, t, r = truth[distinct], twins[distinct], reconstructed[distinct]
    gram = torch.stack([
        torch.stack([_inner(o, o, weights), _inner(o, t, weights)], dim=-1),
        torch.stack([_inner(t, o, weights), _inner(t, t, weights)], dim=-1),
    ], dim=-2)
    right = torch.stack([_inner(o, r, weights), _inner(t, r, weights)], dim=-1)
    coefficients = torch.linalg.solve(gram, right.unsqueeze(-1)).squeeze(-1).abs()
    total = coefficients.sum(dim=-1)
    blend = torch.where(total > 0, coefficients[:, 1] / torch.where(total > 0, total, 1), 0.5)
    return {
        "twin.fraction": float((to_twin[distinct] > to_truth[distinct]).double().mean()),
        "twin.blend": float(blend.mean()),
        "twin.correlation_true": float(to_truth[distinct].mean()),
        "twin.correlation_twin": float(to_twin[distinct].mean()),
        "twin.n_patches": count,
    }


def pair_products(boxes_i: torch.Tensor, boxes_j: torch.Tensor, corners_i: np.ndarray, corners_j: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(|sum a_i conj(a_j)|, sum |a_i| |a_j|), each (K,) float64, all sums over the overlap
    rectangle of placed boxes i and j (K, h, w). Their ratio is 1 exactly when the two patches agree
    up to a constant phase wherever both are non-zero, whatever their stitching weights.

    Boxes hold patch values times their stitching weights (``ptycho.stitching``); corners (K, 2) are
    their top-left canvas pixels (row, col). Boxes that do not overlap give (0, 0)."""
    height, width = boxes_i.shape[-2:]
    shifts = np.asarray(corners_j) - np.asarray(corners_i)
    inner = torch.zeros(len(shifts), dtype=torch.float64)
    norm = torch.zeros(len(shifts), dtype=torch.float64)
    for shift in np.unique(shifts, axis=0):
        dr, dc = int(shift[0]), int(shift[1])
        if abs(dr) >= height or abs(dc) >= width:
            continue
        group = torch.from_numpy(np.flatnonzero(np.all(shifts == shift, axis=1)))
        first = boxes_i[group][:, max(dr, 0) : height + min(dr, 0), max(dc, 0) : width + min(dc, 0)].to(torch.complex128)
        second = boxes_j[group][:, max(-dr, 0) : height + min(-dr, 0), max(-dc, 0) : width + min(-dc, 0)].to(torch.complex128)
        inner[group] = (first * second.conj()).sum(dim=(-2, -1)).abs()
        norm[group] = (first.abs() * second.abs()).sum(dim=(-2, -1))
    return inner, norm


def pair_agreement(boxes_i: torch.Tensor, boxes_j: torch.Tensor, corners_i: np.ndarray, corners_j: np.ndarray) -> torch.Tensor:
    """Phase-invariant agreement (K,) in [0, 1] of placed boxes i and j where they overlap
    (``pair_products``: their ratio; 0 where the boxes do not overlap or are zero there)."""
    inner, norm = pair_products(boxes_i, boxes_j, corners_i, corners_j)
    return torch.where(norm > 0, inner / torch.where(norm > 0, norm, 1), 0)


def neighbour_consensus(boxes: torch.Tensor, corners: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Agreement of every overlapping pair of placed boxes (P, h, w), pooled: sum of the pairs'
    |sum a_i conj(a_j)| over the sum of their sum |a_i| |a_j| (as ``pair_products``; a pair counts by
    the energy of its overlap, so dim probe tails do not outvote the bright centre). No truth needed.
    ``weights``: the boxes' stitching weights, to leave out pairs that barely overlap
    (``ptycho.synchronisation.overlapping_pairs``).

    1 when every patch agrees with its neighbours up to a constant phase; lower for twins, blends
    and noise. NaN when no two boxes overlap. Computed with the synchronisation's overlap products
    (chunks of pairs grouped by shift): gathering every pair's boxes at once took 4.7 GB at 10,000
    positions."""
    from ptycho.synchronisation import overlap_products, overlapping_pairs

    corners = np.asarray(corners)
    pairs = overlapping_pairs(corners, tuple(boxes.shape[-2:]), weights)
    if len(pairs) == 0:
        return float("nan")
    inner = np.abs(overlap_products(boxes, corners, pairs)).sum()
    norm = overlap_products(boxes.abs().to(torch.complex64), corners, pairs).real.sum()
    return float(inner / norm) if norm > 0 else float("nan")


def choose_twins(boxes: torch.Tensor, twin_boxes: torch.Tensor, corners: np.ndarray, sweeps: int = 8) -> np.ndarray:
    """Twin consensus: for each placed patch (P, h, w), True where its twin (``twin_boxes``, placed the
    same way) agrees better with its neighbours than the patch itself.

    Score of a candidate: its agreement with the current choice of its overlapping neighbours,
    pooled as in ``neighbour_consensus`` (phase-invariant, so it comes before phase synchronisation). Starts
    from the network's patches and sweeps over all patches at once, switching a patch only where its
    other candidate scores higher (by 2 %); stops when nothing switches or after
    ``sweeps`` sweeps. All candidates switch at once (a twin among correct neighbours gains, a
    correct patch beside a twin does not: it keeps its other neighbours). Measured in
    tests/test_twin.py: 20 % and 40 % twins all found in one sweep; letting only local winners
    switch needed 30 sweeps, since with a wide probe every patch overlaps a hundred others.
    """
    from ptycho.synchronisation import overlapping_pairs

    count = len(corners)
    chosen = np.zeros(count, dtype=bool)
    pairs = overlapping_pairs(np.asarray(corners), tuple(boxes.shape[-2:]))
    if len(pairs) == 0:
        return chosen
    i, j = pairs[:, 0], pairs[:, 1]
    for _ in range(sweeps):
        current = torch.where(torch.from_numpy(chosen).view(-1, 1, 1), twin_boxes, boxes)
        other = torch.where(torch.from_numpy(chosen).view(-1, 1, 1), boxes, twin_boxes)
        # Pooled agreement of each patch's current and other candidate with its neighbours' choice.
        keep, keep_norm = (x.numpy() for x in pair_products(current[i], current[j], corners[i], corners[j]))
        flip_i, flip_i_norm = (x.numpy() for x in pair_products(other[i], current[j], corners[i], corners[j]))
        flip_j, flip_j_norm = (x.numpy() for x in pair_products(current[i], other[j], corners[i], corners[j]))
        stay = _ratio(np.bincount(i, keep, count) + np.bincount(j, keep, count), np.bincount(i, keep_norm, count) + np.bincount(j, keep_norm, count))
        switch = _ratio(np.bincount(i, flip_i, count) + np.bincount(j, flip_j, count), np.bincount(i, flip_i_norm, count) + np.bincount(j, flip_j_norm, count))
        gain = switch / np.maximum(stay, 1e-300) - 1.0
        candidate = gain > 0.02
        if not candidate.any():
            break
        chosen[candidate] = ~chosen[candidate]
    return chosen


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)


def stitched_twin_scores(
    obj: np.ndarray, truth: np.ndarray, origin: tuple[int, int], xcoords: np.ndarray, ycoords: np.ndarray, probe: np.ndarray,
) -> dict[str, float]:
    """``twin_scores`` of a stitched object (H, W) against the truth on the same canvas (H, W), on
    the N x N patches at the scan positions (object pixels; ``origin`` = (x0, y0) of the canvas).

    A stitched object averages its patches, so a twin patch shows up as a blend with its
    neighbours there: the blend is the sharper score of a stitched reconstruction."""
    from ptycho import physics

    probe = torch.from_numpy(np.asarray(probe).astype(np.complex64))
    size = probe.shape[-1]
    x = torch.from_numpy(np.asarray(xcoords, dtype=np.float64) - origin[0])
    y = torch.from_numpy(np.asarray(ycoords, dtype=np.float64) - origin[1])
    with torch.no_grad():
        reconstructed = physics.extract_patches(torch.from_numpy(obj.astype(np.complex64)), x, y, size)
        true_patches = physics.extract_patches(torch.from_numpy(truth.astype(np.complex64)), x, y, size)
        return twin_scores(reconstructed, true_patches, probe)
