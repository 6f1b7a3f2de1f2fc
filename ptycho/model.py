"""The PINN (DESIGN.md §3) as two plain ``nn.Module``s that share weights.

- ``DiffractionToObject`` (inference graph): measured amplitudes (B, C, N, N) in sqrt(counts)
  and offsets (B, C, 2) -> complex object patches (B, C, N, N).
- ``Autoencoder`` (training graph): the same inputs -> object patches and the predicted
  diffraction amplitudes (B, C, N, N) in sqrt(counts), through the probe and the far-field
  forward model of ``ptycho.physics``.

Scales (DESIGN.md §2, "Normalisation" and "Probe scale"), both computed on the training data
and stored in the bundle, never recomputed at inference:

- ``intensity_scale`` s_in: the network sees sqrt(A / s_in), with mean(sum((A / s_in)**2)) =
  (N/2)**2 over the training patterns: an O(1) input whatever the photon count.
- probe scale s_p: the file's probe is in arbitrary units, so the model keeps the unit-power
  probe P = P_file / ||P_file|| and the forward model is |F(s_p * P * O)|. s_p starts at the
  Parseval estimate sqrt(mean sum(A**2)) (``physics.calibrate_probe``: the value that explains
  the counts with |O| = 1 under the probe) and is trained with the network
  (``log_probe_scale``), as PtychoPINN trains its intensity scale. The object is therefore
  known up to the global factor that any ptychographic reconstruction leaves free.

The predicted window (``Architecture.window_px``) is the smallest centred square holding a set
share of |P|**2 (``probe_window``); outside it the patch is zero (the support prior).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ptycho import physics
from ptycho.config import GRIDSIZES
from ptycho.grouping import GROUPINGS
from ptycho.nn import NAMES as BACKBONE_NAMES
from ptycho.nn import build_backbone

AMPLITUDE_ACTIVATIONS = ("exp", "sigmoid")
OFFSET_INPUTS = ("encoding", "planes")


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network (stored in the bundle as JSON).

    N: pattern size, px. gridsize: C = gridsize**2 patterns per group. n_filters_scale:
    width multiplier. backbone: the network family (``ptycho.nn.NAMES``). window_px: side of the
    predicted object window, px, even, N/2 ... N (0 = the smallest even side >= N/2: N/2, the
    format-1 value, or N/2 + 1 when N/2 is odd).
    amplitude_activation: "exp" (amplitude = exp(output), 1 at zero output, no asymptote
    near 1) or "sigmoid" (bounded by 1, the format-1 head). grouping: how groups are laid out
    (``ptycho.grouping.GROUPINGS``); "canonical" gives the network the group's offsets as input
    and makes inference keep each group's seed patch only (format 3; older bundles: "random").
    offset_input: how canonical groups give the offsets to the network: "encoding" (a learned
    constant per channel added to its pattern) or "planes" (2 C constant input planes, dx and dy
    of each channel in units of N, beside the patterns; the CNN only). Older bundles: "encoding".
    unrolled_sweeps, unrolled_hidden: the learned sweeps trained after the network
    (``ptycho.nn.unrolled``; ``DiffractionToObject.unrolled``), K and the channels of their canvas
    CNNs (0 = steps and momenta only); K = 0: none (format 4; older bundles: 0).
    """

    N: int
    gridsize: int
    n_filters_scale: float = 1.0
    backbone: str = "cnn"
    window_px: int = 0
    amplitude_activation: str = "exp"
    grouping: str = "random"
    offset_input: str = "encoding"
    unrolled_sweeps: int = 0
    unrolled_hidden: int = 0

    def __post_init__(self):
        if self.window_px == 0:
            object.__setattr__(self, "window_px", physics.smallest_window(self.N))
        if not (self.N // 2 <= self.window_px <= self.N and self.window_px % 2 == 0):
            raise ValueError(f"window_px must be even and in [N/2, N] = [{self.N // 2}, {self.N}], got {self.window_px}")
        if self.gridsize not in GRIDSIZES:
            raise ValueError(f"gridsize must be one of {list(GRIDSIZES)}, got {self.gridsize}")
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {list(BACKBONE_NAMES)}, got {self.backbone!r}")
        if self.amplitude_activation not in AMPLITUDE_ACTIVATIONS:
            raise ValueError(f"amplitude_activation must be one of {list(AMPLITUDE_ACTIVATIONS)}, got {self.amplitude_activation!r}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {list(GROUPINGS)}, got {self.grouping!r}")
        if self.offset_input not in OFFSET_INPUTS:
            raise ValueError(f"offset_input must be one of {list(OFFSET_INPUTS)}, got {self.offset_input!r}")
        if self.unrolled_sweeps < 0 or self.unrolled_hidden < 0:
            raise ValueError(f"unrolled_sweeps and unrolled_hidden must be >= 0, got {self.unrolled_sweeps}, {self.unrolled_hidden}")

    @property
    def offset_planes(self) -> int:
        """Input planes besides the patterns: 2 C offset planes for canonical groups with
        ``offset_input`` "planes", else 0."""
        canonical = self.grouping == "canonical" and self.channels > 1
        return 2 * self.channels if canonical and self.offset_input == "planes" else 0

    @property
    def channels(self) -> int:
        return self.gridsize * self.gridsize

    def to_dict(self) -> dict:
        return asdict(self)


def window_mask(size: int, window_px: int) -> torch.Tensor:
    """(N, N) float: 1 on the centred window_px x window_px square (rows N/2 - w/2 ... N/2 + w/2 - 1)."""
    mask = torch.zeros(size, size)
    start = size // 2 - window_px // 2
    mask[start : start + window_px, start : start + window_px] = 1.0
    return mask


class DiffractionToObject(nn.Module):
    """Amplitudes (B, C, N, N) + offsets (B, C, 2) -> complex object patches (B, C, N, N).

    The backbone's raw maps become amplitude (``architecture.amplitude_activation``) and phase
    (pi * tanh) on the centred predicted window, zero-padded to N. For gridsize > 1 the C
    patches of each group are merged on a shared canvas, weighted by the probe intensity
    (``merge_weights``), and re-extracted (the overlap constraint), so the returned patches
    agree where they overlap.
    """

    def __init__(
        self, architecture: Architecture, intensity_scale: float = 1.0, probe: torch.Tensor | None = None,
        probe_scale: float = 1.0,
    ):
        super().__init__()
        self.architecture = architecture
        size, window = architecture.N, architecture.window_px
        self.backbone = build_backbone(
            architecture.backbone, size, architecture.channels, architecture.n_filters_scale, full_resolution=window > size // 2,
            probe=probe if probe is not None else torch.ones(size, size, dtype=torch.complex64),
            intensity_scale=intensity_scale, probe_scale=probe_scale, extra_planes=architecture.offset_planes,
        )
        self.register_buffer("intensity_scale", torch.tensor(float(intensity_scale), dtype=torch.float32))
        self.register_buffer("support", window_mask(size, window))
        # Merge weights of the overlap constraint: the window times the probe intensity.
        weights = self.support.clone()
        if probe is not None:
            intensity = probe.abs() ** 2 * self.support
            weights = intensity / intensity.max()
        self.register_buffer("merge_weights", weights)
        # Canonical groups: the offsets (in units of N) enter as a learned constant added to each
        # channel of the input, zero at the start (the plain network). Done here, not in the
        # backbone, so that every backbone sees them.
        self.offset_encoding = None
        if architecture.grouping == "canonical" and architecture.channels > 1 and not architecture.offset_planes:
            self.offset_encoding = nn.Linear(2 * architecture.channels, architecture.channels)
            nn.init.zeros_(self.offset_encoding.weight)
            nn.init.zeros_(self.offset_encoding.bias)
        # The learned sweeps work on the stitched canvas, not in forward(): they are kept here so that
        # the bundle stores them with the network. Frozen while the network trains (no gradient
        # reaches them there; DDP refuses parameters without one); ``unrolled.train_unrolled`` trains them.
        self.unrolled = None
        if architecture.unrolled_sweeps:
            from ptycho.nn.unrolled import UnrolledSettings, UnrolledSweeps

            self.unrolled = UnrolledSweeps(UnrolledSettings(sweeps=architecture.unrolled_sweeps, hidden=architecture.unrolled_hidden))
            self.unrolled.requires_grad_(False)

    def forward(self, amplitudes: torch.Tensor, offsets_xy: torch.Tensor) -> torch.Tensor:
        # sqrt compresses the input's dynamic range (the central disc is ~100x brighter than
        # the scattering that carries the detail). Measured on the default data, 30 epochs:
        # amplitude / phase SSIM 0.662 / 0.672 plain, 0.733 / 0.715 sqrt, 0.724 / 0.613 log1p.
        inputs = torch.sqrt(amplitudes / self.intensity_scale)
        if self.offset_encoding is not None:
            encoded = self.offset_encoding(offsets_xy.reshape(offsets_xy.shape[0], -1).to(inputs.dtype) / self.architecture.N)
            inputs = inputs + encoded[..., None, None]
        if self.architecture.offset_planes:
            planes = (offsets_xy.to(inputs.dtype) / self.architecture.N).reshape(offsets_xy.shape[0], -1, 1, 1)
            inputs = torch.cat([inputs, planes.expand(-1, -1, *inputs.shape[-2:])], dim=1)
        raw_amplitude, raw_phase = self.backbone(inputs)
        size, window = self.architecture.N, self.architecture.window_px
        start = (raw_amplitude.shape[-1] - window) // 2  # crop the window out of an N x N map
        raw_amplitude = raw_amplitude[..., start : start + window, start : start + window]
        raw_phase = raw_phase[..., start : start + window, start : start + window]
        if self.architecture.amplitude_activation == "sigmoid":
            amplitude = torch.sigmoid(raw_amplitude)
        else:  # exp, with a soft bound at e**+-8 so a wild output cannot overflow
            amplitude = torch.exp(8.0 * torch.tanh(raw_amplitude / 8.0))
        phase = math.pi * torch.tanh(raw_phase)
        pad = (size - window) // 2
        patches = nn.functional.pad(torch.polar(amplitude, phase), (pad, pad, pad, pad))
        if self.architecture.channels > 1:
            patches = physics.enforce_group_overlap(patches, offsets_xy, self.merge_weights)
        return patches


class Autoencoder(nn.Module):
    """Training graph: (amplitudes, offsets) -> (object patches, predicted amplitudes).

    Shares every weight with the ``DiffractionToObject`` it wraps; adds the probe (a buffer, in
    unit power), the trainable probe scale and the far-field forward model.
    """

    def __init__(self, diffraction_to_obj: DiffractionToObject, probe: torch.Tensor, probe_scale: float = 1.0):
        super().__init__()
        self.diffraction_to_obj = diffraction_to_obj
        self.register_buffer("probe", probe.to(torch.complex64))
        self.log_probe_scale = nn.Parameter(torch.tensor(math.log(probe_scale), dtype=torch.float32))

    @property
    def probe_scale(self) -> float:
        return float(torch.exp(self.log_probe_scale.detach()))

    def calibrated_probe(self) -> torch.Tensor:
        """s_p * P: the probe in sqrt(counts) units, the one that explains the data with the predicted object."""
        return torch.exp(self.log_probe_scale) * self.probe

    def forward(self, amplitudes: torch.Tensor, offsets_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.diffraction_to_obj(amplitudes, offsets_xy)
        return patches, physics.forward_amplitude(patches, self.calibrated_probe())


def build_models(
    architecture: Architecture, probe: np.ndarray | torch.Tensor, intensity_scale: float, probe_scale: float = 1.0
) -> tuple[Autoencoder, DiffractionToObject]:
    """Both models, sharing weights: (autoencoder, diffraction_to_obj)."""
    probe = torch.as_tensor(probe)
    diffraction_to_obj = DiffractionToObject(architecture, intensity_scale, probe, probe_scale)
    autoencoder = Autoencoder(diffraction_to_obj, probe, probe_scale)
    return autoencoder, diffraction_to_obj


def intensity_scale_of(amplitudes: np.ndarray) -> float:
    """Scale s with mean(sum((A / s)**2)) = (N/2)**2 over the training patterns (M, N, N).

    Puts the network's input at an O(1) level whatever the photon count, as PtychoPINN does.
    """
    size = amplitudes.shape[-1]
    mean_total = float(np.mean(np.sum(amplitudes.astype(np.float64) ** 2, axis=(-2, -1))))
    return math.sqrt(mean_total) / (size / 2)
