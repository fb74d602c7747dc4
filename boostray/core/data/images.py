"""Images as arrays and in files: the split container, pixel statistics, decoding PNG/JPEG bytes and
Parquet image columns. Shared by the in-memory loaders (data.py), the streamed splits (streaming.py)
and batch prediction, so none of them reaches into another's private helpers."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np

from boostray.errors import DataError

SPLIT_SEED = 0  # fixes every data set's splits: every run and every method sees the same samples


@dataclass
class ImageSplit:
    images: np.ndarray  # uint8 (N, C, H, W), raw pixel values 0..255
    labels: np.ndarray  # int64 (N,)
    # Sample indices per chunk (a Parquet row group), where the split trains in a streamed split's chunked
    # order (StreamedSplit.materialize): the in-memory twin of a streamed run. None: one global shuffle.
    chunked: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])

    def chunks(self) -> list[np.ndarray]:
        if self.chunked is None:
            raise ValueError("this split trains in one global shuffle; it has no chunks")
        return self.chunked

    def read_chunk(self, j: int) -> np.ndarray:
        return self.images[self.chunks()[j]]

    def take(self, index: np.ndarray) -> np.ndarray:
        return self.images[index]


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """Per-channel counts of each pixel value 0..255 of uint8 (N, C, H, W) images: (C, 256) int64.
    Exact integers, so statistics summed chunk by chunk equal those of the whole array."""
    return np.stack([np.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])


def mean_std(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pixels / 255 from their histogram (std at least 1e-3)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    total = histogram.sum(axis=1)
    mean = (histogram * values).sum(axis=1) / total
    var = (histogram * (values[None] - mean[:, None]) ** 2).sum(axis=1) / total
    return [float(m) for m in mean], [float(s) for s in np.maximum(np.sqrt(var), 1e-3)]


# torchvision's RandomResizedCrop defaults: what ImageNet training draws its crops with
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def crop_box(height: int, width: int, out_h: int, out_w: int,
             rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): the region of a ``height`` x ``width`` image that is resized to
    ``out_h`` x ``out_w``. With ``rng`` a random resized crop (8-100 % of the area, aspect 3/4 to 4/3, as
    torchvision's RandomResizedCrop); without, the largest centred region of the output's aspect (the
    shorter side resized, the rest cropped: torchvision's Resize + CenterCrop)."""
    if rng is not None:
        low, high = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
        for _ in range(10):
            area = height * width * rng.uniform(*RESIZED_CROP_SCALE)
            aspect = math.exp(rng.uniform(low, high))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
    scale = min(width / out_w, height / out_h)  # ten draws missed (a very narrow image): the centre
    w, h = max(1, min(width, round(out_w * scale))), max(1, min(height, round(out_h * scale)))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def fit_image(img, out_h: int, out_w: int, rng: np.random.Generator | None = None):
    """A PIL image resized to ``out_h`` x ``out_w`` from its ``crop_box`` (bilinear)."""
    from PIL import Image

    if rng is None and img.size == (out_w, out_h):
        return img
    return img.resize((out_w, out_h), Image.BILINEAR, box=crop_box(img.height, img.width, out_h, out_w, rng))


def fit_array(images: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (N, C, H, W) images, each fitted to ``size`` x ``size`` (``fit_image``)."""
    from PIL import Image

    if rng is None and images.shape[2:] == (size, size):
        return images
    out = np.empty((images.shape[0], images.shape[1], size, size), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0))
        arr = np.asarray(fit_image(pil, size, size, rng), dtype=np.uint8)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


def decode_image(data: bytes, where: str, size: int | tuple[int, int] | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """PNG/JPEG bytes as uint8 (C, H, W): grey stays one channel, anything else becomes RGB. With
    ``size`` (N, or (H, W)) fitted to it (``fit_image``: centred, or a random resized crop with ``rng``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("L" if img.mode in ("1", "L", "I;16", "I", "F") else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None
    if size is not None:
        out_h, out_w = (size, size) if isinstance(size, int) else size
        img = fit_image(img, out_h, out_w, rng)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


SIZE_HINT = "; --image-size N fits every image to N x N pixels"


def stack_images(images: list[np.ndarray], where: str) -> np.ndarray:
    """Decoded images as one (N, C, H, W) array; grey images join an RGB set as three equal channels."""
    if not images:
        raise DataError(f"{where} is empty")
    channels = max(im.shape[0] for im in images)
    first = images[0].shape[1:]
    out = np.empty((len(images), channels, *first), dtype=np.uint8)
    for i, im in enumerate(images):
        if im.shape[1:] != first:
            raise DataError(f"mismatched image shapes in {where}: row 0 is {first}, row {i} is {im.shape[1:]}{SIZE_HINT}")
        out[i] = im if im.shape[0] == channels else np.repeat(im, channels, axis=0)
    return out


def parquet_image_column(column_names: list[str], where: str) -> str:
    """The column that holds the images: ``image``, ``img`` or ``pixels``."""
    image_col = next((c for c in ("image", "img", "pixels") if c in column_names), None)
    if image_col is None:
        raise DataError(f"{where} parquet has no 'image' column (columns: {column_names})")
    return image_col


def parquet_labels(table, where: str, column: str = "label") -> np.ndarray:
    """The label column as int64, or a one-line DataError."""
    if table.num_rows == 0:
        raise DataError(f"the {where} split is empty")
    if column not in table.column_names:
        raise DataError(f"{where} parquet has no {column!r} column (columns: {table.column_names}); "
                        f"--label-column names another")
    labels_col = table.column(column)
    if labels_col.null_count:
        raise DataError(f"{where} parquet has missing labels")
    labels = np.asarray(labels_col.to_numpy(zero_copy_only=False))
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where} parquet column {column!r} must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


def check_pixel_values(values: np.ndarray, where: str) -> None:
    """Numbers that are read as pixels must be pixel values: integers in 0..255, or fractions in [0, 1].
    Anything else (negative, over 255, fractional above 1) would be clipped or rounded into an image,
    silently: refused, naming the way to train on it as features."""
    if values.size == 0:
        return
    low, high = values.min(), values.max()
    fractional = not np.issubdtype(values.dtype, np.integer) and high > 1 and not np.all(np.mod(values, 1) == 0)
    if low < 0 or high > 255 or fractional:
        raise DataError(f"{where} parquet image column holds numbers that are not pixel values (min {float(low):g}, "
                        f"max {float(high):g}{', fractional' if fractional else ''}); to train on them as features, "
                        f"name the column with --feature-columns (and a model such as --model mlp)")


def feature_array(table, columns: list[str], where: str) -> np.ndarray:
    """Named numeric columns as float32 features: one list column (N, L), or several scalar columns (N, F).
    Nothing is scaled or clipped."""
    import pyarrow as pa

    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{where} parquet has no column {missing[0]!r} (columns: {table.column_names})")
    parts = []
    for name in columns:
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise DataError(f"{where} parquet column {name!r} has missing values")
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            lengths = set(col.value_lengths().to_pylist())
            if len(lengths) != 1:
                raise DataError(f"{where} parquet column {name!r} holds lists of lengths {sorted(lengths)[:5]}, not one length")
            values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), lengths.pop())
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            values = col.to_numpy(zero_copy_only=False).reshape(-1, 1)
        else:
            raise DataError(f"{where} parquet column {name!r} is {col.type}, not numbers or lists of numbers")
        parts.append(np.asarray(values, dtype=np.float32))
    out = np.concatenate(parts, axis=1)
    if not np.isfinite(out).all():
        raise DataError(f"{where} parquet features hold NaN or inf")
    return out


def parquet_class_names(schema) -> list[str] | None:
    """Class names from a Hugging Face export's schema metadata, if it has them."""
    meta = schema.metadata or {}
    if b"huggingface" not in meta:
        return None
    try:
        feats = json.loads(meta[b"huggingface"])["info"]["features"]["label"]
        return [str(n) for n in feats["names"]]
    except (KeyError, TypeError, ValueError):
        return None


def decode_image_column(col, where: str, unit_scale: bool | None = None, size: int | None = None,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """A Parquet image column (image structs of PNG/JPEG bytes, or lists of pixel numbers) as uint8
    (N, C, H, W). Numbers in [0, 1] are scaled to 0..255: decided from this column unless ``unit_scale``
    says it (a streamed split decides once, so every row group is scaled alike). ``size``, ``rng``: every
    image fitted to ``size`` x ``size`` (``decode_image``)."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_struct(col.type):
        raw = col.field("bytes").to_pylist()
        images = [decode_image(b, f"{where} row {i}", size, rng) if b is not None else None for i, b in enumerate(raw)]
        if any(im is None for im in images):
            raise DataError(f"{where} parquet has rows without image bytes")
        return stack_images(images, f"{where} split")  # type: ignore[arg-type]
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        lengths = set(col.value_lengths().to_pylist()) if not pa.types.is_fixed_size_list(col.type) else {col.type.list_size}
        if len(lengths) != 1:
            raise DataError(f"mismatched image shapes in {where} split: list lengths {sorted(lengths)[:5]}")
        length = lengths.pop()
        values = col.flatten().to_numpy(zero_copy_only=False)
        check_pixel_values(values, where)
        if np.issubdtype(values.dtype, np.integer):
            scale_up = unit_scale if unit_scale is not None else values.max(initial=0) <= 1
            pixels = values * 255 if scale_up else values
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        else:
            flat = np.asarray(values, dtype=np.float64)
            if not np.isfinite(flat).all():
                raise DataError(f"{where} parquet images hold NaN or inf")
            scale_up = unit_scale if unit_scale is not None else flat.max(initial=0) <= 1.0
            pixels = flat * 255.0 if scale_up else flat  # pixels given in [0, 1]
        for c in (1, 3):
            side = int(round((length / c) ** 0.5))
            if side * side * c == length:
                break
        else:
            raise DataError(f"{where} image lists of length {length} are neither square grey nor square RGB images; "
                            f"to train on them as features, name the column with --feature-columns")
        if pixels.dtype != np.uint8:
            pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        pixels = pixels.reshape(len(col), c, side, side)
        return fit_array(pixels, size, rng) if size else pixels
    raise DataError(f"{where} image column must be an image struct or a list of numbers, got {col.type}")
