"""The PtychoPINN-style network (DESIGN.md §3) as two plain ``nn.Module``s that share weights.

- ``DiffractionToObject`` (inference graph): measured amplitudes (B, C, N, N) in sqrt(counts)
  and offsets (B, C, 2) -> complex object patches (B, C, N, N).
- ``Autoencoder`` (training graph): the same inputs -> object patches and the predicted
  diffraction amplitudes (B, C, N, N) in sqrt(counts), through the fixed probe and the
  far-field forward model of ``ptycho.physics``.

The network sees sqrt(amplitudes / ``intensity_scale``) (the scale computed on the training
data and stored as a buffer, so inference never recomputes it). The probe is calibrated in photon units
(|F(P * O)|**2 are expected counts), so the predicted amplitudes are compared with the
measured ones directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ptycho import physics


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network (stored in the bundle as JSON)."""

    N: int  # pattern size, px
    gridsize: int  # C = gridsize**2 patterns per group
    n_filters_scale: float = 1.0

    @property
    def channels(self) -> int:
        return self.gridsize * self.gridsize

    @property
    def levels(self) -> int:
        """Encoder blocks: down to an 8 x 8 bottleneck (3 for N = 64, 4 for N = 128)."""
        return int(round(math.log2(self.N))) - 3

    def widths(self) -> list[int]:
        """Encoder widths 32, 64, 128, ... times n_filters_scale (at least 4 filters)."""
        return [max(4, int(round(32 * 2**level * self.n_filters_scale))) for level in range(self.levels)]

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_pair(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(),
    ]


def _decoder(widths: list[int], out_channels: int) -> nn.Sequential:
    """Conv-Conv-Upsample blocks from the bottleneck (N/2**levels) up to N/2, then a 3x3 head."""
    layers: list[nn.Module] = []
    reversed_widths = widths[::-1]  # e.g. 128, 64, 32
    in_channels = reversed_widths[0]
    for width in reversed_widths[:-1]:  # levels - 1 upsamplings: N/8 -> N/2 for N = 64
        layers += _conv_pair(in_channels, width) + [nn.Upsample(scale_factor=2, mode="nearest")]
        in_channels = width
    layers += _conv_pair(in_channels, reversed_widths[-1])
    layers.append(nn.Conv2d(reversed_widths[-1], out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class DiffractionToObject(nn.Module):
    """Amplitudes (B, C, N, N) + offsets (B, C, 2) -> complex object patches (B, C, N, N).

    Encoder of Conv-ReLU-Conv-ReLU-MaxPool blocks; two decoders (amplitude, phase); heads
    sigmoid (amplitude in (0, 1)) and pi * tanh (phase) on the central N/2 x N/2 window,
    zero-padded to N (the support prior). For gridsize > 1 the C patches of each group are
    merged on a shared canvas and re-extracted (the overlap constraint), so the returned
    patches agree where they overlap.
    """

    def __init__(self, architecture: Architecture, intensity_scale: float = 1.0):
        super().__init__()
        self.architecture = architecture
        widths = architecture.widths()
        layers: list[nn.Module] = []
        in_channels = architecture.channels
        for width in widths:
            layers += _conv_pair(in_channels, width) + [nn.MaxPool2d(2)]
            in_channels = width
        self.encoder = nn.Sequential(*layers)
        self.amplitude_decoder = _decoder(widths, architecture.channels)
        self.phase_decoder = _decoder(widths, architecture.channels)
        self.register_buffer("intensity_scale", torch.tensor(float(intensity_scale), dtype=torch.float32))
        size = architecture.N
        support = torch.zeros(size, size)
        support[size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1.0
        self.register_buffer("support", support)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights and zero biases, as in the reference implementation."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, amplitudes: torch.Tensor, offsets_xy: torch.Tensor) -> torch.Tensor:
        # sqrt compresses the input's dynamic range (the central disc is ~100x brighter than
        # the scattering that carries the detail). Measured on the default data, 30 epochs:
        # amplitude / phase SSIM 0.662 / 0.672 plain, 0.733 / 0.715 sqrt, 0.724 / 0.613 log1p.
        features = self.encoder(torch.sqrt(amplitudes / self.intensity_scale))
        amplitude = torch.sigmoid(self.amplitude_decoder(features))
        phase = math.pi * torch.tanh(self.phase_decoder(features))
        quarter = self.architecture.N // 4
        central = torch.polar(amplitude, phase)
        patches = nn.functional.pad(central, (quarter, quarter, quarter, quarter))
        if self.architecture.channels > 1:
            patches = physics.enforce_group_overlap(patches, offsets_xy, self.support)
        return patches


class Autoencoder(nn.Module):
    """Training graph: (amplitudes, offsets) -> (object patches, predicted amplitudes).

    Shares every weight with the ``DiffractionToObject`` it wraps; adds the probe (a buffer,
    photon-calibrated) and the far-field forward model.
    """

    def __init__(self, diffraction_to_obj: DiffractionToObject, probe: torch.Tensor):
        super().__init__()
        self.diffraction_to_obj = diffraction_to_obj
        self.register_buffer("probe", probe.to(torch.complex64))

    def forward(self, amplitudes: torch.Tensor, offsets_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.diffraction_to_obj(amplitudes, offsets_xy)
        return patches, physics.forward_amplitude(patches, self.probe)


def build_models(
    architecture: Architecture, probe: np.ndarray | torch.Tensor, intensity_scale: float
) -> tuple[Autoencoder, DiffractionToObject]:
    """Both models, sharing weights: (autoencoder, diffraction_to_obj)."""
    diffraction_to_obj = DiffractionToObject(architecture, intensity_scale)
    autoencoder = Autoencoder(diffraction_to_obj, torch.as_tensor(probe))
    return autoencoder, diffraction_to_obj


def intensity_scale_of(amplitudes: np.ndarray) -> float:
    """Scale s with mean(sum((A / s)**2)) = (N/2)**2 over the training patterns (M, N, N).

    Puts the network's input at an O(1) level whatever the photon count, as PtychoPINN does.
    """
    size = amplitudes.shape[-1]
    mean_total = float(np.mean(np.sum(amplitudes.astype(np.float64) ** 2, axis=(-2, -1))))
    return math.sqrt(mean_total) / (size / 2)
