"""The training configuration: one dataclass whose fields are the CLI options and the YAML keys.

Precedence (timm-style): dataclass defaults < ``--config FILE`` < command-line flags. The resolved
configuration is saved as ``config.yaml`` beside the run's outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from boostray.errors import ConfigError


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # data
    dataset: str = _opt("digits", "data set: digits (embedded), fashion-mnist, cifar10, cifar100, parquet, imagefolder")
    data_dir: str | None = _opt(None, "folder holding the data set's files (fashion-mnist default: /usr/share/datasets/fashion-mnist)")
    download: bool = _opt(False, "let torchvision download CIFAR into --data-dir (off: never touch the network)")
    imbalance_ratio: float | None = _opt(None, "make the training split long-tailed with this max/min class ratio (e.g. 10, 100)")
    val_fraction: float = _opt(0.1, "fraction of train held out for validation when the data has no validation split")
    train_subset: int | None = _opt(None, "train on this many (seeded) training samples only")
    # model and method
    model: str = _opt("small_cnn", "model name from the registry (see 'boostray models')")
    method: str = _opt("cbnn", "a preset of the four method axes below: cbnn (boosted checkpoints, the recommended "
                       "setting); cbnn-paper (the paper's form); snapshot-boost; baselines single, checkpoint, snapshot, "
                       "fge, swa. Any axis given explicitly wins over the preset")
    schedule: str | None = _opt(None, "LR schedule: decay (one cosine over the budget), restart (a cosine cycle per round: "
                                "every member at an LR minimum), fge (decay, then a triangular cycle per round), swa", choices=(None, "decay", "restart", "fge", "swa"), preset=True)
    placement: str | None = _opt(None, "where the rounds end: spread (evenly over the budget) or tail (plain training "
                                 "until member 1 at --first-member x epochs, the other rounds evenly after it)", choices=(None, "spread", "tail"), preset=True)
    first_member: float | None = _opt(None, "tail placement: member 1 at this fraction of the budget, in (0, 1] (default 0.5; fge: its classic start)", preset=True)
    reweight: str | None = _opt(None, "re-weighting of the samples at each round's end: none or samme (AdaBoost SAMME with --eta)", choices=(None, "none", "samme"), preset=True)
    combine: str | None = _opt(None, "how members combine: lambda (lambda_m-weighted), uniform, greedy (selection with "
                               "replacement on validation data, never below the best member there), final (last network only)", choices=(None, "lambda", "uniform", "greedy", "final"), preset=True)
    restart_lr: float | None = _opt(None, "restart schedule: peak LR of each cycle after member 1, as a fraction of --lr, in (0, 1] (default 1)", preset=True)
    calibrate: bool | None = _opt(None, "fit one temperature for the ensemble's probabilities on validation data (NLL); on unless the preset says otherwise", preset=True)
    epochs: int = _opt(12, "training budget E in epochs, shared by all checkpoints")
    checkpoints: int = _opt(4, "number of checkpoints / rounds M (1 <= M <= E)")
    lr: float = _opt(0.05, "peak learning rate of the cosine schedule (SGD, Nesterov momentum 0.9)")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    batch_size: int = _opt(64, "global batch size, split evenly over the workers")
    augment: bool = _opt(True, "random crop with padding (+ horizontal flip where the data allows)")
    # boosting
    eta: float | None = _opt(None, "shrinkage of the sample-weight update, in (0, 1]; 1 is plain SAMME (default 0.3)", preset=True)
    min_error: float = _opt(1e-4, "clamp of the weighted error so lambda stays finite")
    error_source: str = _opt("eval", "eval: one extra eval pass per round for correctness; running: last epoch's on-the-fly correctness", choices=("eval", "running"))
    vote: str = _opt("soft", "how members are combined: soft (weighted probabilities), hard (weighted votes)", choices=("soft", "hard"))
    max_weight_ratio: float | None = _opt(None, "cap max(w)/mean(w) after each update (default: no cap)")
    lambda_source: str | None = _opt(None, "error behind lambda_m: val (the member's validation error; won on validation data in the README's comparisons) or train (weighted training error, plain SAMME); default val", choices=(None, "val", "train"), preset=True)
    ess_min: float | None = _opt(None, "adaptive shrinkage: lower a round's eta so the effective sample size stays >= this (in (0, 1]; default: off)")
    mix_uniform: float = _opt(0.0, "gamma: mix the new weights with uniform, w <- (1 - gamma) w + gamma / n (in [0, 1])")
    # compute
    workers: int = _opt(1, "Ray Train workers (DDP ranks); 0 runs in-process without a Ray cluster")
    cpus_per_worker: float = _opt(1.0, "CPUs reserved per worker")
    gpu: bool = _opt(False, "one GPU per worker (NCCL); otherwise CPU workers (gloo)")
    amp: str | None = _opt(None, "autocast dtype on CUDA: bf16 or fp16", choices=(None, "bf16", "fp16"))
    channels_last: bool = _opt(False, "channels-last memory format (faster convolutions on GPUs)")
    compile: bool = _opt(False, "torch.compile the training forward and backward (a one-off compile of tens of seconds; "
                         "pays on long runs: +23 % images/s for small_cnn on one CPU core here)")
    max_failures: int = _opt(0, "worker failures to recover from (Ray FailureConfig); -1 for unlimited")
    seed: int = _opt(0, "seed of the model's initialisation, the sampling order and the augmentation")
    # run
    name: str | None = _opt(None, "run name; the same name resumes an interrupted run (default: method-dataset-model-time)")
    output: str = _opt(os.path.join("~", "boostray_runs"), "folder that receives the run directory")
    address: str | None = _opt(None, "Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")

    def validate(self) -> "TrainConfig":
        """Check every value before anything runs; raise ConfigError naming the option."""
        from boostray.data import DATASETS
        from boostray.models import list_models

        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(list_models())}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        resolved = self.resolved()
        resolved.build_method()
        for key, value, ok, what in (
            ("lr", self.lr, self.lr > 0, "> 0"),
            ("weight-decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("eta", resolved.eta, 0 < resolved.eta <= 1, "in (0, 1]"),
            ("min-error", self.min_error, 0 < self.min_error < 0.5, "in (0, 0.5)"),
            ("workers", self.workers, self.workers >= 0, ">= 0"),
            ("cpus-per-worker", self.cpus_per_worker, self.cpus_per_worker > 0, "> 0"),
            ("max-failures", self.max_failures, self.max_failures >= -1, ">= -1"),
            ("val-fraction", self.val_fraction, 0 < self.val_fraction < 1, "in (0, 1)"),
        ):
            if not ok:
                raise ConfigError(f"--{key} must be {what}, got {value}")
        if self.imbalance_ratio is not None and self.imbalance_ratio < 1:
            raise ConfigError(f"--imbalance-ratio must be >= 1, got {self.imbalance_ratio}")
        if self.max_weight_ratio is not None and self.max_weight_ratio < 1:
            raise ConfigError(f"--max-weight-ratio must be >= 1, got {self.max_weight_ratio}")
        if self.ess_min is not None and not 0 < self.ess_min <= 1:
            raise ConfigError(f"--ess-min must be in (0, 1], got {self.ess_min}")
        if not 0 <= self.mix_uniform <= 1:
            raise ConfigError(f"--mix-uniform must be in [0, 1], got {self.mix_uniform}")
        if self.train_subset is not None and self.train_subset < 2:
            raise ConfigError(f"--train-subset must be >= 2, got {self.train_subset}")
        if self.workers and self.batch_size < self.workers:
            raise ConfigError(f"--batch-size ({self.batch_size}) must be >= --workers ({self.workers})")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name must be a plain folder name, got {self.name!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{f.name.replace('_', '-')} must be one of {choices}, got {getattr(self, f.name)!r}")
        return self

    def resolved(self) -> "TrainConfig":
        """A copy with every preset-dependent option (axes, eta, lambda_source, calibrate) filled in from
        the method's preset where it was not given: what a run is trained with, saved and compared."""
        from boostray.methods import preset_options

        options = preset_options(self.method)
        return dataclasses.replace(self, **{k: options[k] for k in PRESET_KEYS if getattr(self, k) is None and k in options})

    def build_method(self):
        """The Method (schedule, rounds, members) of the resolved options."""
        from boostray.methods import AXES, create_method

        return create_method(self.method, epochs=self.epochs, checkpoints=self.checkpoints,
                             **{k: getattr(self, k) for k in AXES})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        """The resolved configuration, minus the run name, so ``--config`` repeats the run under a new name."""
        data = {k: v for k, v in self.to_dict().items() if k != "name"}
        with open(path, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)


FIELD_TYPES = {f.name: f for f in dataclasses.fields(TrainConfig)}
REMOVED_KEYS = {"loader_workers"}  # batches are gathered in memory now (batches.py): no DataLoader workers
PRESET_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("preset"))

# What a run was trained with when its saved config.yaml predates an option (or its current default).
LEGACY_VALUES: dict[str, Any] = {"lambda_source": "train", "ess_min": None, "mix_uniform": 0.0}


def saved_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml's options as the run was trained. Keys written before an option existed take
    that time's behaviour: before the method axes, each method was today's preset of the same name
    (cbnn: today's cbnn-paper) without a temperature."""
    from boostray.methods import preset_options

    out = {**LEGACY_VALUES, **saved}
    if "schedule" not in saved and saved.get("method"):
        name = "cbnn-paper" if saved["method"] == "cbnn" else saved["method"]
        axes = {k: v for k, v in preset_options(name).items() if k not in ("eta", "lambda_source")}
        out = {**axes, "calibrate": False, **out}
    return out


def _coerce(key: str, value: Any) -> Any:
    """Check a YAML value's type against the field's annotation (int for float is fine)."""
    annotation = str(FIELD_TYPES[key].type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"config key {key!r} may not be null")
    if annotation.startswith("bool"):
        ok = isinstance(value, bool)
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"config key {key!r} must be {annotation.split(' |')[0]}, got {value!r}")
    return value


def load_yaml_mapping(path: str, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping, or a one-line ConfigError saying what is wrong with it."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of key: value")
    return data


def read_config_file(path: str) -> dict[str, Any]:
    """Read a YAML file of TrainConfig keys (dashes or underscores); unknown keys are an error."""
    data = load_yaml_mapping(path)
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in REMOVED_KEYS:  # written by an older boostray into a saved config.yaml: no effect now
            continue
        if key not in FIELD_TYPES:
            raise ConfigError(f"unknown key {raw_key!r} in {path}")
        out[key] = _coerce(key, value)
    return out
