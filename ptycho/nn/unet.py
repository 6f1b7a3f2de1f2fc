"""Physics projection + U-Net: the inversion's global step done by the physics, the rest local.

A CNN has to learn the far field's inverse (a global, Fourier-like map) from a few hundred
patterns. Here a fixed, differentiable projection does that part: K single-pattern rPIE
iterations with the known, calibrated probe, from a flat object, give an object estimate in
the object frame; a U-Net (GroupNorm, GELU, skip connections) then refines it with the
normalised amplitudes as one more channel. The projection has no weights; its probe and
scales are buffers, stored in the bundle with the network.

Measured (closing note of issue 9; 2-core CPU under load, 20 epochs, n_filters_scale 0.5):
on the independent foreign scans (a defocused ring probe, N = 32) amplitude / phase SSIM
0.64 / 0.28 against the CNN's 0.44 / 0.16; on the default data (a focused probe, N = 64)
0.19 / 0.05 against the CNN's 0.69 / 0.75 — so the CNN stays the default.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ptycho import physics
from ptycho.iterative.single import fit_patterns
from ptycho.nn.cnn import padding_to_multiple

PROJECTION_ITERATIONS = 4
RPIE_ALPHA = 0.05
"""rPIE regularisation a of the projection's step (``ptycho.iterative.weights.rpie_weight``)."""


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = max(1, min(8, out_channels // 4))
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels), nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels), nn.GELU(),
    )


class UNet(nn.Module):
    """U-Net (B, in, S, S) -> (B, out, S, S) for any even S.

    With L levels the side must be a multiple of 2**(L - 1): the input is zero-padded to the
    next one and the output cropped back to the same pixels (nothing changes where S already
    is one, so the weights are those of the unpadded network).
    """

    def __init__(self, in_channels: int, out_channels: int, widths: list[int]):
        super().__init__()
        self.downs = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.downs.append(_block(channels, width))
            channels = width
        self.upsamples = nn.ModuleList()
        self.ups = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamples.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.ups.append(_block(2 * width, width))
            channels = width
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        side = inputs.shape[-1]
        before, after = padding_to_multiple(side, 2 ** (len(self.downs) - 1))
        features = F.pad(inputs, (before, after, before, after)) if before or after else inputs
        skips = []
        for level, down in enumerate(self.downs):
            features = down(features)
            if level < len(self.downs) - 1:
                skips.append(features)
                features = F.max_pool2d(features, 2)
        for upsample, up in zip(self.upsamples, self.ups):
            features = up(torch.cat([upsample(features), skips.pop()], dim=1))
        return self.head(features)[..., before : before + side, before : before + side]


class Projection(nn.Module):
    """K single-pattern rPIE iterations (``iterative.single``) from O = 1 with the calibrated probe: (B, C, N, N) object.

    Input: the network's normalised input x = sqrt(A / s_in), so A = x**2 s_in. The probe is
    s_p P with the probe scale at its training-data estimate (a fixed buffer, not trained here).
    """

    def __init__(self, probe: torch.Tensor, intensity_scale: float, probe_scale: float, iterations: int):
        super().__init__()
        self.register_buffer("probe", probe.to(torch.complex64) * probe_scale)
        self.register_buffer("input_scale", torch.tensor(float(intensity_scale), dtype=torch.float32))
        self.iterations = iterations

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        amplitudes = physics.uncentre(normalised * normalised * self.input_scale)
        flat = torch.ones_like(amplitudes, dtype=torch.complex64)
        # floor 1e-6, not the engine's 1e-30: this projection is differentiated in training
        return fit_patterns(flat, amplitudes, self.probe, self.iterations, rpie_alpha=RPIE_ALPHA, floor=1e-6)


class ProjectionUNet(nn.Module):
    """(B, C, N, N) normalised input -> raw amplitude and phase maps, each (B, C, N, N)."""

    def __init__(self, size: int, channels: int, n_filters_scale: float, probe: torch.Tensor,
                 intensity_scale: float, probe_scale: float):
        super().__init__()
        self.channels = channels
        self.projection = Projection(probe, intensity_scale, probe_scale, PROJECTION_ITERATIONS)
        widths = [max(4, int(round(width * n_filters_scale))) for width in (32, 64, 128)]
        self.unet = UNet(4 * channels, 2 * channels, widths)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obj = self.projection(inputs)
        features = torch.cat([obj.real - 1, obj.imag, inputs, torch.log(obj.abs().clamp(min=1e-3))], dim=1)
        raw = self.unet(features)
        return raw[:, : self.channels], raw[:, self.channels :]
