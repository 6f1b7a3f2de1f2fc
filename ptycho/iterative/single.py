"""Single-pattern data consistency: rPIE iterations that fit each patch to its own pattern alone.

No overlap and no canvas: every patch sees only the one pattern measured where it sits, with a
fixed probe, so the patches of a batch are independent and the loop is a few FFTs per patch.
Two users:

- ``nn.unet``'s physics projection, from a flat object, as the U-Net's input (differentiated:
  floor 1e-6);
- `infer` (``infer.consistency_iterations``), from the network's own patch: the measured pattern
  corrects what the network got wrong about it (floor 1e-30, no gradient).

A single pattern does not fix a patch (``ptycho benchmark single_pattern``). On the default data, after
200 iterations the network's, a flat and the true patch explain their patterns equally well (R-factor
0.0164 / 0.0169 / 0.0163) while their probe-weighted correlations with the truth stay 0.989 / 0.961 /
0.998: what remains is invisible to one pattern, and only the overlap of neighbouring patterns can fix it.
From the network's patch a few iterations still help (stitched amplitude / phase SSIM 0.847 / 0.800 ->
0.894 / 0.845 after 5 at alpha 0.003), so they refine a start; they do not replace one.
"""

from __future__ import annotations

import torch

from ptycho import physics
from ptycho.iterative.weights import rpie_weight


def fit_patterns(
    patches: torch.Tensor, amplitudes: torch.Tensor, probe: torch.Tensor, iterations: int, *,
    rpie_alpha: float, floor: float, support: torch.Tensor | None = None, valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``iterations`` rPIE steps of each patch against its own pattern; returns the new patches.

    patches (..., N, N) complex; amplitudes (..., N, N), sqrt(counts) in the unshifted frame of
    ``physics.propagate`` (``physics.uncentre``); probe (N, N) complex in sqrt(counts) units (the
    calibrated probe). ``support`` (N, N): the patch is kept zero outside it (the network's
    predicted window). ``valid`` (N, N) bool, unshifted frame: masked detector pixels keep the
    model's modulus, as in the engine. ``floor``: see ``physics.modulus_projection``.
    """
    step = probe.conj() * rpie_weight(probe.real**2 + probe.imag**2, 1.0, rpie_alpha)
    for _ in range(iterations):
        exit_waves = probe * patches
        far = physics.propagate(exit_waves)
        modulus = far.abs()
        target = amplitudes if valid is None else torch.where(valid, amplitudes, modulus)
        corrected = physics.backpropagate(physics.modulus_projection(far, target, modulus, floor=floor))
        patches = patches + step * (corrected - exit_waves)
        if support is not None:
            patches = patches * support
    return patches
