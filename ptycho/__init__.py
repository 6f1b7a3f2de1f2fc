"""ptycho: physics-informed neural-network ptychography (PtychoPINN-style) as a DVC pipeline."""

__version__ = "0.1.0"
