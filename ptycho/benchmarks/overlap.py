"""Overlap benchmark (issue 16): gridsize 1 against canonical 2 x 2 (and 3 x 3) groups, with and
without twin consensus, over several training seeds and three kinds of data.

    python -m ptycho.benchmarks.overlap [--data default gaussian foreign] [--variants g1 g2c g3c]
        [--seeds 1 2 3] [--epochs 30] [--size small|default] [--output results/overlap.json] [--folder DIR]
        [--set model.KEY=VALUE train.KEY=VALUE ...]

The README table "At the default size" (section "The twin image and overlap groups") is
    python -m ptycho.benchmarks.overlap --data default --size default --variants g1-w99 g1 g2c g2c-planes --seeds 1 2 3

Data (all small, N = 32, so that a seed grid runs on a laptop; the truth is known for each):
- ``default``: the params.yaml simulation at the CI's reduced size (N 32, objects 112 / 72 px,
  step 4 px, aperture probe of 8 px, features 4 px): an exactly centrosymmetric probe;
- ``gaussian``: the same with a Gaussian probe (real and centrosymmetric: P*/P = 1, the plain twin
  o*(-r));
- ``foreign``: ``tests/foreign_data.py`` (a builder that shares no code with ptycho: disc
  objects, a defocused annular probe, radially symmetric hence centrosymmetric), train and
  test scans of different objects, read through ``prepare.source: npz``.

``network_patches``: the twin scores of the network's own patches before stitching
(``patch_twin_scores``): where the stitched object hides a minority of twins, these show them.

Variants (``VARIANTS``): ``g1`` gridsize 1; ``g2c`` / ``g3c`` gridsize 2 / 3 with the canonical grouping;
``g2r`` gridsize 2 with the random grouping (the first design); ``-planes``: the offsets as input
planes; ``-w99`` ... ``-w9999``: the predicted window's share of |P|^2; ``-wide``, ``-e100``: twice
the width, 100 epochs; ``-tta``: test-time adaptation (``adapted``); ``-big``: a 4 x larger training
object (the test scan unchanged). Each trained model is inferred
twice, without and with ``infer.twin_consensus`` (suffix ``+tc``). rPIE-30 (the baseline) runs
once per data kind. Every record: amplitude / phase SSIM from ``evaluate``, the twin fraction,
blend and neighbour consensus, train and inference wall time, and the 1-minute load average.
A summary per (data, variant) gives mean, spread (max - min) and minimum over the seeds.

Not a test: times depend on the machine and its load (quote ``load_average_1min``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ptycho import workflows
from ptycho.config import BaselineConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, Source, TrainConfig

SMALL = dict(N=32, train_object_px=112, test_object_px=72, step_px=4.0, probe_diameter_px=8.0, feature_px=4.0, jitter_px=0.25)
VARIANTS = {
    "g1": dict(model=dict(gridsize=1, grouping="random")),
    "g2c": dict(model=dict(gridsize=2, grouping="canonical")),
    "g3c": dict(model=dict(gridsize=3, grouping="canonical")),
    "g2r": dict(model=dict(gridsize=2, grouping="random")),
    # The offsets as 2 C constant input planes instead of the learned per-channel encoding.
    "g2c-planes": dict(model=dict(gridsize=2, grouping="canonical", offset_input="planes")),
    "g3c-planes": dict(model=dict(gridsize=3, grouping="canonical", offset_input="planes")),
    # Capacity and training length (the gridsize-1 network under-fits: its training object scores
    # no better than the test object, at the same data R-factor).
    "g1-e100": dict(model=dict(gridsize=1), train=dict(epochs=100)),
    "g2c-e100": dict(model=dict(gridsize=2, grouping="canonical"), train=dict(epochs=100)),
    "g1-wide": dict(model=dict(gridsize=1, n_filters_scale=1.0)),
    "g1-punet": dict(model=dict(gridsize=1, backbone="projection_unet")),
    # The predicted window (model.window_share, 0.999 by default since this benchmark): at the
    # 28 px crop of the default data the 0.99 window is 14 px, and the true object cut to it
    # explains the test patterns only to an R-factor of 0.10 (0.026 uncut, 0.041 in the 20 px
    # window of 0.999): the support prior itself capped the fit.
    "g1-w99": dict(model=dict(gridsize=1, window_share=0.99)),
    "g2c-w99": dict(model=dict(gridsize=2, grouping="canonical", window_share=0.99)),
    "g1-w995": dict(model=dict(gridsize=1, window_share=0.995)),
    "g1-w999": dict(model=dict(gridsize=1, window_share=0.999)),
    "g1-w9999": dict(model=dict(gridsize=1, window_share=0.9999)),
    "g2c-w999": dict(model=dict(gridsize=2, grouping="canonical", window_share=0.999)),
    "g2c-w9999": dict(model=dict(gridsize=2, grouping="canonical", window_share=0.9999)),
    # Test-time adaptation (``adapted``): 30 epochs on the test scan's patterns after training.
    "g1-tta": dict(model=dict(gridsize=1), adapt_epochs=30),
    "g2c-tta": dict(model=dict(gridsize=2, grouping="canonical"), adapt_epochs=30),
    # More training positions: a 512 px training object (4 x the patterns), the same test scan.
    "g1-big": dict(model=dict(gridsize=1), train_data=dict(train_object_px=512)),
}
"""Per variant, overrides of ``model`` and ``train`` (``TrainConfig``; ``--epochs`` unless set here)
and ``train_data`` (``PrepareConfig`` fields of a separately simulated training scan; the test
scan stays the data kind's own, simulated kinds only)."""

KEYS = ("amplitude.ssim", "phase.ssim", "twin.fraction", "twin.blend", "twin.consensus", "twin.switched", "data.r_factor", "wall_time_s")


def prepared(kind: str, folder: Path, size: str = "small", overrides: dict | None = None):
    """(train, test) datasets of one data kind (module docstring); ``size`` "default": the simulated
    kinds at the params.yaml size (N = 64), not the small one; ``overrides``: PrepareConfig fields."""
    folder.mkdir(parents=True, exist_ok=True)
    if overrides and kind not in ("default", "gaussian"):
        raise SystemExit(f"--variants: a variant with its own training scan needs a simulated data kind, not {kind!r}")
    if kind in ("default", "gaussian"):
        settings = {**(SMALL if size == "small" else {}), "probe_kind": "gaussian" if kind == "gaussian" else "aperture", **(overrides or {})}
        config = dataclasses.replace(PrepareConfig(), **settings)
        return workflows.prepare(config, folder / "train.npz", folder / "test.npz", folder / "preview.png")
    if kind == "foreign":
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        from foreign_data import write_scan

        write_scan(folder / "train_in.npz", size=32, n_per_side=24, step_px=4, spot_diameter_px=12.0, seed=1)
        write_scan(folder / "test_in.npz", size=32, n_per_side=12, step_px=4, spot_diameter_px=12.0, seed=2)
        config = PrepareConfig(source=Source.NPZ, N=32, train_file=str(folder / "train_in.npz"), test_file=str(folder / "test_in.npz"))
        return workflows.prepare(config, folder / "train.npz", folder / "test.npz", folder / "preview.png")
    raise SystemExit(f"--data: unknown kind {kind!r}; known: default, gaussian, foreign")


def patch_twin_scores(bundle_path: Path, test) -> dict[str, float]:
    """``twin.twin_scores`` of the network's own patches (each pattern's seed patch, before stitching
    and phase synchronisation) against the true patches at the test positions, prefixed ``patch.``.

    The stitched object averages some 16 patches per pixel, so a minority of twins hides in it (its
    twin fraction stays 0); the patches themselves show them."""
    import torch

    from ptycho import physics, twin
    from ptycho.bundle import load_bundle
    from ptycho.grouping import grouped_tensors, make_groups

    bundle = load_bundle(bundle_path)
    shape = bundle.architecture
    groups = make_groups(test.xcoords, test.ycoords, shape.gridsize, 7, np.random.default_rng(1), shape.grouping)
    bundle.diffraction_to_obj.eval()
    patches = []
    with torch.inference_mode():
        for start in range(0, groups.n_groups, 256):
            amplitudes, offsets = grouped_tensors(test.amplitudes, groups, np.arange(start, min(start + 256, groups.n_groups)))
            patches.append(bundle.diffraction_to_obj(amplitudes, offsets)[:, 0])
        seeds = groups.indices[:, 0]
        truth = physics.extract_patches(torch.from_numpy(test.object.astype(np.complex64)), torch.from_numpy(test.xcoords[seeds]),
                                        torch.from_numpy(test.ycoords[seeds]), shape.N)
        # Only patches whose window lies inside the truth (extract_patches pads with zeros).
        inside = ((test.xcoords[seeds] >= shape.N // 2) & (test.ycoords[seeds] >= shape.N // 2)
                  & (test.xcoords[seeds] < test.object.shape[1] - shape.N // 2) & (test.ycoords[seeds] < test.object.shape[0] - shape.N // 2))
        keep = torch.from_numpy(np.flatnonzero(inside))
        scores = twin.twin_scores(torch.cat(patches)[keep], truth[keep], torch.from_numpy(test.probe.astype(np.complex64)))
    return {f"patch.{key}": (round(value, 4) if isinstance(value, float) else value) for key, value in scores.items()}


def adapted(bundle_path: Path, test, epochs: int, seed: int, folder: Path) -> tuple[Path, float]:
    """Test-time adaptation: the trained network fine-tuned on the test scan's own patterns (the
    same self-supervised loss, no truth; onecycle at a tenth of the learning rate), written
    beside ``bundle_path``; (path, seconds). Not the network alone: an inference that trains."""
    from ptycho import training
    from ptycho.bundle import load_bundle, save_bundle
    from ptycho.grouping import grouped_tensors, make_groups

    started = time.perf_counter()
    bundle = load_bundle(bundle_path)
    shape = bundle.architecture
    groups = make_groups(test.xcoords, test.ycoords, shape.gridsize, 7, np.random.default_rng(seed), shape.grouping)
    amplitudes, offsets = grouped_tensors(test.amplitudes, groups)
    config = dataclasses.replace(TrainConfig(), seed=seed, epochs=epochs, num_threads=1, learning_rate=1e-4, early_stopping_patience=epochs)
    bundle.autoencoder.train()
    training.fit(bundle.autoencoder, amplitudes, offsets, config, folder / "adapt_checkpoints")
    path = bundle_path.with_name("adapted.h5.zip")
    save_bundle(path, bundle.autoencoder, bundle.diffraction_to_obj, shape, extras=bundle.extras)
    return path, time.perf_counter() - started


def picked(report: dict) -> dict:
    return {key: (round(report[key], 4) if isinstance(report.get(key), float) else report.get(key)) for key in KEYS}


def parse_settings(items: list[str]) -> dict[str, dict]:
    """``--set`` items "model.key=value" / "train.key=value" (YAML values) as {"model": {...}, "train": {...}}."""
    import yaml

    settings: dict[str, dict] = {"model": {}, "train": {}}
    for item in items:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in settings or not field or not value:
            raise SystemExit(f"--set: expected model.KEY=VALUE or train.KEY=VALUE, got {item!r}")
        settings[section][field] = yaml.safe_load(value)
    return settings


def run(kinds, variants, seeds, epochs: int, folder: Path, on_record, size: str = "small", settings: dict | None = None) -> None:
    """Every (data, variant, seed) in ``folder``; ``on_record`` gets each record as it is made.
    ``settings`` ({"model": {...}, "train": {...}}, from ``--set``) override every variant's own."""
    settings = settings or {"model": {}, "train": {}}
    evaluate = EvaluateConfig(margin_px=2 if size == "small" else 4)
    for kind in kinds:
        data_folder = folder / kind
        train, test = prepared(kind, data_folder, size)
        started = time.perf_counter()
        workflows.baseline(test, BaselineConfig(), data_folder / "baseline.npz", data_folder / "baseline_history.csv",
                           data_folder / "baseline_stats.json", data_folder / "baseline.png")
        baseline_s = time.perf_counter() - started
        for name in variants:
            spec = VARIANTS[name]
            train_data = train
            if "train_data" in spec:  # another training scan, the same test scan
                train_data, _ = prepared(kind, data_folder / f"{name}_train", size, spec["train_data"])
            for seed in seeds:
                run_folder = data_folder / f"{name}_seed{seed}"
                run_folder.mkdir(parents=True, exist_ok=True)
                model = ModelConfig(**{**spec.get("model", {}), **settings["model"]})
                model.check()
                train_config = dataclasses.replace(TrainConfig(), **{"seed": seed, "epochs": epochs, "num_threads": 1, **spec.get("train", {}), **settings["train"]})
                load = os.getloadavg()[0]
                summary = workflows.train(train_data, model, train_config, run_folder / "wts.h5.zip", run_folder / "history.csv",
                                          run_folder / "train_metrics.json", run_folder / "checkpoints")
                bundle_path, adapt_s = run_folder / "wts.h5.zip", None
                if "adapt_epochs" in spec:
                    bundle_path, adapt_s = adapted(bundle_path, test, spec["adapt_epochs"], seed, run_folder)
                for consensus in (False, True):
                    label = f"{name}+tc" if consensus else name
                    stem = "tc" if consensus else "plain"
                    workflows.infer(test, bundle_path, InferConfig(twin_consensus=consensus), run_folder / f"{stem}.npz",
                                    run_folder / f"{stem}.png", run_folder / f"{stem}_stats.json")
                    report = workflows.evaluate(
                        test, {"pinn": run_folder / f"{stem}.npz", "baseline": data_folder / "baseline.npz"},
                        {"pinn": run_folder / f"{stem}_stats.json", "baseline": data_folder / "baseline_stats.json"},
                        evaluate, run_folder / f"{stem}_metrics.json", run_folder / f"{stem}_frc.csv", run_folder / f"{stem}_comparison.png",
                    )
                    record = {
                        "data": kind, "variant": label, "seed": seed, "set": settings, "network": picked(report["pinn"]),
                        "rpie30": picked(report["baseline"]), "rpie30_wall_time_s": round(baseline_s, 2),
                        "network_patches": patch_twin_scores(bundle_path, test), "adapt_wall_time_s": adapt_s and round(adapt_s, 2),
                        "train_wall_time_s": summary.metrics["wall_time_s"], "epochs_run": summary.metrics["epochs_run"],
                        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
                    }
                    on_record(record)


def summary(records: list[dict]) -> list[dict]:
    """Per (data, variant): mean, spread (max - min) and minimum over the seeds of the main scores."""
    rows = []
    for kind, variant in dict.fromkeys((r["data"], r["variant"]) for r in records):
        chosen = [r for r in records if r["data"] == kind and r["variant"] == variant]
        row = {"data": kind, "variant": variant, "seeds": [r["seed"] for r in chosen]}
        for key in ("amplitude.ssim", "phase.ssim", "twin.fraction", "twin.blend", "twin.consensus"):
            values = np.array([np.nan if r["network"][key] is None else r["network"][key] for r in chosen], dtype=float)
            row[key] = {"mean": round(float(np.nanmean(values)), 4), "spread": round(float(np.nanmax(values) - np.nanmin(values)), 4),
                        "min": round(float(np.nanmin(values)), 4)} if np.isfinite(values).any() else None
        row["train_wall_time_s"] = round(float(np.mean([r["train_wall_time_s"] for r in chosen])), 1)
        row["infer_wall_time_s"] = round(float(np.mean([r["network"]["wall_time_s"] for r in chosen])), 2)
        row["rpie30"] = {key: chosen[0]["rpie30"][key] for key in ("amplitude.ssim", "phase.ssim", "twin.fraction", "twin.blend")}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["default", "gaussian", "foreign"])
    parser.add_argument("--variants", nargs="+", default=["g1", "g2c"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", choices=["small", "default"], default="small", help="default: the simulated kinds at N = 64")
    parser.add_argument("--output", default="results/overlap.json")
    parser.add_argument("--folder", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="model / train settings for every variant, e.g. model.window_share=0.999 train.epochs=60")
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    records: list[dict] = []

    def write(record: dict) -> None:
        print(json.dumps(record), flush=True)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"settings": vars(args), "records": records, "summary": summary(records)}, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder) if args.folder else Path(temporary)
        run(args.data, args.variants, args.seeds, args.epochs, folder, lambda record: (records.append(record), write(record)), args.size, settings)


if __name__ == "__main__":
    main()
