"""One workflow function per pipeline stage: the DVC stage scripts, the CLI and the tests call these.

Each workflow imports the ptycho modules it needs inside the function, so that running one stage
imports only its own code: the `deps` of a stage in dvc.yaml list exactly those modules (plus
this one, ``__init__``, ``config``, ``data``, ``rowfile``, ``errors``, ``files``, ``archive`` and ``cli``,
which every stage imports), and a change to, say, ``metrics.py`` re-runs `evaluate`, not `train`.
tests/test_pipeline.py records what each stage imports under ``dvc repro`` and checks dvc.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ptycho.config import BaselineConfig, RefineConfig, CheckConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, Source, TrainConfig
from ptycho.data import PtychoDataset, load_dataset
from ptycho.errors import DataError, PtychoError
from ptycho.files import csv_bytes, json_bytes, remove_stale_temp_files, write_atomically

if TYPE_CHECKING:
    from ptycho.reconstruction import Reconstruction


def split_spatially(dataset: PtychoDataset, test_fraction: float, source: str) -> tuple[PtychoDataset, PtychoDataset]:
    """Split one scan into train (small x) and test (large x) parts, with a guard band.

    The positions with the largest x (column) make the test set: those at or beyond the
    (1 - test_fraction) quantile of x. Training keeps positions at least N/2 pixels to the left
    of that cut, so the central N/2-wide windows that the network predicts never overlap
    between train and test: the test region is object the network has not seen.
    """
    size = dataset.pattern_size
    cut = float(np.quantile(dataset.xcoords, 1.0 - test_fraction))
    test_indices = np.flatnonzero(dataset.xcoords >= cut)
    train_indices = np.flatnonzero(dataset.xcoords < cut - size / 2)
    if len(train_indices) == 0 or len(test_indices) == 0:
        raise DataError(
            f"{source}: key 'xcoords': cannot split {dataset.n_patterns} positions spatially with "
            f"test_fraction={test_fraction} and a guard band of N/2={size // 2} px "
            f"(train {len(train_indices)}, test {len(test_indices)}); give prepare.test_file instead"
        )
    dropped = dataset.n_patterns - len(train_indices) - len(test_indices)
    split = {
        "split": f"spatial: test x >= {cut:.2f}, train x < {cut - size / 2:.2f}",
        "guard_band_dropped": int(dropped),  # patterns within N/2 left of the cut: in neither file
    }
    train, test = dataset.subset(train_indices), dataset.subset(test_indices)
    return (
        dataclasses.replace(train, metadata={**train.metadata, **split, "role": "train"}),
        dataclasses.replace(test, metadata={**test.metadata, **split, "role": "test"}),
    )


def prepare(config: PrepareConfig, train_path: str | Path, test_path: str | Path, preview_path: str | Path) -> tuple[PtychoDataset, PtychoDataset]:
    """Simulate or ingest a scan and write canonical train/test NPZ files plus a preview PNG.

    Everything is read and checked before anything is written, so bad input leaves no output.
    """
    from ptycho import figures
    from ptycho.data import save_dataset, validate

    if config.source is Source.SIMULATE:
        from ptycho.simulate import simulate_train_test

        train, test = simulate_train_test(config)
        train, test = crop_simulated(train, test, config)
    elif config.test_file:
        from ptycho.io import load_scan

        train, factor = load_scan(config.train_file, config)
        if config.detector_crop_px == "auto":  # one instrument: the test file gets the training file's crop
            config = dataclasses.replace(config, detector_crop_px=train.pattern_size if train.pattern_size < config.N else 0, N=train.pattern_size)
        # The probe scale is measured on the training file and reused (DESIGN.md §2).
        test, _ = load_scan(config.test_file, config, probe_scale_factor=factor)
    else:
        from ptycho.io import load_scan

        scan, _ = load_scan(config.train_file, config)
        train, test = split_spatially(scan, config.test_fraction, config.train_file)
    if config.probe_refinement_sweeps:
        from ptycho.iterative.probe_refinement import refine_probe

        train, test = refine_probe(train, test, config.probe_refinement_sweeps)
    validate(train, str(train_path))
    validate(test, str(test_path))
    save_dataset(train, train_path)
    save_dataset(test, test_path)
    figures.dataset_preview(train, preview_path, f"training data ({config.source.value})")
    return train, test


def crop_simulated(train: PtychoDataset, test: PtychoDataset, config: PrepareConfig) -> tuple[PtychoDataset, PtychoDataset]:
    """Both simulated scans cropped by ``prepare.detector_crop_px`` (auto: decided on the training
    scan's mean pattern), reference objects resampled with them (``ptycho.io.detector``)."""
    from ptycho.io import detector

    if not config.detector_crop_px:
        return train, test
    mean = np.mean(np.square(train.amplitudes, dtype=np.float64), axis=0)
    crop, why = detector.chosen_crop(mean, config.detector_crop_px, config.detector_crop_share)
    return detector.crop_dataset(train, crop, why), detector.crop_dataset(test, crop, why)


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    history: list[dict[str, float]]
    metrics: dict[str, float]
    stop_reason: str = ""  # epochs | early_stopping | wall_time (``training.Stopping``)
    wrote_outputs: bool = True  # False on the other ranks of a distributed (DDP) run: rank 0 writes


def train(
    train_data: PtychoDataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    bundle_path: str | Path,
    history_path: str | Path,
    metrics_path: str | Path,
    checkpoint_dir: str | Path,
    resume: bool = False,
    *,
    callbacks: Sequence = (),
    figure_path: str | Path | None = None,
) -> TrainSummary:
    """Fit the PINN on the training scan and write the history CSV, the final metrics and the bundle.

    The one training code path: the `train` stage, `ptycho train` and the tests call it, and it
    ends by writing ``bundle_path`` (wts.h5.zip) or raises. Every file is written atomically and
    the bundle last, so a kill at any moment leaves no partial file and no new bundle beside old
    reports; temp files a killed run left beside these outputs are deleted first. ``resume``:
    see ``training.fit`` (it continues from ``checkpoint_dir/last.ckpt``). ``callbacks``: extra
    Lightning callbacks (tests interrupt a run with one). ``figure_path``: a PNG of the loss curves
    and the learning rate (DESIGN.md §6). Global state (thread counts, random
    states) is as it was when this returns.
    """
    from ptycho import training

    remove_stale_temp_files(bundle_path, history_path, metrics_path, *([figure_path] if figure_path else []))
    with training.preserved_global_state():
        return _train(train_data, model_config, train_config, bundle_path, history_path, metrics_path, checkpoint_dir, resume, callbacks, figure_path)


def _train(train_data, model_config, train_config, bundle_path, history_path, metrics_path, checkpoint_dir, resume, callbacks, figure_path) -> TrainSummary:
    from ptycho import physics, training
    from ptycho.bundle import save_bundle
    from ptycho.grouping import grouped_tensors, make_groups
    from ptycho.model import Architecture, build_models, intensity_scale_of

    started = time.perf_counter()
    size = train_data.pattern_size
    window_px = physics.probe_window(train_data.probe, model_config.window_share)
    inner_share = physics.window_share(train_data.probe, size - 2)
    if window_px == size and inner_share < model_config.window_share:
        warnings.warn(
            f"train: the probe spills beyond the largest object window (N = {size} px): {100 * (1 - inner_share):.1f} % "
            f"of |probe|^2 lies in the outer 1-px frame of the pattern, where the probe is cut; the network predicts "
            f"the whole N x N window. A larger N (or a smaller, more focused probe) keeps more of it.", stacklevel=3,
        )
    architecture = Architecture(
        N=size, gridsize=model_config.gridsize, n_filters_scale=model_config.n_filters_scale,
        backbone=model_config.backbone, window_px=window_px, grouping=model_config.grouping,
        offset_input=model_config.offset_input, unrolled_sweeps=model_config.unrolled_sweeps, unrolled_hidden=model_config.unrolled_hidden,
    )
    groups = make_groups(
        train_data.xcoords, train_data.ycoords, model_config.gridsize, model_config.n_neighbours,
        np.random.default_rng(train_config.seed), model_config.grouping,
    )
    amplitudes, offsets = grouped_tensors(train_data.amplitudes, groups)
    torch.manual_seed(train_config.seed)  # the initial weights are part of a reproducible run
    unit_probe, probe_scale = physics.calibrate_probe(train_data.probe, train_data.amplitudes)
    autoencoder, diffraction_to_obj = build_models(
        architecture, unit_probe, intensity_scale_of(train_data.amplitudes), probe_scale=probe_scale
    )
    mask = None if train_data.mask is None else torch.from_numpy(np.asarray(train_data.mask, dtype=bool))
    result = training.fit(autoencoder, amplitudes, offsets, train_config, checkpoint_dir, resume, callbacks=callbacks, mask=mask)
    if not result.is_global_zero:  # multi-GPU: rank 0 alone writes the bundle and the reports
        return TrainSummary(history=result.history, metrics={}, stop_reason=result.stop_reason, wrote_outputs=False)
    history = csv_bytes(result.history)
    config_snapshot = json.dumps(
        {"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)}, sort_keys=True, indent=2, default=str
    ).encode()
    last = result.history[-1]
    final = {
        "final_train_loss": last.get("train_loss", float("nan")),
        "final_val_loss": last.get("val_loss", float("nan")),
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "final_val_amplitude_mae": last.get("val_amplitude_mae", float("nan")),
        "epochs_run": result.epochs_run,
        "n_groups": groups.n_groups,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    if architecture.unrolled_sweeps:
        final.update(_train_unrolled(train_data, autoencoder, diffraction_to_obj, train_config, config_snapshot))
        final["wall_time_s"] = round(time.perf_counter() - started, 2)
    # Reports first, the bundle last: a kill in between may leave new reports beside the old
    # bundle, never a new bundle beside old reports.
    write_atomically(history_path, history)
    write_atomically(metrics_path, json_bytes(final))
    if figure_path is not None:
        from ptycho import figures

        figures.loss_curves(result.history, figure_path, f"training: {final['epochs_run']} epochs, best validation at epoch {final['best_epoch']}")
    save_bundle(bundle_path, autoencoder, diffraction_to_obj, architecture, extras={"history.csv": history, "config.json": config_snapshot})
    return TrainSummary(history=result.history, metrics=final, stop_reason=result.stop_reason)


def _train_unrolled(train_data, autoencoder, diffraction_to_obj, train_config: TrainConfig, config_snapshot: bytes) -> dict:
    """Train the learned sweeps (``ptycho.nn.unrolled``) of the trained network on the training scan,
    from the network's reconstruction of it (fp32, as any CPU computes it) and from flat; returns
    the metrics it adds (``unrolled_*``)."""
    from ptycho.bundle import Bundle
    from ptycho.config import InferPrecision
    from ptycho.inference import reconstruct
    from ptycho.nn import unrolled

    autoencoder.eval()
    probe = autoencoder.calibrated_probe().detach().numpy().astype(np.complex64)
    bundle = Bundle(autoencoder, diffraction_to_obj, diffraction_to_obj.architecture, float(diffraction_to_obj.intensity_scale),
                    autoencoder.probe_scale, probe, {}, {"config.json": config_snapshot})
    network = reconstruct(bundle, train_data, InferConfig(precision=InferPrecision.FP32), "the trained network")
    scan = unrolled.CanvasScan(train_data, probe)
    model = diffraction_to_obj.unrolled
    torch.manual_seed(train_config.seed)
    info = unrolled.train_unrolled(model, scan, [scan.start(network), scan.start(None)], steps=train_config.unrolled_steps,
                                   learning_rate=train_config.unrolled_learning_rate, seed=train_config.seed)
    # scalars, one per start, so that `dvc metrics show` lists them
    losses = {f"unrolled_loss_{when}_{start}": info[f"loss_{when}"][index] for when in ("first", "last") for index, start in enumerate(("network", "flat"))}
    return {**losses, "unrolled_wall_time_s": round(info["seconds"], 2)}


def infer(
    test_data: PtychoDataset, bundle_path: str | Path, config: InferConfig,
    reconstruction_path: str | Path, figure_path: str | Path, stats_path: str | Path,
    product_path: str | Path | None = None,
) -> Reconstruction:
    """Load only the bundle, reconstruct the test scan, write the reconstruction, a PNG and timings
    (and, given `product_path`, the reconstruction as a ptychodus product.h5)."""
    from ptycho import figures
    from ptycho.bundle import load_bundle
    from ptycho.data import pixel_size_of
    from ptycho.inference import reconstruct, resolve_device, resolve_precision
    from ptycho.reconstruction import save_reconstruction

    precision, why = resolve_precision(config.precision, resolve_device(config.device))
    bundle = load_bundle(bundle_path)
    started = time.perf_counter()
    diagnostics: dict = {}
    if config.adapt_epochs > 0:
        from ptycho.adaptation import adapt
        from ptycho.inference import n_neighbours_of

        diagnostics.update(adapt(bundle, test_data, config, n_neighbours_of(bundle, bundle_path)))
    reconstruction = reconstruct(bundle, test_data, config, bundle_path, diagnostics=diagnostics)
    seconds = time.perf_counter() - started
    if reconstruction.pixel_size_m is None:
        reconstruction = dataclasses.replace(reconstruction, pixel_size_m=pixel_size_of(test_data))
    save_reconstruction(reconstruction, reconstruction_path)
    if product_path:
        from ptycho.io.product import write_product

        write_product(product_path, reconstruction, test_data)
    figures.reconstruction_figure(reconstruction, figure_path, "network reconstruction")
    stats = {"wall_time_s": round(seconds, 3), "patterns_per_s": round(test_data.n_patterns / seconds, 1), "n_patterns": test_data.n_patterns,
             "precision": precision.value, "precision_reason": why, "device": config.device,
             "consistency_iterations": config.consistency_iterations,
             **{key: round(value, 4) for key, value in diagnostics.items()}}  # json_bytes writes NaN as null
    write_atomically(stats_path, json_bytes(stats))
    return reconstruction


LABELS = {"pinn": "network", "refined": "network + refinement", "baseline": "iterative"}


def evaluate(
    test_data: PtychoDataset, reconstruction_paths: dict[str, str | Path], stats_paths: dict[str, str | Path],
    config: EvaluateConfig, metrics_path: str | Path, frc_path: str | Path, figure_path: str | Path,
    *, scores_dir: str | Path | None = None,
) -> dict:
    """Score each reconstruction (``pinn``, and ``refined`` / ``baseline`` when given) on one common region and,
    for the data R-factor, on the same patterns (those every method covers), each re-simulated
    with the method's own probe when its reconstruction has one (``data.own_probe`` = 1).

    Writes metrics.json with one section per method (the timings of its stats file merged in),
    the FRC curves as one CSV and a truth / reconstructions / differences figure. Given
    ``scores_dir``, also ``<scores_dir>/<method>.json`` (``scores_of``): the pipeline declares
    these as its DVC metrics, so that ``dvc metrics show`` has one row per method under shared
    columns instead of one row of every method's every key.
    """
    from ptycho import figures
    from ptycho.reconstruction import load_reconstruction
    from ptycho.scoring import common_region, scorable_positions, score, scores_of

    reconstructions = {method: load_reconstruction(path) for method, path in reconstruction_paths.items()}
    shapes = {method: (rec.origin, rec.object.shape) for method, rec in reconstructions.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"reconstructions: key 'origin': the methods' canvases differ ({shapes}); they must come from the same test scan")
    region = common_region(reconstructions, config) if test_data.object is not None else None
    # One set of patterns for every method's R-factor: those each of them can be scored on.
    keep = np.array(sorted(set.intersection(*(set(scorable_positions(rec, test_data).tolist()) for rec in reconstructions.values()))), dtype=np.int64)
    report: dict[str, dict] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method, reconstruction in reconstructions.items():
        results, curve = score(reconstruction, test_data, region, config, str(reconstruction_paths[method]), keep)
        results["data.own_probe"] = int(reconstruction.probe is not None)  # 1: re-simulated with its own probe
        if method in stats_paths:
            stats = json.loads(Path(stats_paths[method]).read_text())
            results.update({"wall_time_s": stats["wall_time_s"], "patterns_per_s": stats["patterns_per_s"]})
            results.update({key: value for key, value in stats.items() if key.startswith("twin.")})  # the network's, no truth needed
        report[method] = results
        if curve is not None:
            curves[method] = curve
    if scores_dir is not None:
        for method, results in report.items():
            write_atomically(Path(scores_dir) / f"{method}.json", json_bytes(scores_of(results)))
    write_atomically(metrics_path, json_bytes(report))
    frequencies = next(iter(curves.values()))[0] if curves else []
    rows = [{"frequency_per_px": float(f), **{m: float(curve[1][i]) for m, curve in curves.items()}} for i, f in enumerate(frequencies)]
    write_atomically(frc_path, csv_bytes(rows) if rows else ("frequency_per_px," + ",".join(reconstructions) + "\n").encode())
    truth = None if test_data.object is None else next(iter(reconstructions.values())).truth_window(test_data.object, "test data")
    figures.comparison_figure(truth, {LABELS.get(m, m): rec for m, rec in reconstructions.items()}, figure_path)
    return report


REQUIRED_METRICS = ("amplitude.ssim", "phase.ssim", "amplitude.pearson", "data.r_factor")


def check(
    bundle_path: str | Path, test_data_path: str | Path, reconstruction_path: str | Path,
    metrics_path: str | Path, config: CheckConfig,
) -> list[str]:
    """Artifact checks after a pipeline run; returns the failures (empty when all pass)."""
    from ptycho.bundle import load_bundle
    from ptycho.reconstruction import load_reconstruction

    failures: list[str] = []
    bundle = None
    try:
        bundle = load_bundle(bundle_path)
    except PtychoError as error:
        failures.append(f"bundle: {error}")
    if bundle is not None:
        try:
            data = load_dataset(test_data_path)
            size, channels = bundle.architecture.N, bundle.architecture.channels
            amplitudes = torch.from_numpy(data.amplitudes[:channels].astype(np.float32)).reshape(1, -1, size, size)
            offsets = torch.zeros(1, channels, 2)
            with torch.inference_mode():
                patches = bundle.diffraction_to_obj(amplitudes, offsets)
                _, predicted = bundle.autoencoder(amplitudes, offsets)
            for name, output in (("diffraction_to_obj", patches), ("autoencoder", predicted)):
                if output.shape != (1, channels, size, size) or not torch.isfinite(torch.view_as_real(output) if output.is_complex() else output).all():
                    failures.append(f"bundle: {name} forward pass gave shape {tuple(output.shape)} or non-finite values")
        except (PtychoError, RuntimeError) as error:
            failures.append(f"forward pass on {test_data_path}: {error}")
    try:
        load_reconstruction(reconstruction_path)
    except PtychoError as error:
        failures.append(f"reconstruction: {error}")
    try:
        report = json.loads(Path(metrics_path).read_text())["pinn"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        failures.append(f"metrics: {metrics_path}: unreadable or without a 'pinn' section ({error})")
        return failures
    for key in REQUIRED_METRICS:
        value = report.get(key)
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            failures.append(f"metrics: {metrics_path}: '{key}' is missing or not a finite number ({value!r})")
    thresholds = (
        ("amplitude.ssim", ">=", config.min_amplitude_ssim),
        ("phase.ssim", ">=", config.min_phase_ssim),
        ("amplitude.pearson", ">=", config.min_amplitude_pearson),
        ("data.r_factor", "<=", config.max_r_factor),
    )
    for key, relation, limit in thresholds:
        value = report.get(key)
        if isinstance(value, (int, float)) and np.isfinite(value):
            ok = value >= limit if relation == ">=" else value <= limit
            if not ok:
                failures.append(f"threshold: pinn {key} = {value:.4f}, required {relation} {limit} (params.yaml check:)")
    return failures


def baseline(
    test_data: PtychoDataset, config: BaselineConfig, reconstruction_path: str | Path,
    history_path: str | Path, stats_path: str | Path, figure_path: str | Path,
    product_path: str | Path | None = None,
) -> list[float]:
    """Iterative reference reconstruction of the test scan, in the network's output format (with
    the probe it used or refined; given `product_path`, also as a ptychodus product.h5)."""
    from ptycho import figures
    from ptycho.iterative.pie import run_pie
    from ptycho.reconstruction import save_reconstruction

    started = time.perf_counter()
    reconstruction, errors = run_pie(test_data, config)
    seconds = time.perf_counter() - started
    save_reconstruction(reconstruction, reconstruction_path)
    if product_path:
        from ptycho.io.product import write_product

        write_product(product_path, reconstruction, test_data, losses=errors)
    figures.reconstruction_figure(reconstruction, figure_path, f"iterative reconstruction ({reconstruction.method})")
    write_atomically(history_path, csv_bytes([{"iteration": i + 1, "error": e} for i, e in enumerate(errors)]))
    stats = {"wall_time_s": round(seconds, 3), "patterns_per_s": round(test_data.n_patterns / seconds, 1),
             "iterations": config.iterations, "final_error": errors[-1]}
    write_atomically(stats_path, json_bytes(stats))
    return errors


def refine(
    test_data: PtychoDataset, reconstruction_path: str | Path, infer_stats_path: str | Path, config: RefineConfig,
    refined_path: str | Path, history_path: str | Path, stats_path: str | Path, figure_path: str | Path,
    bundle_path: str | Path | None = None,
) -> list[float]:
    """Network + refinement. ``config.engine`` learned: the bundle's learned sweeps
    (``ptycho.nn.unrolled.refine_learned``; ``bundle_path`` is read for them); sweeps: sweeps of the
    iterative engine (``ptycho.iterative.refinement``). Either starts from the network's
    reconstruction (its object and calibrated probe) or, where that explains the patterns worse,
    from a flat object, and runs ``config.iterations`` sweeps (auto: all K learned ones, or until
    the data error stops falling). The stats say which start was used, the trial errors and
    why it stopped; they count the network's inference time too, so ``wall_time_s`` is what the
    hybrid costs from diffraction to object."""
    from ptycho import figures
    from ptycho.config import RefineEngine
    from ptycho.errors import ConfigError
    from ptycho.iterative.refinement import refine_scan
    from ptycho.reconstruction import load_reconstruction, save_reconstruction

    network = load_reconstruction(reconstruction_path)
    network_seconds = json.loads(Path(infer_stats_path).read_text())["wall_time_s"]
    model = None
    if config.engine is RefineEngine.LEARNED:
        from ptycho.bundle import load_bundle

        if bundle_path is None:
            raise ConfigError("refine.engine: learned needs the model bundle (--bundle) that holds the learned sweeps")
        model = load_bundle(bundle_path).diffraction_to_obj.unrolled
        if model is None:
            raise ConfigError(f"refine.engine: learned, but {bundle_path} holds no learned sweeps (trained with model.unrolled_sweeps: 0); "
                              "train with model.unrolled_sweeps > 0 or use refine.engine: sweeps")
    started = time.perf_counter()
    if model is not None:
        from ptycho.nn.unrolled import refine_learned

        outcome = refine_learned(test_data, network, config, model, source=str(bundle_path))
    else:
        outcome = refine_scan(test_data, network, config)
    seconds = time.perf_counter() - started + network_seconds
    errors = outcome.errors
    save_reconstruction(outcome.reconstruction, refined_path)
    start = "network" if outcome.start.value == "network" else "flat start"
    kind = "learned" if model is not None else config.algorithm.value
    figures.reconstruction_figure(outcome.reconstruction, figure_path, f"{start} + {len(errors)} {kind} sweeps")
    write_atomically(history_path, csv_bytes([{"iteration": i + 1, "error": e} for i, e in enumerate(errors)]))
    stats = {"wall_time_s": round(seconds, 3), "patterns_per_s": round(test_data.n_patterns / seconds, 1),
             "network_wall_time_s": network_seconds, **outcome.stats(), "final_error": errors[-1]}
    write_atomically(stats_path, json_bytes(stats))
    return errors
