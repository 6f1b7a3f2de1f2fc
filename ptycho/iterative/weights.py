"""Step weights of the PIE family: the only thing ePIE and rPIE do differently.

A weight maps the illumination S (per pixel, Σ|P|² for the object update or Σ|O|² for the
probe update) to the factor that multiplies the update's numerator Σ conj(P) Δψ. Pure torch
(no ptycho import): ``single`` (single-pattern fits) and ``nn.unrolled`` use ``rpie_weight`` too; ``pie.STEP_WEIGHTS``
maps ``config.Algorithm`` to these.
"""

from __future__ import annotations

import torch


def epie_weight(illumination: torch.Tensor, step: float, rpie_alpha: float) -> torch.Tensor:
    """ePIE (Maiden & Rodenburg 2009): step / max|P|², one scalar for the whole update."""
    del rpie_alpha
    return torch.full_like(illumination, step) / illumination.max()


def rpie_weight(illumination: torch.Tensor, step: float, rpie_alpha: float) -> torch.Tensor:
    """rPIE (Maiden, Johnson & Li 2017): step / ((1 - a)|P|² + a max|P|²), per pixel."""
    return step / ((1.0 - rpie_alpha) * illumination + rpie_alpha * illumination.max())
