"""The batched input path: its crops and flips are torchvision's, and the same seed gives the same batches."""

import numpy as np
import torch

from boostray.core.data.batches import TrainBatches, crop_and_flip, epoch_indices


def reference_crop_and_flip(images, padding, hflip, generator):
    """The per-pixel-index formulation the input path used before crops were cut from a strided view;
    the same random draws in the same order."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def test_train_batches_are_the_reference_crops_of_the_epoch_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70, 3, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, 70)
    batches = TrainBatches(images, labels, batch_size=16, device=torch.device("cpu"), seed=3, rank=1, world=2,
                           crop_padding=2, hflip=True)
    generator = torch.Generator()
    generator.manual_seed((3 * 1_000_003 + 5 * 7919 + 1) % (2**63))
    order = epoch_indices(70, 5, 3, 1, 2)
    seen = 0
    for start, (x, y, idx) in zip(range(0, order.numel(), 16), batches.epoch(5)):
        want_idx = order[start:start + 16]
        assert torch.equal(idx, want_idx)
        assert torch.equal(y, torch.from_numpy(labels)[want_idx])
        want = reference_crop_and_flip(torch.from_numpy(images)[want_idx], 2, True, generator)
        assert x.dtype == torch.uint8 and torch.equal(x, want)
        seen += x.shape[0]
    assert seen == 35
    # Without augmentation a batch is the images themselves.
    plain = TrainBatches(images, labels, batch_size=16, device=torch.device("cpu"), seed=3, augment=False)
    x, _, idx = next(plain.epoch(0))
    assert torch.equal(x, torch.from_numpy(images)[idx])


def test_each_output_is_a_crop_of_its_padded_image_over_every_offset_and_flip():
    images = torch.randint(0, 256, (400, 1, 6, 6), dtype=torch.uint8)
    images[:, :, 0, 0] = 255  # keep each crop's offset identifiable
    generator = torch.Generator()
    generator.manual_seed(0)
    given = images.clone()
    out = crop_and_flip(images, 1, True, generator)
    assert torch.equal(images, given)  # the input is not written
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    found = set()
    for i in range(400):
        matches = [(dy, dx, f) for dy in range(3) for dx in range(3) for f in (False, True)
                   if torch.equal(out[i], (lambda crop: crop.flip(-1) if f else crop)(padded[i, :, dy:dy + 6, dx:dx + 6]))]
        assert matches, f"output {i} is no crop of its padded image"
        found.update(matches)
    assert len(found) == 18  # all 9 offsets, each flipped and not


def test_a_split_kept_in_host_memory_gives_the_same_batches_as_one_on_the_device():
    """The path for a split larger than the GPU's free memory (gathered a batch at a time, cropped after
    the copy) draws the same crops and flips as the padded split on the device: same batches, bit for bit."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (90, 3, 10, 10), dtype=np.uint8)
    labels = rng.integers(0, 10, 90)
    for augment in (True, False):
        options = dict(batch_size=16, device=torch.device("cpu"), seed=4, rank=0, world=2, augment=augment,
                       crop_padding=2, hflip=True)
        resident, host = TrainBatches(images, labels, **options), TrainBatches(images, labels, on_device=False, **options)
        assert resident.on_device and not host.on_device and host.images.shape == images.shape  # no padded copy
        for (xa, ya, ia), (xb, yb, ib) in zip(resident.epoch(2), host.epoch(2), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
