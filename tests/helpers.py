"""Small real data sets written to disk by the tests themselves."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_images(n: int, classes: int = 3, size: int = 8, channels: int = 1, seed: int = 0):
    """Class c is a bright c-th horizontal band plus noise: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, (n, size, size, channels), dtype=np.uint8)
    band = size // classes
    for i, c in enumerate(labels):
        images[i, c * band:(c + 1) * band] = 220
    return images, labels


def write_parquet_split(path: str, images: np.ndarray, labels, as_png: bool = True) -> None:
    if as_png:
        col = pa.array([{"bytes": png_bytes(im.squeeze(-1) if im.shape[-1] == 1 else im), "path": None} for im in images])
    else:
        col = pa.array([im.reshape(-1).astype(float).tolist() for im in images])
    pq.write_table(pa.table({"image": col, "label": pa.array(list(labels), pa.int64())}), path)


def write_parquet_dataset(folder: str, n_train: int = 60, n_test: int = 30, **kw) -> str:
    os.makedirs(folder, exist_ok=True)
    images, labels = synthetic_images(n_train + n_test, **{k: v for k, v in kw.items() if k != "as_png"})
    write_parquet_split(os.path.join(folder, "train-00000-of-00001.parquet"), images[:n_train], labels[:n_train], kw.get("as_png", True))
    write_parquet_split(os.path.join(folder, "test-00000-of-00001.parquet"), images[n_train:], labels[n_train:], kw.get("as_png", True))
    return folder


def train_digits_run(out, name: str, *options: str) -> str:
    """A real run directory: `boostray train` on digits in this process (no Ray), 4 epochs."""
    from boostray.cli import main

    assert main(["train", "--workers", "0", "--epochs", "4", *options, "--output", str(out), "--name", name]) == 0
    return os.path.join(str(out), name)


class Crash(Exception):
    """Raised by crash_after_round: a run that dies between rounds."""


def crash_after_round(config, data, checkpoint_dir: str, round_number: int) -> None:
    """train_in_process with checkpoints in ``checkpoint_dir``, dying right after ``round_number``."""
    import pytest

    from boostray.core.method.engine import train_in_process

    def crash(metrics, state):
        if state.rounds_done == round_number:
            raise Crash

    with pytest.raises(Crash):
        train_in_process(config.spec(), data, checkpoint_dir=checkpoint_dir, on_round=crash)
