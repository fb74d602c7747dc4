
import numpy as np
import pytest

from boostray.core.data.datasets import load_dataset, long_tailed_indices
from boostray.errors import DataError
from helpers import synthetic_images, write_parquet_dataset, write_parquet_split


def test_digits_split_is_fixed_disjoint_and_complete():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert a.train.images.dtype == np.uint8 and a.train.images.max() == 255
    rows = lambda s: {im.tobytes() + bytes([int(l)]) for im, l in zip(s.images, s.labels)}
    assert not rows(a.test) & rows(a.val)  # no sample in two splits (digits has a few duplicate images)


def test_long_tailed_profile_is_exponential():
    labels = np.repeat(np.arange(10), 100)
    kept = np.bincount(labels[long_tailed_indices(labels, 10, 10.0)], minlength=10)
    expected = [int(100 * 10 ** (-c / 9)) for c in range(10)]
    assert kept.tolist() == expected
    assert kept[0] / kept[-1] == pytest.approx(10)


def test_imbalance_ratio_applies_to_train_only():
    ds = load_dataset("digits", imbalance_ratio=10)
    counts = np.bincount(ds.train.labels, minlength=10)
    assert counts[0] > 5 * counts[9]
    assert len(ds.test) == len(load_dataset("digits").test)


def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.hflip
    assert len(ds.train) + len(ds.val) == 60000 and len(ds.test) == 10000
    assert ds.classes[9] == "Ankle boot"


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path))


@pytest.mark.parametrize("as_png,channels", [(True, 1), (True, 3), (False, 1)])
def test_parquet_folder_png_struct_and_numeric_lists(tmp_path, as_png, channels):
    folder = write_parquet_dataset(str(tmp_path / "pq"), as_png=as_png, channels=channels)
    ds = load_dataset("parquet", folder)
    assert ds.input_shape == (channels, 8, 8)
    assert len(ds.test) == 30 and len(ds.train) + len(ds.val) == 60
    images, labels = synthetic_images(90, channels=channels)
    np.testing.assert_array_equal(ds.test.images, images[60:].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.test.labels, labels[60:])


def test_imagefolder_tree_with_tiny_imagenet_val_layout(tmp_path):
    from PIL import Image

    images, labels = synthetic_images(40, classes=2, channels=3)
    for i, (im, c) in enumerate(zip(images[:30], labels[:30])):
        d = tmp_path / "train" / f"n0{c}" / "images"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i}.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    lines = []
    for i, (im, c) in enumerate(zip(images[30:], labels[30:])):
        Image.fromarray(im).save(tmp_path / "val" / "images" / f"val_{i}.png")
        lines.append(f"val_{i}.png\tn0{c}\t0\t0\t8\t8")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines))
    ds = load_dataset("imagefolder", str(tmp_path))
    assert ds.classes == ["n00", "n01"] and ds.input_shape == (3, 8, 8)
    np.testing.assert_array_equal(ds.val.labels, labels[30:])
    assert len(ds.train) + len(ds.test) == 30  # no labelled test: held out from train


def test_bad_parquet_data_fails_with_one_line_reasons(tmp_path):
    images, labels = synthetic_images(20)
    (tmp_path / "labels").mkdir()
    write_parquet_split(str(tmp_path / "labels" / "train.parquet"), images, labels)
    write_parquet_split(str(tmp_path / "labels" / "test.parquet"), images, np.full(20, 7))
    with pytest.raises(DataError, match=r"labels outside 0\.\.2 in the test split"):
        load_dataset("parquet", str(tmp_path / "labels"))

    (tmp_path / "shapes").mkdir()
    big, _ = synthetic_images(20, size=12)
    write_parquet_split(str(tmp_path / "shapes" / "train.parquet"), images, labels)
    write_parquet_split(str(tmp_path / "shapes" / "test.parquet"), big, labels)
    with pytest.raises(DataError, match="mismatched image shapes"):
        load_dataset("parquet", str(tmp_path / "shapes"))

    (tmp_path / "empty").mkdir()
    write_parquet_split(str(tmp_path / "empty" / "train.parquet"), images[:0], labels[:0])
    with pytest.raises(DataError, match="empty"):
        load_dataset("parquet", str(tmp_path / "empty"))

    with pytest.raises(DataError, match="does not exist"):
        load_dataset("parquet", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no train"):
        load_dataset("parquet", str(tmp_path))


def test_the_test_hold_out_of_data_without_a_test_split_is_capped():
    """Data without a test split holds out 20 % of train as test, at most test_holdout_max samples (every
    member's test probabilities are kept, so an uncapped hold-out grows with the data)."""
    from boostray.core.data.datasets import load_dataset

    uncapped = load_dataset("digits")
    capped = load_dataset("digits", test_holdout_max=100)
    assert len(uncapped.test) == round(0.2 * 1797) and len(capped.test) == 100
    assert len(capped.train) + len(capped.val) == 1797 - 100


def test_val_holdout_max_caps_the_validation_split_a_run_holds_out(tmp_path):
    """`boostray train --val-holdout-max 50` as a user types it: digits has no validation split, so 10 %
    of train would be held out (144 images); the run validates on 50 and trains on the rest."""
    import json

    from boostray.cli import main

    args = ["train", "--workers", "0", "--dataset", "digits", "--epochs", "1", "--members", "1",
            "--output", str(tmp_path), "--name"]
    assert main([*args, "capped", "--val-holdout-max", "50"]) == 0
    assert main([*args, "default"]) == 0
    capped, default = (json.loads((tmp_path / n / "metrics.json").read_text())["samples"] for n in ("capped", "default"))
    assert capped["val"] == 50 and default["val"] > 50
    assert capped["train"] == default["train"] + default["val"] - 50
