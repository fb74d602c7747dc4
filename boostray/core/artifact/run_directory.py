"""The run directory a finished run leaves: the shipped ensemble, metrics.json, the sample weights and
the resolved options. Built from the final BoostState without Ray; the driver only calls it.

RUN_DIR/ensemble/        the members the combination kept, with manifest.json (weights, temperature)
RUN_DIR/metrics.json     per member and ensemble figures, every combination rule, what was shipped and why,
                         the regime diagnostics
RUN_DIR/sample_weights.parquet   each training sample's weight in every round
RUN_DIR/config.yaml      the resolved options (``--config RUN_DIR/config.yaml`` repeats the run)

A local run directory is assembled under a hidden name and renamed into place; one at a storage URI is
assembled locally and uploaded with metrics.json last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import yaml

from boostray.core.artifact import storage
from boostray.core.method.boost_state import BoostState
from boostray.core.method.boosting import imbalance, vote
from boostray.core.method.combine import Choice, choose_combination, crossfit_proba, fit_combination, scores
from boostray.core.data.datasets import ImageDataset
from boostray.core.method.diagnostics import diagnostics
from boostray.core.artifact.ensemble import write_ensemble
from boostray.core.method.methods import COMBINATIONS
from boostray.core.method.metrics import accuracy, ensemble_report, expected_calibration_error, nll, per_class_accuracy
from boostray.core.method.spec import RunSpec


def combine_members(state: BoostState, data: ImageDataset, spec: RunSpec) -> Choice:
    """The deployed combination: the run's rule and temperature, fitted on the whole validation split
    (greedy: the final network alone unless the selection holds its accuracy cross-fitted)."""
    lambdas = np.array([m.lambda_ for m in state.members])
    return choose_combination(spec.method.combine, np.stack(state.val_proba), data.val.labels, num_classes=data.num_classes,
                              lambdas=lambdas, crossfit_lambdas=crossfit_alphas(state, spec), mode=spec.vote,
                              calibrate=spec.calibrate)


def crossfit_alphas(state: BoostState, spec: RunSpec) -> np.ndarray | None:
    """lambda_m for cross-fitting: the training ones when they came from the weighted training error,
    None (refit on each half) when they came from validation data."""
    if not spec.lambdas_from_validation:
        return np.array([m.lambda_ for m in state.members])
    return None


def rule_figures(rule: str, state: BoostState, data: ImageDataset, spec: RunSpec) -> dict:
    """One combination rule over this run's members: cross-fitted validation and test figures."""
    val_p, test_p = np.stack(state.val_proba), np.stack(state.test_proba)
    lambdas = np.array([m.lambda_ for m in state.members])
    fitted = fit_combination(rule, val_p, data.val.labels, num_classes=data.num_classes, lambdas=lambdas,
                             mode=spec.vote, calibrate=spec.calibrate)
    oof = crossfit_proba(rule, val_p, data.val.labels, num_classes=data.num_classes,
                         lambdas=crossfit_alphas(state, spec), mode=spec.vote, calibrate=spec.calibrate)
    return {"weights": fitted.weights.tolist(), "temperature": fitted.temperature,
            "val_crossfit": scores(oof, data.val.labels),
            "test": scores(fitted.predict_proba(test_p, spec.vote), data.test.labels)}


def build_metrics(state: BoostState, data: ImageDataset, spec: RunSpec, choice: Choice) -> dict:
    """metrics.json: per member and ensemble figures (lambda, errors, accuracy, NLL, ECE, staged accuracy,
    disagreement, effective sample size), for the deployed combination (members of weight 0 left out),
    every other combination rule's figures over the same members, and the regime diagnostics."""
    k, combination = data.num_classes, choice.combination
    keep = combination.weights > 0
    splits = {}
    for name, split, proba in (("val", data.val, state.val_proba), ("test", data.test, state.test_proba)):
        member_p = np.stack(proba)[keep]
        report = ensemble_report(member_p, combination.weights[keep], split.labels, k, spec.vote, combination.temperature)
        uncalibrated = vote(member_p, combination.weights[keep], spec.vote)
        report["uncalibrated"] = {"nll": nll(uncalibrated, split.labels), "ece": expected_calibration_error(uncalibrated, split.labels)}
        report["per_class_accuracy"] = per_class_accuracy(uncalibrated, split.labels, k).tolist()
        single = state.last_val_proba if name == "val" else state.last_test_proba
        report["single_accuracy"] = accuracy(single, split.labels)  # the final network alone
        splits[name] = report
    rule = rule_figures(choice.rule, state, data, spec)
    method = spec.method
    members = [{**m.to_json(), "weight": float(w)} for m, w in zip(state.members, combination.weights)]
    return {
        "method": spec.method.name,
        "method_axes": method.describe(),
        "cost": method.total_epochs / method.epochs,  # training epochs over the budget E: deep full is M
        "dataset": spec.dataset,
        "model": spec.model,
        "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "shipped": {"rule": choice.rule, "members": int((combination.weights > 0).sum()), "reason": choice.reason},
        "diagnostics": diagnostics(np.stack(state.val_proba), data.val.labels,
                                   accuracy(state.last_val_proba, data.val.labels), state.probe_val_accuracy),
        "members": members,
        "temperature": combination.temperature,
        "ess": state.ess,
        "train_imbalance": imbalance(np.asarray(data.train.labels)),  # largest class / smallest, in the training split
        "rank_weight_digests": state.rank_digests,
        "error_pass_bytes": state.error_pass_bytes,  # per re-weighting round, all-reduced by each rank: N bytes
        "val": splits["val"],
        "val_crossfit": rule["val_crossfit"],
        "test": splits["test"],
        "combinations": {r: rule_figures(r, state, data, spec) for r in COMBINATIONS} if len(members) > 1 else {},
        "epochs": state.epoch_log,
        "train_seconds": state.train_seconds,
        "resumed_at_rounds": state.resumed_at_rounds,
        "rank_nodes": state.placements[-1] if state.placements else [],  # Ray node id of each rank, last worker group
        "rank_nodes_history": state.placements,  # one entry per worker group (a restart after a failure adds one)
        **({"stream": stream_figures(state, data, spec)} if data.streamed else {}),
    }


def stream_figures(state: BoostState, data: ImageDataset, spec: RunSpec) -> dict:
    """How a --stream run read its training split: its groups (Parquet row groups or groups of files), the
    shuffle window, and the most groups rank 0 held at once."""
    sizes = data.train.chunk_sizes().tolist()
    row_bytes = int(np.prod(data.input_shape))
    return {"groups": sum(1 for s in sizes if s), "window": spec.stream_window,
            "largest_group_bytes": max(sizes) * row_bytes, "train_bytes": len(data.train) * row_bytes,
            "peak_groups_held": state.peak_chunks_held}


SAMPLE_WEIGHTS_FILE = "sample_weights.parquet"
SAMPLE_WEIGHTS_GROUP_ROWS = 1 << 16  # rows per row group of sample_weights.parquet


def write_sample_weights(path: str, state: BoostState, data: ImageDataset) -> None:
    """One row per training sample: its index, label and the weight it had in each round. ``path`` may be
    a storage URI: rank 0 of a run on Ray writes it beside the checkpoints, so that the result the driver
    receives carries no per-sample arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(data.train)
    index_type = np.int32 if n < 2**31 else np.int64
    rows = SAMPLE_WEIGHTS_GROUP_ROWS
    fs, fs_path = storage.filesystem(path)
    fs.create_dir(fs_path.rpartition("/")[0], recursive=True)
    writer = None
    # Written a row group at a time, so that no process holds an Arrow copy of the whole table (24 bytes a
    # sample at two rounds) beside the state. No dictionary encoding for the weights (distinct floats: its
    # hash tables would cost more than the column).
    for start in range(0, max(n, 1), rows):
        stop = min(n, start + rows)
        labels = np.asarray(data.train.labels[start:stop])  # a streamed split's may be narrower: at least 4 bytes here
        columns = {"index": np.arange(start, stop, dtype=index_type),
                   "label": labels.astype(np.promote_types(labels.dtype, np.int32))}
        for r, w in enumerate(state.weights_history):
            columns[f"round_{r + 1}"] = w[start:stop]
        columns["final"] = state.weights[start:stop].astype(np.float32)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(fs_path, table.schema, filesystem=fs, use_dictionary=["label"])
        writer.write_table(table, row_group_size=rows)
    writer.close()
    pa.default_memory_pool().release_unused()


def copy_sample_weights(source: str, folder: str) -> None:
    """A sample-weights file written elsewhere (by rank 0, at a path or URI) into the run's ``folder``,
    streamed: the driver never holds the per-sample weights."""
    import pyarrow.fs

    fs, fs_path = storage.filesystem(source)
    pyarrow.fs.copy_files(fs_path, os.path.join(folder, SAMPLE_WEIGHTS_FILE), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())


def manifest_fields(name: str, spec: RunSpec, data: ImageDataset, choice: Choice) -> dict:
    """What the ensemble's manifest says about the run besides its members."""
    return {
        "name": name,
        "method": spec.method.name,
        "method_axes": spec.method.describe(),
        # what every process that loads a member calls: the name (built-in or import path) with the user's
        # keyword arguments, told the classes and the input shape (models.build_model); no code is saved
        "model": {"name": spec.model, "kwargs": dict(spec.model_kwargs), "num_classes": data.num_classes,
                  "input_shape": list(data.input_shape)},
        "input_shape": list(data.input_shape),
        "input_kind": data.kind,
        "normalization": {"scale": data.scale, "mean": data.mean, "std": data.std},
        "classes": data.classes,
        "vote": spec.vote,
        "temperature": choice.combination.temperature,
        "dataset": spec.dataset,
    }


def assemble(folder: str, state: BoostState, data: ImageDataset, spec: RunSpec, *, name: str, options: dict,
             extra_metrics: dict, sample_weights: str | None = None) -> dict:
    """Write every file of the run directory into ``folder``; returns the metrics. ``sample_weights``: the
    file already written from the final state (else it is written here from ``state``)."""
    choice = combine_members(state, data, spec)
    weights = choice.combination.weights
    kept = [i for i, w in enumerate(weights) if w > 0]
    write_ensemble(
        os.path.join(folder, "ensemble"),
        member_states=[state.member_states[i] for i in kept],
        member_info=[{"weight": float(weights[i]), "lambda": m.lambda_, "epoch": m.epoch, "round": m.round,
                      "error": None if np.isnan(m.error) else m.error}
                     for i, m in ((i, state.members[i]) for i in kept)],
        manifest=manifest_fields(name, spec, data, choice),
    )
    metrics = {**build_metrics(state, data, spec, choice), **extra_metrics}
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(options, f, sort_keys=False)
    if sample_weights is None:
        write_sample_weights(os.path.join(folder, SAMPLE_WEIGHTS_FILE), state, data)
    else:
        copy_sample_weights(sample_weights, folder)
    return metrics


def write_run_directory(run_dir: str, state: BoostState, data: ImageDataset, spec: RunSpec, *, name: str,
                        options: dict, extra_metrics: dict | None = None, sample_weights: str | None = None) -> dict:
    """Write the run directory ``run_dir`` (a path or a storage URI) so that it appears whole or not at
    all. ``options``: the resolved options saved as config.yaml; ``extra_metrics``: figures the caller
    measured (wall time, start-up timing) added to metrics.json; ``sample_weights``: see ``assemble``."""
    remote = storage.is_uri(run_dir)
    parent = tempfile.mkdtemp(prefix="boostray-run-") if remote else os.path.dirname(run_dir)
    tmp = os.path.join(parent, f".{os.path.basename(run_dir.partition('?')[0].rstrip('/'))}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        metrics = assemble(tmp, state, data, spec, name=name, options=options, extra_metrics=extra_metrics or {},
                           sample_weights=sample_weights)
        if remote:
            storage.upload_run(tmp, run_dir)
        else:
            os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if remote:
            shutil.rmtree(parent, ignore_errors=True)
    return metrics
