"""A training split that stays on disk: Parquet row groups, or groups of image files, read one at a time.

``--stream`` is for training data larger than a node's memory. For Parquet the driver reads only the
``label`` column and the file metadata; for an image folder, the file names. The images are decoded a
group at a time, by the driver once (to validate them and count pixel statistics) and by every rank while
it trains. A group is a *chunk*: each epoch deals the chunks to the ranks in a seeded order and shuffles
samples within a window of a few chunks (batches.py, ``chunked_epoch_order``), so a rank holds a few
windows' worth of images at a time. Every sample keeps its index in the training split (``rows`` maps
it to its row in the files), so the sample weights stay keyed to samples exactly as in memory.

The validation and test splits are held in memory. Files are read through a pyarrow filesystem, so the
folder may be a local path every node mounts or a storage URI (``s3://``, ``gs://``, ``file://``).

On Ray (``--workers`` 1 or more) the groups are read and decoded by Ray Data tasks on any node
(distributed/ingest.py): each group is an *item* (``StreamedSplit.items``) that names its rows and sample
indices in a few bytes, and ``read_item`` turns one into images. Without Ray a rank reads them itself
(batches.py's ``ChunkedBatches``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from boostray.core.data.images import (
    SIZE_HINT, SPLIT_SEED, ImageSplit, decode_image, decode_image_column, parquet_class_names, parquet_image_column,
    parquet_labels, pixel_histogram,
)
from boostray.errors import DataError

FILES_PER_GROUP = 256  # an image folder's files per group: what a streamed rank reads at once
SAMPLE_IMAGES = 10_000  # the pixel statistics of a streamed split come from a sample of about this many


def local_filesystem():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def read_bytes(filesystem, path: str) -> bytes:
    """A whole file, through ``filesystem`` (local or a storage URI's)."""
    with filesystem.open_input_file(path) as f:
        return f.read()


@dataclass
class ParquetSource:
    """The row groups of a set of Parquet files: where each one starts in the global row order."""

    files: list[str]
    image_column: str
    group_file: np.ndarray  # file index of each row group
    group_index: np.ndarray  # its index inside that file
    group_start: np.ndarray  # global row of each group's first row; one extra entry: the total
    unit_scale: bool | None = None  # numeric pixels given in [0, 1] (decided once, from the first group)
    filesystem: object = None  # pyarrow filesystem the paths are in (None: local)
    image_size: int | None = None  # every image fitted to image_size x image_size (--image-size)
    _open: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, files: list[str], where: str, filesystem=None,
             image_size: int | None = None) -> tuple["ParquetSource", np.ndarray, list[str] | None]:
        """The source, its labels (the only column read whole) and the class names it declares."""

        group_file, group_index, sizes, labels = [], [], [], []
        schema = None
        for i, path in enumerate(files):
            try:
                pf = _parquet_file(path, filesystem)
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
                     np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), filesystem=filesystem,
                     image_size=image_size)
        first = next(g for g, s in enumerate(sizes) if s)
        table = source._read_table(first)
        col = table.column(image_column)
        if not _is_struct(col):
            values = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            source.unit_scale = bool(values.size and values.max() <= 1)
        decode_image_column(col, where, source.unit_scale, image_size)  # fails here on an undecodable first group
        return source, np.concatenate(labels), parquet_class_names(schema)

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_open": {}}

    @property
    def num_groups(self) -> int:
        return len(self.group_file)

    def groups_of(self, rows: np.ndarray) -> np.ndarray:
        """The row group of each of ``rows`` (a search over the groups' starts: no vector per row)."""
        return np.searchsorted(self.group_start, rows, side="right") - 1

    def read_rows(self, g: int, rows: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Rows ``rows`` (ascending, all in row group ``g``) of the images (``rng``: see read_group)."""
        return self.read_group(g, rng)[rows - self.group_start[g]]

    def _read_table(self, g: int):
        path = self.files[int(self.group_file[g])]
        if path not in self._open:
            self._open[path] = _parquet_file(path, self.filesystem)
        return self._open[path].read_row_group(int(self.group_index[g]), columns=[self.image_column])

    def read_group(self, g: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Row group ``g``'s images, uint8 (rows, C, H, W); with --image-size and ``rng``, random resized
        crops (images.crop_box)."""

        where = f"{self.files[int(self.group_file[g])]} row group {int(self.group_index[g])}"
        return decode_image_column(self._read_table(g).column(self.image_column), where, self.unit_scale,
                                   self.image_size, rng)


def _is_struct(col) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(col.type)


def _parquet_file(path: str, filesystem=None):
    import pyarrow.parquet as pq

    if filesystem is None:
        return pq.ParquetFile(path)
    return pq.ParquetFile(filesystem.open_input_file(path))


@dataclass
class ImageFileSource:
    """Image files (an image folder's train/ tree) in groups of ``FILES_PER_GROUP``. The files stay in
    the folder's (class-sorted) order, which is what sample indices refer to; the groups are drawn from a
    fixed permutation of them, so every group mixes the classes as a shuffled Parquet row group does."""

    files: list[str]
    channels: int  # of the first image: grey images become RGB where it is RGB
    group_of: np.ndarray  # group of each file
    filesystem: object = None  # pyarrow filesystem the paths are in (None: local)
    image_size: int | None = None  # every image fitted to image_size x image_size (--image-size)

    @classmethod
    def create(cls, files: list[str], channels: int, per_group: int, filesystem=None,
               image_size: int | None = None) -> "ImageFileSource":

        perm = np.random.default_rng(SPLIT_SEED).permutation(len(files))
        group_of = np.empty(len(files), dtype=np.int64)
        group_of[perm] = np.arange(len(files)) // per_group
        return cls(list(files), channels, group_of, filesystem, image_size)

    def without_listing(self) -> "ImageFileSource":
        """This source less its file list (which a Ray Data item carries for its own files instead)."""
        return ImageFileSource([], self.channels, np.zeros(0, dtype=np.int64), self.filesystem, self.image_size)

    @property
    def num_groups(self) -> int:
        return int(self.group_of.max()) + 1 if self.group_of.size else 0

    def groups_of(self, rows: np.ndarray) -> np.ndarray:
        return self.group_of[rows]

    def read_rows(self, g: int, rows: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.read_paths([self.files[int(r)] for r in rows], rng)

    def read_paths(self, paths: list[str], rng: np.random.Generator | None = None) -> np.ndarray:
        """The images of ``paths``, decoded, with this folder's channels, as one uint8 (N, C, H, W); with
        --image-size fitted to it (random resized crops with ``rng``)."""
        fs = self.filesystem or local_filesystem()
        images = []
        for path in paths:
            im = decode_image(read_bytes(fs, path), path, self.image_size, rng)
            if im.shape[0] != self.channels:
                if im.shape[0] > self.channels:
                    raise DataError(f"{path} is RGB but the first image of the folder is grey: a streamed folder takes "
                                    "its channels from its first image")
                im = np.repeat(im, self.channels, axis=0)
            images.append(im)
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataError(f"mismatched image shapes in the train split: {sorted(shapes)[:2]}{SIZE_HINT}")
        return np.stack(images) if images else np.zeros((0, self.channels, 1, 1), dtype=np.uint8)


@dataclass
class StreamedSplit:
    """A split of a source (Parquet row groups, or groups of image files): sample i is the source's row
    ``rows[i]`` (sorted) with ``labels[i]``; a chunk is the split's samples in one of the source's groups."""

    source: ParquetSource | ImageFileSource
    rows: np.ndarray
    labels: np.ndarray
    image_shape: tuple[int, int, int]
    _chunks: list | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "StreamedSplit":
        index = np.asarray(index)
        if index.size > 1 and not (np.diff(index) > 0).all():
            raise ValueError("a streamed split keeps its samples in file order: subset with sorted indices")
        return StreamedSplit(self.source, self.rows[index], self.labels[index], self.image_shape)

    def chunks(self) -> list[np.ndarray]:
        """Per source group, the indices of this split's samples in it, ascending (empty where none);
        kept for the next call (a rank reading its chunks; see ``chunk_lists`` for a one-off)."""
        if self._chunks is None:
            self._chunks = self.chunk_lists()
        return self._chunks

    def chunk_lists(self) -> list[np.ndarray]:
        """``chunks`` computed afresh and not kept (the driver needs them once, to build the items)."""
        if self._chunks is not None:
            return self._chunks
        if isinstance(self.source, ParquetSource):  # groups are runs of rows, and rows ascend: ranges
            bounds = np.searchsorted(self.rows, self.source.group_start)
            return [np.arange(bounds[g], bounds[g + 1], dtype=self.rows.dtype) for g in range(self.source.num_groups)]
        group = self.source.groups_of(self.rows)
        order = np.argsort(group, kind="stable").astype(self.rows.dtype)
        bounds = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=self.source.num_groups))])
        return [order[bounds[g]:bounds[g + 1]] for g in range(self.source.num_groups)]

    def chunk_sizes(self) -> np.ndarray:
        """How many of this split's samples each source group holds."""
        if isinstance(self.source, ParquetSource):
            return np.diff(np.searchsorted(self.rows, self.source.group_start))
        return np.bincount(self.source.groups_of(self.rows), minlength=self.source.num_groups)

    def read_chunk(self, j: int) -> np.ndarray:
        """The images of chunk ``j``'s samples, in index order."""
        images = self.source.read_rows(j, self.rows[self.chunks()[j]])
        if images.shape[1:] != self.image_shape:
            raise DataError(f"mismatched image shapes: group {j} holds {images.shape[1:]}, the first {self.image_shape}{SIZE_HINT}")
        return images

    def take(self, index: np.ndarray) -> np.ndarray:
        """The images of samples ``index`` (any order), reading only the groups that hold them."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((index.size, *self.image_shape), dtype=np.uint8)
        group = self.source.groups_of(self.rows[index])
        for g in np.unique(group):
            where = np.flatnonzero(group == g)
            wanted = np.unique(index[where])  # ascending: rows ascend with indices
            images = self.source.read_rows(int(g), self.rows[wanted])
            out[where] = images[np.searchsorted(wanted, index[where])]
        return out

    def sample_histogram(self, max_images: int = SAMPLE_IMAGES) -> np.ndarray:
        """Per-channel pixel histograms (C, 256) of a sample of this split: whole groups in a seeded order
        until about ``max_images`` images (every group, and so the exact figure, when the split is smaller).
        Reading them here also makes data that cannot be read fail on the driver, before any worker starts."""
        hist = np.zeros((self.image_shape[0], 256), dtype=np.int64)
        chunks = self.chunk_lists()
        seen = 0
        for g in np.random.default_rng(SPLIT_SEED).permutation(len(chunks)):
            if not chunks[g].size:
                continue
            images = self.source.read_rows(int(g), self.rows[chunks[g]])
            if images.shape[1:] != self.image_shape:
                raise DataError(f"mismatched image shapes: group {g} holds {images.shape[1:]}, the first {self.image_shape}{SIZE_HINT}")
            hist += pixel_histogram(images)
            seen += chunks[g].size
            if seen >= max_images:
                break
        return hist

    def items(self, rank: int = 0, world: int = 1) -> list[dict]:
        """One item per group with samples: what a Ray Data task needs to read it (``read_item``, and
        ``item_index`` for the samples' indices in this split). For a Parquet row group: the group, its
        first sample's index (a group's samples are a run of indices) and which of its rows the split
        holds, one bit a row (empty: all of them); for an image folder, the samples' indices and files.
        No labels: a rank takes them from the split it holds. With ``rank`` and ``world``, only that
        rank's share: every ``world``-th item from the ``rank``-th, built by a rank from its split, so no
        list of every item is shipped or kept."""
        out = []
        if isinstance(self.source, ParquetSource):
            bounds = np.searchsorted(self.rows, self.source.group_start)
            for j in np.flatnonzero(np.diff(bounds))[rank::world]:
                start, stop = self.source.group_start[j], self.source.group_start[j + 1]
                rows = self.rows[bounds[j]:bounds[j + 1]]
                mask = b""
                if rows.size < stop - start:
                    held = np.zeros(stop - start, dtype=bool)
                    held[rows - start] = True
                    mask = np.packbits(held).tobytes()
                out.append({"chunk": int(j), "start": int(bounds[j]), "mask": mask})
            return out
        small = np.int32 if len(self) < 2**31 else np.int64
        lists = self.chunk_lists()
        for j, idx in [(j, idx) for j, idx in enumerate(lists) if idx.size][rank::world]:
            paths = [self.source.files[int(r)] for r in self.rows[idx]]
            out.append({"chunk": int(j), "index": idx.astype(small), "path": paths})
        return out

    def materialize(self) -> "ImageSplit":
        """The split in memory, keeping its chunks: trained from, it gives a streamed run's batches."""

        return ImageSplit(self.take(np.arange(len(self))), self.labels.astype(np.int64), chunked=self.chunks())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_chunks": None}  # recomputed where needed: no need to ship it


def reader_source(source: "ParquetSource | ImageFileSource") -> "ParquetSource | ImageFileSource":
    """What a Ray Data task reads items with: the source, less what the items carry themselves."""
    return source.without_listing() if isinstance(source, ImageFileSource) else source


def item_rows(source: "ParquetSource | ImageFileSource", item: dict) -> np.ndarray:
    """The source rows a Parquet item names: listed (held-out items), or its group's rows that its mask
    holds."""
    if "row" in item:
        return np.asarray(item["row"])
    start, stop = int(source.group_start[int(item["chunk"])]), int(source.group_start[int(item["chunk"]) + 1])
    if not len(item["mask"]):
        return np.arange(start, stop)
    return start + np.flatnonzero(np.unpackbits(np.frombuffer(item["mask"], dtype=np.uint8), count=stop - start))


def item_index(source: "ParquetSource | ImageFileSource", item: dict) -> np.ndarray:
    """The indices in its split of an item's samples, in the order ``read_item`` reads them."""
    if "index" in item:
        return np.asarray(item["index"])
    return int(item["start"]) + np.arange(item_rows(source, item).size)


def read_item(source: "ParquetSource | ImageFileSource", item: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """The images of one ``StreamedSplit.items`` (or ``held_out_items``) entry, in its order (``rng``:
    random resized crops, with --image-size)."""
    if isinstance(source, ImageFileSource):
        return source.read_paths(list(item["path"]), rng)
    return source.read_rows(int(item["chunk"]), item_rows(source, item), rng)


def held_out_items(splits: "list[StreamedSplit]") -> list[dict]:
    """Items of the groups that hold samples of ``splits`` (validation and test held out of a streamed
    training split: random rows, so nearly every group), ``part`` naming the split each row belongs to
    and ``index`` its place there."""
    source = splits[0].source
    chunks = [sp.chunk_lists() for sp in splits]
    out = []
    for g in range(source.num_groups):
        parts = [(k, chunks[k][g]) for k in range(len(splits))]
        parts = [(k, p) for k, p in parts if p.size]
        if not parts:
            continue
        rows = np.concatenate([splits[k].rows[p] for k, p in parts])
        order = np.argsort(rows, kind="stable")
        part = np.concatenate([np.full(p.size, k) for k, p in parts])[order]
        index = np.concatenate([p for _, p in parts])[order]
        item = {"chunk": g, "row": rows[order], "part": part, "index": index}
        if isinstance(source, ImageFileSource):
            item["path"] = [source.files[int(r)] for r in rows[order]]
        out.append(item)
    return out


def fill_held_out(splits: "list[StreamedSplit]", pieces) -> list[ImageSplit]:
    """``splits`` in memory from (item, images) pieces of ``held_out_items`` (read here or by Ray Data)."""
    shape = splits[0].image_shape
    images = [np.empty((len(sp), *shape), dtype=np.uint8) for sp in splits]
    for part, index, pixels in pieces:
        if pixels.shape[1:] != shape:
            raise DataError(f"mismatched image shapes: a group holds {pixels.shape[1:]}, the first {shape}{SIZE_HINT}")
        for k in np.unique(part):
            where = part == k
            images[int(k)][index[where]] = pixels[where]
    return [ImageSplit(im, sp.labels.astype(np.int64)) for im, sp in zip(images, splits)]


def read_held_out(splits: "list[StreamedSplit]") -> list[ImageSplit]:
    """Held-out splits read in this process, a group at a time (a run without Ray)."""
    source = splits[0].source
    pieces = ((it["part"], it["index"], read_item(source, it)) for it in held_out_items(splits))
    return fill_held_out(splits, pieces)


def open_image_files(files: list[str], labels: np.ndarray, per_group: int | None = None,
                     filesystem=None, image_size: int | None = None) -> StreamedSplit:
    """An image folder's training files, streamed: labels from the folder names, images on disk."""

    first = decode_image(read_bytes(filesystem or local_filesystem(), files[0]), files[0], image_size)
    source = ImageFileSource.create(files, first.shape[0], per_group or FILES_PER_GROUP, filesystem, image_size)
    return StreamedSplit(source, compact_range(len(files)), compact_labels(labels), tuple(int(s) for s in first.shape))  # type: ignore[arg-type]


def open_parquet_train(files: list[str], filesystem=None,
                       image_size: int | None = None) -> tuple[StreamedSplit, list[str] | None]:
    """The training split of ``files``, streamed: labels in memory, images on disk."""
    source, labels, names = ParquetSource.open(files, "train", filesystem, image_size)
    first = next(g for g in range(source.num_groups) if source.group_start[g + 1] > source.group_start[g])
    shape = tuple(int(s) for s in source.read_group(first).shape[1:])
    return StreamedSplit(source, compact_range(len(labels)), compact_labels(labels), shape), names  # type: ignore[arg-type]


def compact(values: np.ndarray) -> np.ndarray:
    """Integers (labels, row numbers) in 4 bytes where they fit: the driver holds one per training sample."""
    return values.astype(np.int32) if values.size == 0 or (values.min() >= -2**31 and values.max() < 2**31) else values


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Class labels in the fewest bytes that hold them (one for up to 256 classes): the object store, the
    driver and every rank hold them, one per training sample. Read with ``.long()``/``astype`` where a
    loss or a file needs wider ones."""
    for dtype in (np.uint8, np.int16):
        info = np.iinfo(dtype)
        if labels.size == 0 or (labels.min() >= info.min and labels.max() <= info.max):
            return labels.astype(dtype)
    return compact(labels)


def compact_range(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
