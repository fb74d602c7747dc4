"""Batch inference over a Parquet data set with Ray Data: images decoded by CPU tasks, then scored by
an actor pool of ensemble predictors (on GPUs with ``--gpu``), which so spend their time on the forward.

Input: Parquet files with an id column and an ``image`` column (struct with PNG/JPEG ``bytes``, as
Hugging Face exports) or a numeric list column of C*H*W raw pixel values. Output: a Parquet folder with
the id, the predicted label and class name, and the probabilities. Input and output may be local paths
or storage URIs (``s3://``, ``gs://``, ``file://``): every node reads and writes them itself.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from boostray.core.artifact import storage
from boostray.core.artifact.ensemble import load_ensemble, read_manifest
from boostray.core.data.images import decode_image
from boostray.core.artifact.inference import MemberStack, predict_in_chunks
from boostray.errors import DataError

PIXELS = "pixels"  # the column the decode stage hands to the predictors
SUCCESS_MARKER = "_SUCCESS"  # written last into an output at a URI, where no rename publishes a folder whole


def decode_pixels(batch: dict[str, Any], *, id_column: str, image_column: str,
                  shape: tuple[int, ...]) -> dict[str, Any]:
    """A batch's inputs shaped (N, *shape): images decoded (uint8), or numbers as given: the CPU stage."""
    column = batch[image_column]
    if isinstance(column[0], dict):
        if len(shape) != 3:
            raise DataError(f"the ensemble takes numbers shaped {shape}, not encoded images")
        c, h, w = shape
        out = np.empty((len(column), c, h, w), dtype=np.uint8)
        for i, item in enumerate(column):
            im = decode_image(item["bytes"], f"input {i}", (h, w))  # fitted as a served image is
            out[i] = im if im.shape[0] == c else np.repeat(im[:1], c, axis=0)
    else:
        out = np.stack([np.asarray(v, dtype=np.float32) for v in column])
        size = int(np.prod(shape))
        if out.shape[1:] != (size,) and out.shape[1:] != tuple(shape):
            raise DataError(f"input rows have {out.shape[1:]} values, the ensemble expects {size}")
        out = out.reshape(-1, *shape)
    return {id_column: np.asarray(batch[id_column]), PIXELS: out}


class EnsemblePredictor:
    """One per actor: loads the ensemble once, then predicts batch after batch of decoded pixels."""

    def __init__(self, run_dir: str, id_column: str, use_gpu: bool, cascade: bool, batch_size: int) -> None:
        import torch

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("this actor was given a GPU, but torch finds no CUDA device")
        self.ensemble = load_ensemble(run_dir, device="cuda" if use_gpu else "cpu")
        self.stack = MemberStack(self.ensemble)
        self.id_column, self.cascade, self.batch_size = id_column, cascade, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        proba, used = predict_in_chunks(self.stack, batch[PIXELS], self.batch_size, cascade=self.cascade)
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
    import pyarrow.fs
    import pyarrow.parquet as pq

    read_manifest(run_dir)
    fs, path = storage.filesystem(input_path)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.NotFound:
        raise DataError(f"input {input_path} does not exist")
    try:
        schema = (pq.read_schema(path, filesystem=fs) if kind == pyarrow.fs.FileType.File
                  else pq.ParquetDataset(path, filesystem=fs).schema)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"cannot read {input_path} as Parquet: {exc}") from None
    for col in (id_column, image_column):
        if col not in schema.names:
            raise DataError(f"input has no {col!r} column (columns: {schema.names})")
    if storage.exists(output_path):
        raise DataError(f"output {output_path} already exists")


def prediction_dataset(run_dir: str, input_path: str, *, id_column: str = "id", image_column: str = "image",
                       batch_size: int = 256, actors: int = 1, gpu: bool = False, cascade: bool = False,
                       cpus_per_actor: float = 1.0):
    """The Ray Data pipeline, not yet run: read, decode (CPU tasks), predict (the actor pool). Ray Data
    may fuse two stages only where their resources match, so never the decoding into GPU actors."""
    import ray

    _, manifest = read_manifest(run_dir)
    in_fs, in_path = storage.filesystem(input_path)
    ds = ray.data.read_parquet(in_path, filesystem=in_fs).select_columns([id_column, image_column])
    pixels = ds.map_batches(decode_pixels, batch_size=batch_size, batch_format="numpy", fn_kwargs={
        "id_column": id_column, "image_column": image_column, "shape": tuple(manifest["input_shape"])})
    return pixels.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={"run_dir": run_dir if storage.is_uri(run_dir) else os.path.abspath(run_dir),
                               "id_column": id_column, "use_gpu": gpu, "cascade": cascade, "batch_size": batch_size},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0, num_cpus=cpus_per_actor,
    )


def predict_parquet(run_dir: str, input_path: str, output_path: str, *, id_column: str = "id",
                    image_column: str = "image", **options: Any) -> int:
    """Score every row of ``input_path``; writes ``output_path`` (a Parquet folder), never half: a local
    folder appears by rename, one at a URI gets its _SUCCESS marker last and is removed on failure.
    ``options``: those of prediction_dataset. Returns the rows written."""
    import pyarrow.fs

    check_predict_inputs(run_dir, input_path, output_path, id_column, image_column)
    predictions = prediction_dataset(run_dir, input_path, id_column=id_column, image_column=image_column, **options)
    out_fs, out_path = storage.filesystem(output_path)
    target = out_path if storage.is_uri(output_path) else f"{out_path}.partial-{os.getpid()}"
    try:
        predictions.write_parquet(target, filesystem=out_fs)
        rows = _count_rows(out_fs, target)
        if storage.is_uri(output_path):
            with out_fs.open_output_stream(f"{target}/{SUCCESS_MARKER}") as f:
                f.write(f"{rows}\n".encode())
        else:
            os.rename(target, out_path)
    except BaseException:
        if out_fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
            out_fs.delete_dir(target)
        raise
    return rows


def _count_rows(fs, folder: str) -> int:
    """Rows of the Parquet files under ``folder``, from their footers."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    rows = 0
    for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True)):
        if info.path.endswith(".parquet"):
            with fs.open_input_file(info.path) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
    return rows
