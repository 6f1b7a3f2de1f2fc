"""Figures: drawn without pyplot, so importing ptycho leaves matplotlib's backend alone."""

import subprocess
import sys

import numpy as np

from ptycho import figures
from ptycho.reconstruction import Reconstruction

CHECK_BACKEND = """
import matplotlib
matplotlib.use("svg")
import ptycho.cli, ptycho.figures, ptycho.workflows
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""


def test_importing_ptycho_keeps_the_callers_matplotlib_backend():
    result = subprocess.run([sys.executable, "-c", CHECK_BACKEND], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_figure_is_a_png_and_identical_data_give_identical_bytes(tmp_path):
    rng = np.random.default_rng(0)
    obj = (rng.random((24, 24)) * np.exp(1j * rng.random((24, 24)))).astype(np.complex64)
    reconstruction = Reconstruction(obj, (3, 4), np.ones((24, 24), np.float32), "test")
    figures.reconstruction_figure(reconstruction, tmp_path / "a.png", "a")
    figures.reconstruction_figure(reconstruction, tmp_path / "b.png", "a")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_loss_curves_are_a_png_that_changes_with_the_history(tmp_path):
    history = [{"epoch": e, "train_loss": -10.0 - e, "val_loss": -9.0 - e, "learning_rate": 1e-3 / e} for e in range(1, 6)]
    figures.loss_curves(history, tmp_path / "a.png", "training")
    figures.loss_curves(history, tmp_path / "b.png", "training")
    history[2]["val_loss"] = -30.0  # a different best epoch draws a different figure
    figures.loss_curves(history, tmp_path / "c.png", "training")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
