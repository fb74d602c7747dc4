"""Ray Train's PyTorch Fashion-MNIST example (python/ray/train/examples/pytorch/torch_fashion_mnist_example.py
in Ray's repository), ported to boostray: the same model class, the same torchvision data, the same
ScalingConfig. What changed is marked "boostray:"; docs/port-ray-train.md walks through it.

    python docs/examples/fashion_mnist_port.py                 # Debian's dataset-fashion-mnist files
    python docs/examples/fashion_mnist_port.py --synthetic     # generated 28x28 images, for a quick look
"""

import argparse

import boostray  # boostray: the trainer; imported before Ray, so that a local Ray listens on 127.0.0.1 only
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms
from torchvision.transforms import Normalize, ToTensor

from ray.train import RunConfig, ScalingConfig


def get_datasets(root: str, synthetic: bool, subset: int) -> tuple[Dataset, Dataset]:
    # Transform to normalize the input images (as in Ray's example)
    transform = transforms.Compose([ToTensor(), Normalize((0.5,), (0.5,))])
    if synthetic:  # 28x28 images whose class is a bright row band: no files needed
        training_data, test_data = GeneratedImages(subset, 0, transform), GeneratedImages(subset // 4, 1, transform)
    else:
        # boostray: download=False: the files come from Debian's dataset-fashion-mnist (the cache boostray unpacks)
        training_data = Subset(datasets.FashionMNIST(root=root, train=True, download=False, transform=transform), range(subset))
        test_data = Subset(datasets.FashionMNIST(root=root, train=False, download=False, transform=transform), range(subset // 4))
    # boostray: no DataLoader, no prepare_data_loader: the trainer shards, batches and moves the data
    return training_data, test_data


class GeneratedImages(Dataset):
    def __init__(self, n: int, seed: int, transform) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 10, n)
        self.images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for image, label in zip(self.images, self.labels):
            image[2 * label + 4: 2 * label + 8] = 220
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


# Model Definition (Ray's example, unchanged)
class NeuralNetwork(nn.Module):
    def __init__(self):
        super(NeuralNetwork, self).__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(512, 10),
            nn.ReLU(),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


# boostray: train_func_per_worker is gone. The loop, the DDP wrap, the metrics and the checkpoints are
# the trainer's; the optimizer and the loss are handed in (the loss per sample, so the boosting weights apply).
def train_fashion_mnist(num_workers=2, use_gpu=False, epochs=10, members=4, root="~/.cache/boostray/fashion-mnist",
                        synthetic=False, subset=6000, storage_path="/tmp/boostray_runs", name="fashion-mnist-port"):
    training_data, test_data = get_datasets(root, synthetic, subset)
    global_batch_size = 32
    lr = 1e-3

    # Configure computation resources (Ray's ScalingConfig, unchanged)
    scaling_config = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu)

    trainer = boostray.BoostTrainer(
        NeuralNetwork,
        datasets={"train": training_data, "test": test_data},
        boost_config=boostray.BoostConfig(epochs=epochs, members=members, batch_size=global_batch_size, lr=lr),
        optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        loss=lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"),
        scaling_config=scaling_config,
        run_config=RunConfig(name=name, storage_path=storage_path),
    )
    result = trainer.fit()
    print(f"Training result: {result.path}: ensemble of {len(result.ensemble)}, "
          f"test accuracy {result.metrics['test']['accuracy']:.4f} "
          f"(final network alone {result.metrics['test']['single_accuracy']:.4f})")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--subset", type=int, default=6000, help="training images (test: a quarter as many)")
    parser.add_argument("--synthetic", action="store_true", help="generated images instead of Fashion-MNIST's files")
    parser.add_argument("--storage-path", default="/tmp/boostray_runs")
    parser.add_argument("--name", default="fashion-mnist-port")
    args = parser.parse_args()
    train_fashion_mnist(num_workers=args.num_workers, epochs=args.epochs, members=args.members, subset=args.subset,
                        synthetic=args.synthetic, storage_path=args.storage_path, name=args.name)
