"""A Parquet training split that stays on disk: read one row group at a time, never whole.

``--stream`` is for training data larger than a node's memory. The driver reads only the ``label``
column and the Parquet metadata; the images are decoded a row group at a time, by the driver once (to
validate them and count pixel statistics) and by every rank while it trains. A row group is a *chunk*:
each epoch deals the chunks to the ranks in a seeded order and shuffles samples within a window of a few
chunks (batches.py, ``chunked_epoch_order``), so a rank holds a window's worth of images at a time. Every
sample keeps its index in the training split (``rows`` maps it to its row in the files), so the sample
weights stay keyed to samples exactly as in memory.

The validation and test splits are held in memory. The files must be at the same path on every node
(a shared file system); storage URIs are not read yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from boostray.errors import DataError


@dataclass
class ParquetSource:
    """The row groups of a set of Parquet files: where each one starts in the global row order."""

    files: list[str]
    image_column: str
    group_file: np.ndarray  # file index of each row group
    group_index: np.ndarray  # its index inside that file
    group_start: np.ndarray  # global row of each group's first row; one extra entry: the total
    unit_scale: bool | None = None  # numeric pixels given in [0, 1] (decided once, from the first group)
    _open: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, files: list[str], where: str) -> tuple["ParquetSource", np.ndarray, list[str] | None]:
        """The source, its labels (the only column read whole) and the class names it declares."""
        from boostray.core.data import decode_image_column, parquet_class_names, parquet_image_column, parquet_labels

        group_file, group_index, sizes, labels = [], [], [], []
        schema = None
        for i, path in enumerate(files):
            try:
                pf = _parquet_file(path)
                part = pf.read(columns=["label"]) if "label" in pf.schema_arrow.names else pf.read(columns=[])
            except Exception as exc:  # pyarrow raises several types for unreadable files
                raise DataError(f"cannot read {where} parquet file {path}: {exc}") from None
            schema = schema or pf.schema_arrow
            labels.append(parquet_labels(part, f"{where} ({path})"))
            for g in range(pf.metadata.num_row_groups):
                group_file.append(i)
                group_index.append(g)
                sizes.append(pf.metadata.row_group(g).num_rows)
        image_column = parquet_image_column(schema.names, where)
        source = cls(list(files), image_column, np.array(group_file), np.array(group_index),
                     np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        first = next(g for g, s in enumerate(sizes) if s)
        table = source._read_table(first)
        col = table.column(image_column)
        if not _is_struct(col):
            values = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            source.unit_scale = bool(values.size and values.max() <= 1)
        decode_image_column(col, where, source.unit_scale)  # fails here on an undecodable first group
        return source, np.concatenate(labels), parquet_class_names(schema)

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_open": {}}

    @property
    def num_groups(self) -> int:
        return len(self.group_file)

    def _read_table(self, g: int):
        path = self.files[int(self.group_file[g])]
        if path not in self._open:
            self._open[path] = _parquet_file(path)
        return self._open[path].read_row_group(int(self.group_index[g]), columns=[self.image_column])

    def read_group(self, g: int) -> np.ndarray:
        """Row group ``g``'s images, uint8 (rows, C, H, W)."""
        from boostray.core.data import decode_image_column

        where = f"{self.files[int(self.group_file[g])]} row group {int(self.group_index[g])}"
        return decode_image_column(self._read_table(g).column(self.image_column), where, self.unit_scale)


def _is_struct(col) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(col.type)


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


@dataclass
class StreamedSplit:
    """A split of a ``ParquetSource``: sample i is global row ``rows[i]`` (sorted) with ``labels[i]``."""

    source: ParquetSource
    rows: np.ndarray
    labels: np.ndarray
    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "StreamedSplit":
        index = np.asarray(index)
        if index.size > 1 and not (np.diff(index) > 0).all():
            raise ValueError("a streamed split keeps its samples in file order: subset with sorted indices")
        return StreamedSplit(self.source, self.rows[index], self.labels[index], self.image_shape)

    def chunks(self) -> list[np.ndarray]:
        """Per row group, the indices of this split's samples in it (empty where it has none)."""
        bounds = np.searchsorted(self.rows, self.source.group_start)
        return [np.arange(bounds[g], bounds[g + 1]) for g in range(self.source.num_groups)]

    def read_chunk(self, j: int) -> np.ndarray:
        """The images of chunk ``j``'s samples, in index order."""
        start, end = self.source.group_start[j], self.source.group_start[j + 1]
        lo, hi = np.searchsorted(self.rows, [start, end])
        images = self.source.read_group(j)
        if images.shape[1:] != self.image_shape:
            raise DataError(f"mismatched image shapes: row group {j} holds {images.shape[1:]}, "
                            f"the first holds {self.image_shape}")
        return images[self.rows[lo:hi] - start]

    def take(self, index: np.ndarray) -> np.ndarray:
        """The images of samples ``index`` (any order), reading only the row groups that hold them."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((index.size, *self.image_shape), dtype=np.uint8)
        group = np.searchsorted(self.source.group_start, self.rows[index], side="right") - 1
        chunk_starts = np.searchsorted(self.rows, self.source.group_start)
        for g in np.unique(group):
            where = group == g
            out[where] = self.read_chunk(int(g))[index[where] - chunk_starts[g]]
        return out

    def scan(self) -> np.ndarray:
        """One pass over every chunk: per-channel pixel histograms (C, 256). Decoding every row group
        here makes bad images fail on the driver, before any worker starts."""
        from boostray.core.data import pixel_histogram

        hist = np.zeros((self.image_shape[0], 256), dtype=np.int64)
        for j, idx in enumerate(self.chunks()):
            if idx.size:
                hist += pixel_histogram(self.read_chunk(j))
        return hist

    def materialize(self) -> "ImageSplit":
        """The split in memory, keeping its chunks: trained from, it gives a streamed run's batches."""
        from boostray.core.data import ImageSplit

        return ImageSplit(self.take(np.arange(len(self))), self.labels, chunked=self.chunks())


def open_parquet_train(files: list[str]) -> tuple[StreamedSplit, list[str] | None]:
    """The training split of ``files``, streamed: labels in memory, images on disk."""
    source, labels, names = ParquetSource.open(files, "train")
    first = next(g for g in range(source.num_groups) if source.group_start[g + 1] > source.group_start[g])
    shape = tuple(int(s) for s in source.read_group(first).shape[1:])
    return StreamedSplit(source, np.arange(len(labels), dtype=np.int64), labels, shape), names  # type: ignore[arg-type]
