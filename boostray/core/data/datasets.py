"""Classification data sets held in memory: uint8 images (N, C, H, W) or float features of any shape,
plus int64 labels.

The driver loads and validates a data set once (so bad data fails before any worker starts) and ships
it to the workers through Ray's object store. Splits are fixed by ``SPLIT_SEED``, not by the run's seed,
so every run and every method sees the same validation and test samples.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from boostray.core.data.images import (  # noqa: F401  (part of this module's interface too)
    SIZE_HINT, SPLIT_SEED, ImageSplit, decode_image, decode_image_column, mean_std, parquet_class_names, parquet_image_column,
    feature_array, parquet_labels, pixel_histogram, stack_images,
)
from boostray.core.data import files as folder_files
from boostray.core.data.streaming import (
    SAMPLE_IMAGES, StreamedSplit, open_image_files, open_parquet_train, read_bytes, read_held_out,
)
from boostray.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass
class ImageDataset:
    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    classes: list[str]
    hflip: bool = False  # horizontal flips preserve the label (not for digits)
    mean: list[float] = field(default_factory=list)  # per channel, of train pixels / 255 (features: one or per feature)
    std: list[float] = field(default_factory=list)
    #: "image": uint8 pixels (N, C, H, W), scaled by 1/255 and augmented; "features": float arrays of any
    #: shape, trained as given (standardised only if asked), never augmented
    kind: str = "image"

    @property
    def scale(self) -> float:
        """What the raw values are divided by before the mean and std apply."""
        return 255.0 if self.kind == "image" else 1.0

    @property
    def augmentable(self) -> bool:
        """Random crops and flips apply to images only."""
        return self.kind == "image"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.image_shape

    @property
    def streamed(self) -> bool:
        """The training images stay on disk and stream a row group at a time (--stream)."""
        return not isinstance(self.train, ImageSplit)

    @property
    def crop_padding(self) -> int:
        """Random-crop padding: 4 px at 32 px (the CIFAR standard), scaled with the image size."""
        return max(1, round(self.input_shape[-1] / 8))


# --------------------------------------------------------------------------------------------- loaders


def load_digits_splits(data_dir: str | None, download: bool) -> tuple[ImageSplit, ImageSplit | None, ImageSplit | None, list[str], bool]:
    """scikit-learn's digits: 1,797 real 8x8 grey images (pixel values 0..16, rescaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    split = ImageSplit(images, d.target.astype(np.int64))
    return split, None, None, [str(c) for c in range(10)], False


def _fashion_mnist_root(source: str) -> str:
    """torchvision's FashionMNIST reads unpacked IDX files under ROOT/FashionMNIST/raw; Debian ships them
    gzipped, so unpack once into a cache folder."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if all(os.path.exists(os.path.join(source, "FashionMNIST", "raw", n)) for n in names):
        return source
    missing = [n for n in names if not any(os.path.exists(os.path.join(source, n + ext)) for ext in ("", ".gz"))]
    if missing:
        raise DataError(
            f"fashion-mnist files not found in {source} (missing {missing[0]}); install them with "
            "'apt-get install dataset-fashion-mnist' or pass --data-dir with the IDX files"
        )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "boostray" / "fashion-mnist"
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        target = raw / n
        if target.exists():
            continue
        src = os.path.join(source, n)
        tmp = raw / f".{n}.{os.getpid()}"
        if os.path.exists(src):
            shutil.copyfile(src, tmp)
        else:
            with gzip.open(src + ".gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    return str(cache)


def load_fashion_mnist_splits(data_dir: str | None, download: bool):
    """Fashion-MNIST: 60,000 + 10,000 real 28x28 grey images of clothes, 10 classes."""
    from torchvision.datasets import FashionMNIST

    root = _fashion_mnist_root(data_dir or FASHION_MNIST_DIR)
    train = FashionMNIST(root, train=True, download=False)
    test = FashionMNIST(root, train=False, download=False)
    to_split = lambda ds: ImageSplit(ds.data.numpy()[:, None].copy(), ds.targets.numpy().astype(np.int64))
    return to_split(train), None, to_split(test), list(FASHION_MNIST_CLASSES), True


def _cifar_loader(cls_name: str) -> Callable:
    def load(data_dir: str | None, download: bool):
        import torchvision.datasets as tvd

        if not data_dir:
            raise DataError(f"{cls_name.lower()} needs --data-dir (a torchvision root; add --download to fetch it)")
        cls = getattr(tvd, cls_name)
        try:
            train = cls(data_dir, train=True, download=download)
            test = cls(data_dir, train=False, download=download)
        except RuntimeError as exc:
            raise DataError(f"{cls_name} not found under {data_dir}: {exc} (add --download to fetch it)") from None
        to_split = lambda ds: ImageSplit(ds.data.transpose(0, 3, 1, 2).copy(), np.asarray(ds.targets, dtype=np.int64))
        return to_split(train), None, to_split(test), list(train.classes), True

    load.__doc__ = f"{cls_name} from a local torchvision root."
    return load


@dataclass(frozen=True)
class Columns:
    """Which Parquet columns hold what: the label, and either the image column found by name (``image``,
    ``img`` or ``pixels``) or the named feature columns (float features, nothing rescaled)."""

    label: str = "label"
    features: tuple[str, ...] | None = None


def _parquet_split(files: list[str], where: str, columns: Columns = Columns(), filesystem=None,
                   image_size: int | None = None) -> tuple[ImageSplit, list[str] | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(files, filesystem=filesystem)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"cannot read {where} parquet files: {exc}") from None
    if table.num_rows == 0:
        raise DataError(f"the {where} split is empty ({files[0]})")
    labels = parquet_labels(table, where, columns.label)
    if columns.features:
        return ImageSplit(feature_array(table, list(columns.features), where), labels), parquet_class_names(table.schema)
    images = decode_image_column(table.column(parquet_image_column(table.column_names, where)), where, size=image_size)
    return ImageSplit(images, labels), parquet_class_names(table.schema)


def _split_files(fs, root: str, split: str) -> list[str]:
    return sorted(set(folder_files.matching(fs, root, f"{split}*.parquet"))
                  | set(folder_files.matching(fs, f"{root}/data", f"{split}*.parquet")))


def load_parquet_splits(data_dir: str | None, download: bool, stream: bool = False, columns: Columns = Columns(),
                        image_size: int | None = None):
    """A Parquet folder as Hugging Face ``datasets`` exports it: train*.parquet, optional validation*
    and test*.parquet, columns ``label`` (int) and ``image`` ({bytes: PNG/JPEG}) or a numeric list.
    With ``stream`` the training split stays on disk (streaming.py); ``image_size`` fits every image to
    that many pixels square (images.fit_image)."""
    if not data_dir:
        raise DataError("--dataset parquet needs --data-dir (a folder with train*.parquet)")
    fs, root = folder_files.open_folder(data_dir)
    if not folder_files.is_dir(fs, root):
        raise DataError(f"data directory {data_dir} does not exist")
    train_files = _split_files(fs, root, "train")
    if not train_files:
        raise DataError(f"no train*.parquet files in {data_dir}")
    if stream:
        train, names = open_parquet_train(train_files, fs, image_size)
    else:
        train, names = _parquet_split(train_files, "train", columns, fs, image_size)
    val = test = None
    if files := _split_files(fs, root, "validation") or _split_files(fs, root, "val"):
        val, _ = _parquet_split(files, "validation", columns, fs, image_size)
    if files := _split_files(fs, root, "test"):
        test, _ = _parquet_split(files, "test", columns, fs, image_size)
    shapes = {s.image_shape for s in (train, val, test) if s is not None}
    if len(shapes) > 1:
        raise DataError(f"mismatched image shapes across splits: {sorted(shapes)}{SIZE_HINT}")
    k = len(names) if names else int(train.labels.max()) + 1
    return train, val, test, names or [str(c) for c in range(k)], True


def load_imagefolder_splits(data_dir: str | None, download: bool, stream: bool = False, image_size: int | None = None):
    """An ImageFolder tree: train/<class>/**/*.jpg, optional val/ (class folders, or Tiny-ImageNet's
    val/images + val_annotations.txt) and test/<class>/. With ``stream`` the training images stay on
    disk (streaming.py); ``image_size`` fits every image to that many pixels square (images.fit_image)."""
    fs, root = folder_files.open_folder(data_dir) if data_dir else (None, "")
    if not data_dir or not folder_files.is_dir(fs, f"{root}/train"):
        raise DataError(f"imagefolder needs --data-dir with a train/ folder of class folders (got {data_dir})")
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
    train_dir = f"{root}/train"
    classes = folder_files.subfolders(fs, train_dir)
    if not classes:
        raise DataError(f"no class folders in {train_dir}")
    index = {c: i for i, c in enumerate(classes)}

    def read(pairs: list[tuple[str, int]], where: str) -> ImageSplit:
        if not pairs:
            raise DataError(f"the {where} split is empty")
        images = [decode_image(read_bytes(fs, path), path, image_size) for path, _ in pairs]
        return ImageSplit(stack_images(images, f"{where} split"), np.array([y for _, y in pairs], dtype=np.int64))

    def class_tree(folder: str) -> list[tuple[str, int]]:
        return [(path, index[c]) for c in classes for path in folder_files.files_below(fs, f"{folder}/{c}", exts)]

    if stream:
        pairs = class_tree(train_dir)
        if not pairs:
            raise DataError("the train split is empty")
        train = open_image_files([p for p, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64), filesystem=fs,
                                 image_size=image_size)
    else:
        train = read(class_tree(train_dir), "train")
    val = test = None
    val_dir = f"{root}/val"
    annotations = f"{val_dir}/val_annotations.txt"
    if folder_files.is_file(fs, annotations):
        pairs = []
        for line in read_bytes(fs, annotations).decode().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                if parts[1] not in index:
                    raise DataError(f"{annotations}: class {parts[1]!r} has no train folder")
                pairs.append((f"{val_dir}/images/{parts[0]}", index[parts[1]]))
        val = read(pairs, "val")
    elif folder_files.is_dir(fs, val_dir):
        val = read(class_tree(val_dir), "val")
    test_dir = f"{root}/test"
    if folder_files.is_dir(fs, test_dir) and any(folder_files.is_dir(fs, f"{test_dir}/{c}") for c in classes):
        test = read(class_tree(test_dir), "test")
    shapes = {s.image_shape[1:] for s in (train, val, test) if s is not None}
    if len(shapes) > 1:
        raise DataError(f"mismatched image shapes across splits: {sorted(shapes)}{SIZE_HINT}")
    return train, val, test, classes, True


#: the dataset name of data handed in from Python (BoostTrainer's ``datasets``): nothing to load by name
IN_MEMORY = "in-memory"


def load_in_memory_splits(data_dir: str | None, download: bool):
    raise DataError(f"--dataset {IN_MEMORY}: this run's data was handed in from Python (boostray.BoostTrainer("
                    f"datasets=...)); name a data set to load it from files")


DATASETS: dict[str, Callable] = {
    "digits": load_digits_splits,
    "fashion-mnist": load_fashion_mnist_splits,
    "cifar10": _cifar_loader("CIFAR10"),
    "cifar100": _cifar_loader("CIFAR100"),
    "parquet": load_parquet_splits,
    "imagefolder": load_imagefolder_splits,
    IN_MEMORY: load_in_memory_splits,
}
STREAMABLE = ("parquet", "imagefolder")  # what --stream can leave on disk


# ------------------------------------------------------------------------------------- split handling


def long_tailed_indices(labels: np.ndarray, num_classes: int, ratio: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Class c keeps n_max * ratio^(-c/(K-1)) samples (exponential profile of long-tailed CIFAR)."""
    if ratio < 1:
        raise DataError(f"--imbalance-ratio must be >= 1, got {ratio}")
    rng = np.random.default_rng(seed)
    n_max = np.bincount(labels, minlength=num_classes).max()
    keep = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        target = int(n_max * ratio ** (-c / max(num_classes - 1, 1)))
        keep.append(rng.permutation(idx)[: max(1, min(target, idx.size))])
    return np.sort(np.concatenate(keep))


def _hold_out(split: ImageSplit, fraction: float, rng: np.random.Generator,
              cap: int | None = None) -> tuple[ImageSplit, ImageSplit]:
    perm = rng.permutation(len(split))
    n_out = max(1, int(round(fraction * len(split))))
    if cap is not None:
        n_out = min(n_out, cap)
    return split.subset(np.sort(perm[n_out:])), split.subset(np.sort(perm[:n_out]))


def _check_split(split: ImageSplit, where: str, num_classes: int) -> None:
    if len(split) == 0:
        raise DataError(f"the {where} split is empty")
    bad = (split.labels < 0) | (split.labels >= num_classes)
    if bad.any():
        raise DataError(
            f"labels outside 0..{num_classes - 1} in the {where} split (e.g. {int(split.labels[bad][0])})"
        )


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    imbalance_ratio: float | None = None,
    train_subset: int | None = None,
    download: bool = False,
    stream: bool = False,
    columns: Columns = Columns(),
    standardize: bool = False,
    test_holdout_max: int | None = None,
    val_holdout_max: int | None = None,
    defer_held_out: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    """Load, split and validate a data set. Raises DataError with a one-line reason on bad data.
    ``stream`` keeps a Parquet or image-folder training split on disk (streaming.py): only its labels and
    a sample of its images (the pixel statistics) are read here. Validation and test splits held out of
    it are read here too, unless ``defer_held_out`` leaves them for ``read_deferred_held_out`` (a run on
    Ray reads them with Ray Data). ``columns``: Parquet's label and feature columns (features train as
    given, standardised only with ``standardize``). ``image_size``: a Parquet or image-folder data set's
    images fitted to that many pixels square, whatever their own sizes (images.fit_image)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if data_dir is not None and name not in ("digits",) and "://" not in data_dir and not os.path.exists(data_dir):
        raise DataError(f"data directory {data_dir} does not exist")
    if stream and name not in STREAMABLE:
        raise DataError(f"--stream reads {' or '.join(STREAMABLE)} data, not {name}")
    if image_size is not None and (name not in STREAMABLE or columns.features):
        raise DataError("--image-size fits the images of imagefolder or parquet data to one size; "
                        + (f"{name} has images of one size" if name not in STREAMABLE else "--feature-columns are not images"))
    if name == "parquet":
        loaded = load_parquet_splits(data_dir, download, stream=stream, columns=columns, image_size=image_size)
    elif name == "imagefolder":
        loaded = load_imagefolder_splits(data_dir, download, stream=stream, image_size=image_size)
    else:
        loaded = DATASETS[name](data_dir, download)
    train, val, test, classes, hflip = loaded
    data = assemble_dataset(name, train, val, test, classes, hflip=hflip, val_fraction=val_fraction,
                            test_fraction=test_fraction, imbalance_ratio=imbalance_ratio, train_subset=train_subset,
                            standardize=standardize, test_holdout_max=test_holdout_max, val_holdout_max=val_holdout_max)
    if stream:
        release_unused_memory()
    return data if defer_held_out else read_deferred_held_out(data)


def release_unused_memory() -> None:
    """Give back to the system what a pass over streamed data held only while it ran: pyarrow's pool
    (mimalloc keeps freed pages) and glibc's heap (label columns and hold-out permutations on the driver,
    Ray Data's blocks and batches on a rank). Kept, they grow a process with the data set's size although
    little of it stays in use (docs/performance.md has the figures)."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def deferred_held_out(data: ImageDataset) -> list[StreamedSplit]:
    """The validation and test splits of ``data`` that are still rows of a streamed training source."""
    return [s for s in (data.val, data.test) if isinstance(s, StreamedSplit)]


def read_deferred_held_out(data: ImageDataset, read: Callable | None = None) -> ImageDataset:
    """``data`` with its deferred held-out splits in memory: read by ``read`` (a list of StreamedSplits ->
    ImageSplits; Ray Data's reader on a cluster) or in this process, a group at a time."""
    held = deferred_held_out(data)
    if not held:
        return data
    loaded = dict(zip(map(id, held), (read or read_held_out)(held)))
    return replace(data, val=loaded.get(id(data.val), data.val), test=loaded.get(id(data.test), data.test))


def assemble_dataset(name: str, train: ImageSplit, val: ImageSplit | None, test: ImageSplit | None,
                     classes: list[str], *, hflip: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.2,
                     imbalance_ratio: float | None = None, train_subset: int | None = None,
                     standardize: bool = False, test_holdout_max: int | None = None,
                     val_holdout_max: int | None = None) -> ImageDataset:
    """Splits as loaded (validation and test optional) -> a checked data set: the missing splits held out
    of train with the fixed split seed, the long tail and the subset applied, the normalisation counted.
    uint8 arrays are images; any other numbers are features."""
    k = len(classes)
    if k < 2:
        raise DataError(f"{name} has {k} class(es); classification needs at least 2")
    _check_split(train, "train", k)
    rng = np.random.default_rng(SPLIT_SEED)
    if test is None:
        train, test = _hold_out(train, test_fraction, rng, test_holdout_max)
    if imbalance_ratio is not None and imbalance_ratio != 1:
        train = train.subset(long_tailed_indices(train.labels, k, imbalance_ratio))
    if val is None:
        train, val = _hold_out(train, val_fraction, rng, val_holdout_max)
    if train_subset is not None and train_subset < len(train):
        train = train.subset(np.sort(rng.permutation(len(train))[:train_subset]))
    for split, where in ((train, "train"), (val, "validation"), (test, "test")):
        _check_split(split, where, k)
    if isinstance(train, ImageSplit) and train.images.dtype != np.uint8:
        mean, std = feature_statistics(train.images, standardize)
        return ImageDataset(name, train, val, test, classes, False, mean, std, kind="features")
    if not isinstance(train, ImageSplit):  # streamed: the pixel statistics of a sample of whole groups
        histogram = train.sample_histogram(SAMPLE_IMAGES)
    else:
        histogram = pixel_histogram(train.images)
    mean, std = mean_std(histogram)
    return ImageDataset(name, train, val, test, classes, hflip, mean, std)


def feature_statistics(features: np.ndarray, standardize: bool) -> tuple[list[float], list[float]]:
    """Features train as given (mean 0, std 1) unless ``standardize``: then each feature's mean and std
    over the training split (std at least 1e-6)."""
    if not standardize:
        return [0.0], [1.0]
    flat = features.reshape(features.shape[0], -1).astype(np.float64)
    return flat.mean(axis=0).tolist(), np.maximum(flat.std(axis=0), 1e-6).tolist()


# ----------------------------------------------------------------------------------- torch adapters


def normalization_shape(size: int, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """How ``size`` means (or stds) broadcast over a batch of ``input_shape``: one per image channel, one
    for everything, or one per feature."""
    if size == 1:
        return (1,) * (len(input_shape) + 1)
    if len(input_shape) == 3 and size == input_shape[0]:
        return (1, size, 1, 1)
    return (1, *input_shape)


def normalization_tensors(mean: list[float], std: list[float], input_shape: tuple[int, ...],
                          device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std as tensors shaped to broadcast over a batch."""
    shape = normalization_shape(len(mean), tuple(input_shape))
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(std, dtype=torch.float32, device=device).view(shape))


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Raw values -> float, divided by ``scale`` (255 for pixels, 1 for features) and standardised by
    ``mean`` and ``std`` (shaped by normalization_tensors)."""
    x = images.float()
    if scale != 1.0:
        x = x.div_(scale) if x is not images else x / scale
    return (x - mean) / std


def load_training_data(config, defer_held_out: bool = False) -> ImageDataset:
    """The data set a run trains on, as its options (a TrainConfig or anything with the same fields)
    describe it: the one place that turns options into data, for the trainer and every application.
    ``defer_held_out``: see load_dataset."""
    features = getattr(config, "feature_columns", None)
    columns = Columns(label=getattr(config, "label_column", "label"), features=tuple(features) if features else None)
    return load_dataset(
        config.dataset, config.data_dir, val_fraction=config.val_fraction, imbalance_ratio=config.imbalance_ratio,
        train_subset=config.train_subset, download=config.download, stream=getattr(config, "stream", False),
        columns=columns, standardize=getattr(config, "standardize", False),
        test_holdout_max=getattr(config, "test_holdout_max", None),
        val_holdout_max=getattr(config, "val_holdout_max", None), defer_held_out=defer_held_out,
        image_size=getattr(config, "image_size", None),
    )
