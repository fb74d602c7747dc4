"""The training samples with the largest final boosting weights: the examples the ensemble found
hardest (with real data, often mislabeled ones), as a table and a PNG grid."""

from __future__ import annotations

import csv
import os

import numpy as np

from boostray.config import TrainConfig, read_config_file
from boostray.core.artifact import storage
from boostray.core.data.datasets import load_training_data
from boostray.core.artifact.ensemble import load_ensemble
from boostray.errors import ArtifactError, ConfigError


def hardest_samples(run_dir: str, top: int) -> tuple[list[dict], np.ndarray]:
    import pyarrow.parquet as pq

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    run_dir = storage.local_copy(run_dir)  # a run at a storage URI: its local copy
    weights_path = os.path.join(run_dir, "sample_weights.parquet")
    config_path = os.path.join(run_dir, "config.yaml")
    for path in (weights_path, config_path):
        if not os.path.isfile(path):
            raise ArtifactError(f"{path} is missing: not a finished run directory")
    ensemble = load_ensemble(run_dir)
    table = pq.read_table(weights_path, columns=["index", "label", "final"]).to_pydict()
    data = load_training_data(TrainConfig(**read_config_file(config_path)))
    if len(data.train) != len(table["index"]):
        raise ArtifactError(f"the run's training split had {len(table['index'])} samples, the data set now gives {len(data.train)}")
    final = np.asarray(table["final"], dtype=np.float64)
    order = np.argsort(-final, kind="stable")[:top]
    rows_images = data.train.take(order)  # a streamed split reads only the row groups that hold them
    proba = ensemble.predict_proba(rows_images)
    n = final.size
    rows = []
    for rank, (i, p) in enumerate(zip(order, proba), 1):
        label, pred = int(data.train.labels[i]), int(p.argmax())
        rows.append({"rank": rank, "index": int(i), "weight_x_n": float(final[i] * n), "label": label,
                     "label_name": data.classes[label], "predicted": pred, "predicted_name": data.classes[pred],
                     "p_label": float(p[label]), "p_predicted": float(p[pred])})
    return rows, rows_images


def write_inspection(rows: list[dict], images: np.ndarray, out_dir: str) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    csv_path, png_path = os.path.join(out_dir, "hardest.csv"), os.path.join(out_dir, "hardest.png")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = min(8, len(rows))
    lines = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(1.8 * cols, 2.1 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row, img in zip(axes.ravel(), rows, images):
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray" if img.shape[0] == 1 else None)
        ax.set_title(f"#{row['rank']} w={row['weight_x_n']:.1f}\nlabel {row['label_name'][:10]}\npred {row['predicted_name'][:10]}",
                     fontsize=7, color="black" if row["label"] == row["predicted"] else "red")
    fig.suptitle("Largest final boosting weights (n·w; red: the ensemble disagrees with the label)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
