"""--image-size: image folders and Parquet images of different sizes, fitted to one (the shorter side
resized, the centre cropped), and random resized crops where Ray Data reads the training images."""

import base64
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostray.cli import main
from boostray.core.data.datasets import load_dataset
from boostray.core.data.images import crop_box, decode_image
from boostray.core.data.streaming import reader_source
from boostray.errors import DataError
from helpers import png_bytes

SIZES = [(12, 16), (20, 20), (9, 14), (30, 18)]  # (height, width): no two alike


def banded(label: int, height: int, width: int, rng) -> np.ndarray:
    """Class 0 bright in its top half, class 1 in its bottom half: still told apart once resized or cropped."""
    pixels = rng.integers(0, 60, (height, width), dtype=np.uint8)
    rows = slice(0, height // 2) if label == 0 else slice(height // 2, height)
    pixels[rows] = 220
    return pixels


def write_mixed_folder(folder, n: int = 120) -> str:
    rng = np.random.default_rng(0)
    for i in range(n):
        part = "train" if i < n - 30 else "test"
        label = i % 2
        os.makedirs(os.path.join(folder, part, f"c{label}"), exist_ok=True)
        with open(os.path.join(folder, part, f"c{label}", f"{i:04d}.png"), "wb") as f:
            f.write(png_bytes(banded(label, *SIZES[i % len(SIZES)], rng)))
    return str(folder)


def test_crop_boxes_centre_the_shorter_side_or_draw_torchvisions_random_resized_crop():
    assert crop_box(20, 40, 10, 10) == (10, 0, 30, 20)  # the centred square of a wide image
    assert crop_box(40, 20, 16, 8) == (0, 0, 20, 40)  # the output's aspect: the whole image
    rng = np.random.default_rng(0)
    boxes = [crop_box(64, 48, 16, 16, rng) for _ in range(300)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 48 and 0 <= top < bottom <= 64
        area, aspect = (right - left) * (bottom - top) / (64 * 48), (right - left) / (bottom - top)
        assert 0.07 <= area <= 1.0 and 0.7 <= aspect <= 1.4
    assert len(set(boxes)) > 250  # drawn, not fixed


def test_a_folder_of_mixed_sizes_needs_image_size_and_loads_fitted_in_memory_and_streamed(tmp_path):
    folder = write_mixed_folder(tmp_path / "folder")
    with pytest.raises(DataError, match="mismatched image shapes.*--image-size N fits every image"):
        load_dataset("imagefolder", folder)
    memory = load_dataset("imagefolder", folder, image_size=12)
    streamed = load_dataset("imagefolder", folder, image_size=12, stream=True)
    assert memory.input_shape == streamed.input_shape == (1, 12, 12)
    np.testing.assert_array_equal(streamed.train.take(np.arange(len(memory.train))), memory.train.images)
    np.testing.assert_array_equal(streamed.val.images, memory.val.images)
    assert memory.test.images.shape == (30, 1, 12, 12)
    # a 9 x 14 image of class 1: its bottom half, centred and resized, is the bottom half of the result
    rows = memory.test.images[memory.test.labels == 1, 0]
    assert rows[:, 8:].mean() > 180 > 80 > rows[:, :4].mean()


def test_parquet_images_of_mixed_sizes_load_fitted(tmp_path):
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "pq")
    for split, n in (("train", 40), ("test", 10)):
        images = [{"bytes": png_bytes(banded(i % 2, *SIZES[i % len(SIZES)], rng)), "path": None} for i in range(n)]
        pq.write_table(pa.table({"image": pa.array(images), "label": pa.array([i % 2 for i in range(n)])}),
                       str(tmp_path / "pq" / f"{split}.parquet"))
    with pytest.raises(DataError, match="--image-size"):
        load_dataset("parquet", str(tmp_path / "pq"))
    for stream in (False, True):
        data = load_dataset("parquet", str(tmp_path / "pq"), image_size=10, stream=stream)
        assert data.input_shape == (1, 10, 10) and data.test.images.shape == (10, 1, 10, 10)


def test_a_read_task_takes_random_resized_crops_and_evaluation_the_centre(tmp_path):
    """What a Ray Data read task hands to training with --image-size (ingest._read, called as Ray Data
    calls it: a batch of items): fitted images of the right shape, a new crop every read, the indices of
    its items; without augmentation the centred fit that evaluation reads."""
    from boostray.distributed.ingest import _read

    streamed = load_dataset("imagefolder", write_mixed_folder(tmp_path / "folder"), image_size=12, stream=True)
    item = streamed.train.items()[0]
    batch = {key: [value] for key, value in item.items()}  # one item: a batch of one row
    source = reader_source(streamed.train.source)
    augment = {"padding": 0, "hflip": False, "resized_crop": True}
    first, second = (_read(batch, source, augment, shuffle=False) for _ in range(2))
    index = item["index"]
    assert first["image"].shape == (len(index), 1, 12, 12)
    np.testing.assert_array_equal(first["index"], index)
    assert not np.array_equal(first["image"], second["image"])
    centred = _read(batch, source, None, shuffle=False)["image"]
    np.testing.assert_array_equal(centred, streamed.train.take(np.asarray(index)))


def test_served_and_batch_predicted_images_are_fitted_as_training_images_are():
    from boostray.apps.batch_predict import decode_pixels
    from boostray.core.artifact.inference import decode_image_bytes

    wide = np.zeros((10, 30), dtype=np.uint8)
    wide[:, 10:20] = 200  # a bright centre between dark sides
    raw = png_bytes(wide)
    np.testing.assert_array_equal(decode_image_bytes(raw, (1, 10, 10), "x")[0], np.full((10, 10), 200.0))
    np.testing.assert_array_equal(decode_image(raw, "x", 10)[0], np.full((10, 10), 200))
    out = decode_pixels({"id": np.array([0]), "image": [{"bytes": raw}]}, id_column="id", image_column="image",
                        shape=(1, 10, 10))
    np.testing.assert_array_equal(out["pixels"][0, 0], np.full((10, 10), 200))


@pytest.mark.parametrize("args,message", [
    (["--dataset", "digits", "--image-size", "16"], "--image-size fits the images of imagefolder or parquet data"),
    (["--image-size", "2"], "--image-size must be >= 4"),
])
def test_image_size_errors_are_one_line(capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code = main(["train", "--workers", "0", *args, "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_run_on_a_mixed_folder_trains_and_serves_images_of_any_size(tmp_path, capsys):
    """From the command line: the run trains on 12 x 12 fits, and its ensemble classifies an image of a
    size it never saw."""
    from boostray.core.artifact.ensemble import load_ensemble
    from boostray.core.artifact.inference import MemberStack, parse_instances

    folder = write_mixed_folder(tmp_path / "folder", n=200)
    out = tmp_path / "out"
    assert main(["train", "--workers", "0", "--dataset", "imagefolder", "--data-dir", folder, "--image-size", "12",
                 "--epochs", "6", "--members", "2", "--output", str(out), "--name", "mixed"]) == 0
    metrics = json.loads((out / "mixed" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9
    ensemble = load_ensemble(str(out / "mixed"))
    assert tuple(ensemble.input_shape) == (1, 12, 12)
    big = banded(1, 41, 27, np.random.default_rng(5))
    pixels = parse_instances({"instances": [{"b64": base64.b64encode(png_bytes(big)).decode()}]},
                             ensemble.input_shape, 4)
    assert MemberStack(ensemble).predict_proba(pixels).argmax(1).tolist() == [1]


@pytest.mark.ray
def test_a_streamed_run_on_ray_trains_on_random_resized_crops_of_a_mixed_folder(ray_cluster, tmp_path):
    """Ray Data's read tasks fit the images of a folder of four sizes (random resized crops for training,
    centred fits for the correctness pass) and two ranks train on them."""
    from boostray.config import TrainConfig
    from boostray.distributed.trainer import train

    folder = write_mixed_folder(tmp_path / "folder", n=400)
    config = TrainConfig(dataset="imagefolder", data_dir=folder, stream=True, image_size=12, augment=True,
                         epochs=6, members=2, seed=3, workers=2, cpus_per_worker=0.5, output=str(tmp_path / "out"),
                         name="mixed")
    run_dir, metrics = train(config)
    assert metrics["stream_reader"] == "ray-data" and len(metrics["members"]) == 2
    assert metrics["test"]["accuracy"] >= 0.9
    with open(os.path.join(run_dir, "ensemble", "manifest.json")) as f:
        assert json.load(f)["input_shape"] == [1, 12, 12]
