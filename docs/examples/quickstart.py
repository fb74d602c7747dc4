import boostray  # first: a local Ray that boostray starts then listens on 127.0.0.1 only
import numpy as np
from ray.train import RunConfig, ScalingConfig
from sklearn.datasets import load_digits
digits = load_digits()
images = (digits.images * 16).clip(0, 255).astype(np.uint8)  # (N, 8, 8) uint8: grey images
trainer = boostray.BoostTrainer(
    "small_cnn",  # a built-in name, an import path ("torchvision.models:resnet18") or your nn.Module class
    datasets={"train": (images[:1500], digits.target[:1500]), "test": (images[1500:], digits.target[1500:])},
    boost_config=boostray.BoostConfig(epochs=6, members=3),
    scaling_config=ScalingConfig(num_workers=2),  # leave out to train in this process, without Ray
    run_config=RunConfig(name="digits-api", storage_path="/tmp/boostray_runs"),
)
result = trainer.fit()
print(result.path, result.metrics["test"]["accuracy"], result.ensemble.predict(images[1500:1505]))
