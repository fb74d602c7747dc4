"""Batch inference over a Parquet data set with Ray Data: an actor pool of ensemble predictors.

Input: Parquet files with an id column and an ``image`` column (struct with PNG/JPEG ``bytes``, as
Hugging Face exports) or a numeric list column of C*H*W raw pixel values. Output: a Parquet folder with
the id, the predicted label and class name, and the probabilities.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from boostray.core import storage
from boostray.core.ensemble import load_ensemble, read_manifest
from boostray.core.images import decode_image
from boostray.core.inference import MemberStack, cascade_predict
from boostray.errors import DataError


class EnsemblePredictor:
    """One per actor: loads the ensemble once, then predicts batch after batch."""

    def __init__(self, run_dir: str, id_column: str, image_column: str, use_gpu: bool, cascade: bool) -> None:
        import torch

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("this actor was given a GPU, but torch finds no CUDA device")
        device = "cuda" if use_gpu else "cpu"
        self.ensemble = load_ensemble(run_dir, device=device)
        self.stack = MemberStack(self.ensemble)
        self.shape = tuple(self.ensemble.manifest["input_shape"])
        self.id_column, self.image_column, self.cascade = id_column, image_column, cascade

    def _pixels(self, column: Any) -> np.ndarray:
        c, h, w = self.shape
        first = column[0]
        if isinstance(first, dict):
            images = [decode_image(item["bytes"], "input") for item in column]
            out = np.empty((len(images), c, h, w), dtype=np.float32)
            for i, im in enumerate(images):
                if im.shape[1:] != (h, w):
                    raise DataError(f"input image {i} is {im.shape[1:]}, the ensemble expects {(h, w)}")
                out[i] = im if im.shape[0] == c else np.repeat(im[:1], c, axis=0)
            return out
        arr = np.stack([np.asarray(v, dtype=np.float32) for v in column])
        if arr.shape[1:] != (c * h * w,) and arr.shape[1:] != (c, h, w):
            raise DataError(f"input rows have {arr.shape[1:]} values, the ensemble expects {c * h * w}")
        return arr.reshape(-1, c, h, w)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = self._pixels(batch[self.image_column])
        if self.cascade:
            result = cascade_predict(self.stack, x)
            proba, used = result.proba, result.members_used
        else:
            proba, used = self.stack.predict_proba(x), None
        labels = proba.argmax(1)
        out = {
            self.id_column: np.asarray(batch[self.id_column]),
            "label": labels.astype(np.int64),
            "class_name": np.array([self.ensemble.classes[i] for i in labels]),
            "probabilities": list(proba.astype(np.float32)),
        }
        if used is not None:
            out["members_used"] = used
        return out


def check_predict_inputs(run_dir: str, input_path: str, output_path: str, id_column: str, image_column: str) -> None:
    """Everything that can be checked before Ray starts."""
    import pyarrow.parquet as pq

    read_manifest(run_dir)
    if not os.path.exists(input_path):
        raise DataError(f"input {input_path} does not exist")
    try:
        schema = pq.read_schema(input_path) if os.path.isfile(input_path) else pq.ParquetDataset(input_path).schema
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"cannot read {input_path} as Parquet: {exc}") from None
    for col in (id_column, image_column):
        if col not in schema.names:
            raise DataError(f"input has no {col!r} column (columns: {schema.names})")
    if os.path.exists(output_path):
        raise DataError(f"output {output_path} already exists")


def predict_parquet(
    run_dir: str, input_path: str, output_path: str, *, id_column: str = "id", image_column: str = "image",
    batch_size: int = 256, actors: int = 1, gpu: bool = False, cascade: bool = False, cpus_per_actor: float = 1.0,
) -> int:
    """Score every row of ``input_path``; writes ``output_path`` (a Parquet folder). Returns rows written."""
    import pyarrow.parquet as pq
    import ray

    check_predict_inputs(run_dir, input_path, output_path, id_column, image_column)
    tmp = f"{output_path}.partial-{os.getpid()}"
    ds = ray.data.read_parquet(input_path, columns=[id_column, image_column])
    predictions = ds.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={"run_dir": run_dir if storage.is_uri(run_dir) else os.path.abspath(run_dir), "id_column": id_column,
                               "image_column": image_column, "use_gpu": gpu, "cascade": cascade},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0,
        num_cpus=cpus_per_actor,
    )
    try:
        predictions.write_parquet(tmp)
        rows = pq.ParquetDataset(tmp).read(columns=[id_column]).num_rows
        os.rename(tmp, output_path)  # never a half-written output under the requested name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows
