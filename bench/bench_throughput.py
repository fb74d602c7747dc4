"""Training throughput of boostray's loop against a bare PyTorch loop; prints one JSON object.

For each case (small_cnn on 8x8 grey digits, small_cnn on 28x28 grey Fashion-MNIST, resnet20 on 32x32
RGB): training images/s of
  - bare      : the physical limit here: the same model, batch size, threads and batched augmentation,
                plain mean cross-entropy, nothing else (no weights, no bookkeeping);
  - boostray  : Engine.train_epoch, the loop every boostray run uses (weighted loss, device-side sums);
and the input path alone (no model):
  - per_sample: the path before batches.py: a per-sample torchvision RandomCrop/flip Dataset collated
                by a DataLoader;
  - batched   : batches.TrainBatches, one gather and one crop/flip per batch.
and the train-set correctness pass (Engine.eval_correctness, error_source=eval) in images/s.
With CUDA, also boostray's loop with --amp bf16, with channels-last + bf16 and, for resnet20, with
--compile (its first, compiling epoch timed apart); the correctness pass under bf16; and each member's
forward looped against vmap-stacked members (inference.MemberStack).
32x32 RGB data is random pixels (CIFAR cannot be downloaded here; throughput does not depend on content).

Usage: python bench/bench_throughput.py [--repeat N] [--threads T] [--device cpu|cuda] [--data-dir D]
       [--fashion-mnist-subset N] [--json-out F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from report_json import emit, emit_file  # noqa: E402  (bench/, beside this script)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from boostray.core.data.batches import TrainBatches  # noqa: E402
from boostray.config import TrainConfig  # noqa: E402
from boostray.core.data.datasets import ImageDataset, ImageSplit, load_dataset, normalization_tensors, normalize  # noqa: E402
from boostray.core.method.engine import Engine  # noqa: E402
from boostray.core.models import create_model  # noqa: E402
from boostray.core.method.weights import LocalWeightStore  # noqa: E402


def random_rgb(n: int = 5000, size: int = 32, classes: int = 10) -> ImageDataset:
    rng = np.random.default_rng(0)
    split = lambda m: ImageSplit(rng.integers(0, 256, (m, 3, size, size), dtype=np.uint8), rng.integers(0, classes, m))
    return ImageDataset("random-rgb", split(n), split(500), split(500), [str(c) for c in range(classes)], True,
                        [0.5] * 3, [0.25] * 3)


def per_sample_loader(data: ImageDataset, batch_size: int):
    """The input path before batches.py, rebuilt here for comparison."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(data.input_shape[-1], padding=data.crop_padding)] + ([v2.RandomHorizontalFlip()] if data.hflip else [])
    transform = v2.Compose(steps)
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)

    class Indexed(Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return transform(images[i]), labels[i], i

    return DataLoader(Indexed(), batch_size=batch_size, shuffle=True)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def images_per_second(fns: dict, images: int, repeat: int, warmup: dict | None = None) -> dict[str, float]:
    """Each loop's images/s: the best of ``repeat`` timed calls after one untimed warm-up call (its seconds
    into ``warmup[name]``). Several loops are timed in turn, round after round, so that a drift of the
    machine (clocks, other load) during the measurement reaches all of them alike."""
    for name, fn in fns.items():
        first = _timed(fn)
        if warmup is not None:
            warmup[name] = first
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], _timed(fn))
    return {name: images / seconds for name, seconds in best.items()}


def rate(fn, images: int, repeat: int) -> float:
    """``images_per_second`` of one loop."""
    return images_per_second({"fn": fn}, images, repeat)["fn"]


def cuda_variants(model: str) -> dict[str, dict]:
    """TrainConfig overrides measured on CUDA besides the fp32 default."""
    variants = {"bf16": {"amp": "bf16"}, "channels_last_bf16": {"amp": "bf16", "channels_last": True}}
    if model == "resnet20":
        variants["compile"] = {"compile": True}
        variants["compile_bf16"] = {"compile": True, "amp": "bf16"}
    return variants


def bench_case(name: str, data: ImageDataset, model: str, batch_size: int, device: torch.device, repeat: int,
               variants: bool) -> dict:
    n = len(data.train)
    out: dict = {"case": name, "model": model, "images": n, "batch_size": batch_size, "input_shape": list(data.input_shape)}
    loader = per_sample_loader(data, batch_size)
    out["input_per_sample"] = rate(lambda: [None for _ in loader], n, repeat)
    batches = TrainBatches(data.train.images, data.train.labels, batch_size=batch_size, device=device, seed=0,
                           crop_padding=data.crop_padding, hflip=data.hflip)
    out["input_batched"] = rate(lambda: [None for _ in batches.epoch(0)], n, repeat)
    out["input_speedup"] = out["input_batched"] / out["input_per_sample"]

    c, h, _ = data.input_shape
    torch.manual_seed(0)
    net = create_model(model, num_classes=data.num_classes, in_channels=c, image_size=h).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = normalization_tensors(data.mean, data.std, data.input_shape, device)  # one per channel, broadcast

    def bare_epoch():
        net.train()
        for x, y, _ in batches.epoch(1):
            loss = F.cross_entropy(net(normalize(x, mean, std)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    weights = torch.full((n,), 1.0 / n, device=device)

    def engine_for(**overrides) -> Engine:
        config = TrainConfig(model=model, batch_size=batch_size, epochs=4, members=1, method="cbnn",
                             **overrides).resolved()
        return Engine(config.spec(), data, store=LocalWeightStore(), device=device)

    engine = engine_for()
    out.update(images_per_second(
        {"bare": bare_epoch, "boostray": lambda: engine.train_epoch(1, weights, record=False)}, n, repeat))
    out["boostray_over_bare"] = out["boostray"] / out["bare"]
    out["correctness_pass"] = rate(engine.eval_correctness, n, repeat)
    if variants:
        for label, overrides in cuda_variants(model).items():
            variant, warmup = engine_for(**overrides), {}
            key = f"boostray_{label}"
            out.update(images_per_second({key: lambda: variant.train_epoch(1, weights, record=False)}, n, repeat,
                                         warmup))
            out[f"{key}_first_epoch_s"] = warmup[key]
            if label == "bf16":
                out["correctness_pass_bf16"] = rate(variant.eval_correctness, n, repeat)
    return out


def bench_stacked(device: torch.device) -> dict:
    """All members' forward on CUDA: one vmap-stacked call against a loop over members."""
    from boostray.core.artifact.ensemble import Ensemble
    from boostray.core.artifact.inference import MemberStack

    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    members = [create_model("resnet20", **kwargs).eval() for _ in range(4)]
    manifest = {"members": [{"weight": 1.0}] * 4, "vote": "soft", "classes": [str(c) for c in range(10)],
                "input_shape": [3, 32, 32], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    ens = Ensemble(manifest, members).to(device)
    out = {}
    for mode in ("stacked", "loop"):
        stack = MemberStack(ens, mode)
        for batch in (1, 256):
            x = torch.randint(0, 256, (batch, 3, 32, 32), device=device).float()
            out[f"{mode}_batch{batch}_images_per_s"] = rate(lambda: stack.member_proba(x), batch, 20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per figure; the best counts (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one Ray worker's CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when PyTorch sees a GPU)")
    parser.add_argument("--fashion-mnist-subset", type=int, default=4000,
                        help="training images of the 28x28 case (default 4000; 0: the whole training split)")
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=None,
                        help="also the bf16 / channels-last / compile variants (default: on CUDA only)")
    parser.add_argument("--data-dir", help="Fashion-MNIST's IDX files (default: the Debian package's folder)")
    parser.add_argument("--json-out", help="also write the JSON here (rewritten after each case)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.variants is None:
        args.variants = device.type == "cuda"
    cases = [("digits 8x8 grey", load_dataset("digits"), "small_cnn", 64)]
    try:
        subset = args.fashion_mnist_subset or None
        cases.append(("fashion-mnist 28x28 grey", load_dataset("fashion-mnist", args.data_dir, train_subset=subset),
                      "small_cnn", 64))
    except Exception as exc:  # the Debian package is missing: say so, bench the rest
        print(f"skipping fashion-mnist: {exc}", file=sys.stderr)
    cases.append(("random 32x32 RGB", random_rgb(2000 if device.type == "cpu" else 20000), "resnet20", 128))
    result: dict = {"device": str(device), "threads": args.threads, "torch": torch.__version__, "cases": []}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for name, data, model, bs in cases:
        result["cases"].append(bench_case(name, data, model, bs, device, args.repeat, args.variants))
        print(f"done: {name}", file=sys.stderr, flush=True)
        if args.json_out:  # what a long run has measured so far survives its interruption
            emit_file(result, args.json_out)
    if device.type == "cuda":
        result["member_forward"] = bench_stacked(device)
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
