"""The training configuration: one pydantic model whose fields are the CLI options and the YAML keys.

Each option is declared once, with its type, default, bounds and help; the argparse flags (cli.py), the
YAML loader, compare's per-method overrides and Tune's search space are all built from the declaration.
Precedence (timm-style): defaults < ``--config FILE`` < command-line flags. The resolved configuration is
saved as ``config.yaml`` beside the run's outputs. Bad values raise ``ConfigError`` with one line that
names the option (the CLI prints it and exits 2).
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from boostray.core.data.datasets import DATASETS, STREAMABLE
from boostray.core.method.methods import AXES, Method, create_method, preset_options
from boostray.core.models import OBJECT_PREFIX, resolve_factory
from boostray.core.method.spec import SPEC_FIELDS, RunSpec
from boostray.errors import ConfigError, require_extra


def _opt(default: Any, help: str, *, preset: bool = False, **bounds: Any) -> Any:
    """One option: its default, its help, whether its default comes from the method's preset, bounds."""
    return Field(default, description=help, json_schema_extra={"preset": preset}, **bounds)


_KIND = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "text",
         "int_parsing": "an integer", "float_parsing": "a number"}
_BOUND = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def describe_error(exc: ValidationError, key: str | None = None, path_style: bool = False) -> str:
    """The first validation error as one line naming the option: ``--eta must be <= 1, got 1.5``, or with
    ``path_style`` the YAML key path: ``scheduler.grace_period must be >= 1, got 0``."""
    err = exc.errors()[0]
    tags = {"loguniform", "uniform", "randint", "choice", "grid"}  # a discriminated union's branch, not a key
    parts = [str(p) for p in err["loc"] if not (path_style and p in tags)]
    key = key or (".".join(parts) if parts else "value")
    name = key if path_style else "--" + key.replace("_", "-")
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {name!r}" if path_style else f"unknown option {name}"
    if kind == "value_error":
        return f"{name}: {ctx.get('error')}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{name}.type must be one of {ctx.get('expected_tags', 'loguniform, uniform, randint, choice, grid')}"
    if kind == "too_short":
        return f"{name} must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{name} must match {ctx.get('pattern')}, got {got!r}"
    if kind == "missing":
        return f"{name} is required"
    if kind in _BOUND:
        bound = next(iter(ctx.values()))
        return f"{name} must be {_BOUND[kind]} {bound:g}, got {got!r}"
    if kind == "literal_error":
        return f"{name} must be one of {ctx.get('expected')}, got {got!r}"
    if kind in _KIND:
        return f"{name} must be {_KIND[kind]}, got {got!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{name} must be a mapping, got {got!r}"
    if kind == "list_type":
        return f"{name} must be a list, got {got!r}"
    return f"{name}: {err['msg']}"


class Options(BaseModel):
    """Base of the option models: strict types, no unknown keys, and a bad value raises ConfigError with
    one line naming the option (what the CLI prints before exiting 2)."""

    model_config = ConfigDict(strict=True, extra="forbid", protected_namespaces=())

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe_error(exc)) from None


class BoostConfig(Options):
    """The boosting and training options of a run: the method, its budget, the optimisation and the
    boosting step. ``boostray.BoostTrainer`` takes it; ``TrainConfig`` (every option of ``boostray train``)
    extends it with the data, the model name, the compute and where the run goes."""

    method: str = _opt("cbnn-tail", "a preset of the four method axes below: cbnn-tail (the default: the single "
                       "network's cosine schedule, SAMME re-weighting at eta 0.1 from half the budget on, members "
                       "from the tail chosen greedily from the final network on validation; the final network alone "
                       "when no member helps); cbnn (the paper's form); snapshot-boost; baselines single, checkpoint, "
                       "snapshot, fge, swa; deep (M independent networks, M x the cost). Any axis given explicitly "
                       "wins over the preset")
    schedule: Literal["decay", "step", "restart", "fge", "swa"] | None = _opt(
        None, "LR schedule: decay (one cosine over the budget), step (LR / 10 at 50 %% and at 75 %% of the budget, "
        "the papers' single baseline), restart (a cosine cycle per round: every member at an LR minimum), fge "
        "(decay, then a triangular cycle per round), swa", preset=True)
    placement: Literal["spread", "tail"] | None = _opt(
        None, "where the rounds end: spread (evenly over the budget) or tail (plain training until member 1 at "
        "--first-member x epochs, the other rounds evenly after it)", preset=True)
    first_member: float | None = _opt(None, "tail placement: member 1 at this fraction of the budget, in (0, 1] "
                                      "(default 0.5; fge: its classic start)", preset=True, gt=0, le=1)
    reweight: Literal["none", "samme"] | None = _opt(
        None, "re-weighting of the samples at each round's end: none or samme (AdaBoost SAMME with --eta)", preset=True)
    combine: Literal["lambda", "uniform", "greedy", "final"] | None = _opt(
        None, "which members enter the ensemble and with what weight: lambda (lambda_m-weighted), uniform, greedy "
        "(selection with replacement on validation data, grown from the final network; the final network alone "
        "when no member helps, or when the selection does not beat it cross-fitted), final (last network only)",
        preset=True)
    restart_lr: float | None = _opt(None, "restart schedule: peak LR of each cycle after member 1, as a fraction of "
                                    "--lr, in (0, 1] (default 1)", preset=True, gt=0, le=1)
    deep_budget: Literal["full", "split"] = _opt(
        "full", "method deep: each of the M networks trains the whole budget (full: M x the cost of one) or "
        "E/M epochs (split: the cost of one)")
    calibrate: bool | None = _opt(None, "fit one temperature for the ensemble's probabilities on validation data "
                                  "(NLL); on unless the preset says otherwise", preset=True)
    epochs: int = _opt(12, "training budget E in epochs, shared by all members", ge=1)
    members: int = _opt(4, "ensemble size M: one member candidate at the end of each of M rounds (1 <= M <= E); "
                        "--checkpoints is its former name", ge=1)
    lr: float = _opt(0.05, "peak learning rate (SGD, Nesterov momentum 0.9)", gt=0)
    weight_decay: float = _opt(5e-4, "SGD weight decay", ge=0)
    batch_size: int = _opt(64, "global batch size, split evenly over the workers", ge=1)
    augment: bool = _opt(True, "random crop with padding (+ horizontal flip where the data allows); with "
                         "--image-size on Ray with --stream, random resized crops instead")
    class_weight: Literal["none", "balanced"] = _opt(
        "none", "per-class loss weights: balanced, proportional to 1 / class frequency (mean 1 over the training "
        "samples, so the learning rate keeps its meaning); the practitioner's baseline for imbalanced labels")
    sampler: Literal["uniform", "balanced"] = _opt(
        "uniform", "the order of an epoch: uniform (a permutation) or balanced (as many draws, with replacement, "
        "each class equally often; needs --error-source eval)")
    start_weights: Literal["uniform", "balanced"] = _opt(
        "uniform", "boosting's starting sample weights: uniform, or balanced (each class the same total weight)")
    # boosting
    eta: float | None = _opt(None, "shrinkage of the sample-weight update, in (0, 1]; 1 is plain SAMME (default: cbnn-tail 0.1, other presets 0.3)",
                             preset=True, gt=0, le=1)
    min_error: float = _opt(1e-4, "clamp of the weighted error so lambda stays finite", gt=0, lt=0.5)
    error_source: Literal["eval", "running"] = _opt(
        "eval", "eval: one extra eval pass per round for correctness; running: last epoch's on-the-fly correctness")
    vote: Literal["soft", "hard"] = _opt("soft", "how the shipped members' outputs are averaged (which members and "
                                         "their weights: --combine): soft, a weighted mean of their probabilities; "
                                         "hard, a weighted count of the classes they predict")
    max_weight_ratio: float | None = _opt(None, "cap max(w)/mean(w) after each update (default: no cap)", ge=1)
    lambda_source: Literal["val", "train"] | None = _opt(
        None, "error behind lambda_m: val (the member's validation error) or train (weighted training error, "
        "plain SAMME); default val", preset=True)
    ess_min: float | None = _opt(None, "adaptive shrinkage: lower a round's eta so the effective sample size stays "
                                 ">= this (in (0, 1]; default: off)", gt=0, le=1)
    mix_uniform: float = _opt(0.0, "gamma: mix the new weights with uniform, w <- (1 - gamma) w + gamma / n (in [0, 1])",
                              ge=0, le=1)
    # numerics
    amp: Literal["bf16", "fp16"] | None = _opt(None, "autocast dtype on CUDA: bf16 or fp16")
    channels_last: bool = _opt(False, "channels-last memory format for training (faster convolutions on GPUs and, "
                               "for small_cnn, on CPUs: docs/performance.md; evaluation passes on a CPU use it "
                               "either way)")
    compile: bool = _opt(False, "torch.compile the training forward and backward (a one-off compile of tens of "
                         "seconds that pays on long runs: docs/performance.md)")
    cuda_autotune: bool = _opt(True, "on CUDA: cudnn.benchmark (convolution kernels chosen by timing) and TF32 "
                               "matmuls and convolutions; --no-cuda-autotune keeps PyTorch's exact, reproducible "
                               "kernels. No effect on CPUs")
    seed: int = _opt(0, "seed of the model's initialisation, the sampling order and the augmentation")

    @model_validator(mode="after")
    def _check_method(self) -> "BoostConfig":
        preset_options(self.method)  # an unknown method names the presets
        self.resolved().build_method()  # the axes against the budget
        if self.sampler == "balanced" and self.error_source == "running":
            raise ConfigError("--sampler balanced draws with replacement, so an epoch misses samples: it needs "
                              "--error-source eval")
        return self

    def resolved(self):
        """A copy with every preset-dependent option (axes, eta, lambda_source, calibrate) filled in from
        the method's preset where it was not given: what a run is trained with, saved and compared."""
        options = preset_options(self.method)
        return self.model_copy(update={k: options[k] for k in PRESET_KEYS if getattr(self, k) is None and k in options})

    def build_method(self) -> Method:
        """The Method (schedule, rounds, members) of the resolved options."""
        return create_method(self.method, epochs=self.epochs, members=self.members,
                             deep_budget=self.deep_budget, **{k: getattr(self, k) for k in AXES})


class TrainConfig(BoostConfig):
    """Every option of ``boostray train``; also the keys of its YAML config and of config.yaml."""

    # data
    dataset: str = _opt("digits", "data set: digits (embedded), fashion-mnist, cifar10, cifar100, parquet, imagefolder")
    data_dir: str | None = _opt(None, "folder holding the data set's files (fashion-mnist default: /usr/share/datasets/fashion-mnist)")
    download: bool = _opt(False, "let torchvision download CIFAR into --data-dir (off: never touch the network)")
    imbalance_ratio: float | None = _opt(None, "make the training split long-tailed with this max/min class ratio (e.g. 10, 100)", ge=1)
    val_fraction: float = _opt(0.1, "fraction of train held out for validation when the data has no validation split", gt=0, lt=1)
    test_holdout_max: int | None = _opt(10_000, "data without a test split: 20 %% of train is held out as test, at "
                                        "most this many samples (every member's test probabilities are kept)", ge=1)
    val_holdout_max: int | None = _opt(10_000, "data without a validation split: --val-fraction of train is held "
                                       "out for validation, at most this many samples", ge=1)
    train_subset: int | None = _opt(None, "train on this many (seeded) training samples only", ge=2)
    stream: bool = _opt(False, "parquet, imagefolder: keep the training images in their files (a local folder every "
                        "node mounts, or a storage URI such as s3://bucket/data) and read them a group at a time, a "
                        "Parquet row group or 256 image files: on Ray, by Ray Data tasks on any node that has CPUs "
                        "beside the workers; the driver reads only the labels and a sample (for data larger than memory)")
    stream_window: int = _opt(4, "--stream: about this many groups' samples are shuffled together (on Ray, the groups "
                              "one Ray Data read task reads, in a new order every epoch, more where groups are small: "
                              "as many as fit 4 MiB decoded; with --workers 0, groups taken in a seeded permutation "
                              "each epoch)", ge=1)
    image_size: int | None = _opt(None, "imagefolder, parquet: fit every image to N x N pixels, for images of "
                                  "different sizes: the shorter side resized to N, the centre cropped (so are "
                                  "images sent to a served ensemble); training on Ray with --stream takes random "
                                  "resized crops instead (8-100 %% of the area, aspect 3/4 to 4/3, as torchvision's "
                                  "RandomResizedCrop)", ge=4)
    feature_columns: list[str] | None = _opt(None, "parquet: train on these numeric columns as features, as given "
                                             "(one list column, or several scalar columns; comma-separated), "
                                             "not as an image column", min_length=1)
    label_column: str = _opt("label", "parquet: the column holding the integer class labels", min_length=1)
    standardize: bool = _opt(False, "features: standardise each feature by its mean and std over the training split")
    # model
    model: str = _opt("small_cnn", "the network: a built-in name (see 'boostray models') or your own factory or "
                      "nn.Module class as package.module:name (importable on every node: PYTHONPATH, or ray job submit "
                      "--working-dir / py_modules), called with those of num_classes, in_channels, image_size and "
                      "input_shape that it names, e.g. torchvision.models:resnet18")
    model_kwargs: dict[str, Any] = _opt({}, "keyword arguments for the model, as JSON on the command line "
                                        "(e.g. '{\"width\": 64}') or a mapping in YAML")
    # compute
    workers: int = _opt(1, "Ray Train workers (DDP ranks); 0 trains in this process without Ray", ge=0)
    cpus_per_worker: float = _opt(1.0, "CPUs reserved per worker (and its torch threads)", gt=0)
    gpu: bool = _opt(False, "one GPU per worker (NCCL), or with --workers 0 this machine's GPU; otherwise CPU workers (gloo)")
    max_failures: int = _opt(0, "worker failures to recover from (Ray FailureConfig); -1 for unlimited", ge=-1)
    # run
    name: str | None = _opt(None, "run name; the same name resumes an interrupted run (default: method-dataset-model-time)")
    output: str = _opt(os.path.join("~", "boostray_runs"), "folder that receives the run directory, or a storage URI "
                       "(file://, s3://, gs://, hdfs://; needs --workers 1 or more): Ray Train's checkpoints go there too")
    address: str | None = _opt(None, "Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    dashboard: bool = _opt(False, "run Ray's dashboard (http://127.0.0.1:8265) on the local Ray that this command "
                           "starts: ten more Python processes at its start; no effect on a cluster")
    verbose: bool = _opt(False, "show Ray's routine INFO lines (Ray Train's report of every round, and the like) on "
                         "the console; without it they go to the run's log, OUTPUT/.ray/NAME/ray.log")
    mlflow: str | None = _opt(None, "log the finished run to MLflow (the mlflow extra): a tracking URI, or auto "
                              "(a bare --mlflow): MLflow's embedded SQLite store under --output", min_length=1)

    @model_validator(mode="after")
    def _check_together(self) -> "TrainConfig":
        """What no single field can check: names that must exist, and options that depend on each other."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if not self.model.startswith(OBJECT_PREFIX):  # a Python object comes with the run (BoostTrainer)
            resolve_factory(self.model)  # a built-in name, or an import path that imports here
        if self.feature_columns and self.dataset not in ("parquet",):
            raise ConfigError(f"--feature-columns names Parquet columns; --dataset {self.dataset} has none")
        if self.sampler == "balanced" and self.stream:
            raise ConfigError("--sampler balanced draws samples from anywhere in the split: drop --stream")
        if self.feature_columns and self.stream:
            raise ConfigError("--feature-columns trains from memory: drop --stream")
        if self.stream and self.dataset not in STREAMABLE:
            raise ConfigError(f"--stream reads {' or '.join(STREAMABLE)} data, not {self.dataset}")
        if self.workers and self.batch_size < self.workers:
            raise ConfigError(f"--batch-size ({self.batch_size}) must be >= --workers ({self.workers})")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name must be a plain folder name, got {self.name!r}")
        if self.mlflow is not None:
            require_extra("mlflow", "mlflow", "--mlflow")
        return self

    def replace(self, **changes: Any) -> "TrainConfig":
        """A checked copy with ``changes``."""
        return TrainConfig(**{**self.model_dump(), **changes})

    def spec(self) -> RunSpec:
        """What the run trains, resolved, as the Ray-free core takes it."""
        resolved = self.resolved()
        return RunSpec(**{k: getattr(resolved, k) for k in SPEC_FIELDS}, method=resolved.build_method())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def saved(self) -> dict[str, Any]:
        """The resolved options as a run's config.yaml keeps them: without the run name, so that
        ``--config RUN_DIR/config.yaml`` repeats the run under a new one."""
        return {k: v for k, v in self.resolved().to_dict().items() if k != "name"}


class ServeOptions(Options):
    """Options of ``boostray serve`` and the typed argument of Serve's application builder
    (``serve run boostray.apps.serving:build_app run_dir=...``, pipelines/serve_config.yaml). Not strict:
    ``serve run``'s key=value arguments arrive as text ("2" must become 2)."""

    model_config = ConfigDict(strict=False, extra="forbid", protected_namespaces=())

    run_dir: str = Field(description="a run directory written by 'boostray train' (a path or a storage URI)")
    model_name: str | None = _opt(None, "the NAME in the URL (default: the run's name)")
    replicas: int = _opt(1, "fixed number of replicas", ge=1)
    autoscale: str | None = _opt(None, "autoscale between MIN and MAX replicas instead, as MIN:MAX",
                                 pattern=r"^[0-9]+:[0-9]+$")
    cpus_per_replica: float = _opt(1.0, "CPUs per replica", gt=0)
    gpus_per_replica: float = _opt(0.0, "GPUs per replica (0: CPU)", ge=0)
    max_batch_size: int = _opt(32, "requests batched into one forward", ge=1)
    batch_wait_ms: float = _opt(5.0, "how long a batch waits to fill, in ms, while other requests are in the "
                                "replica; a lone request never waits", ge=0)
    max_instances: int = _opt(256, "instances allowed per request, and per forward of a batch of requests", ge=1)
    max_body_bytes: int = _opt(16 << 20, "request body limit in bytes; larger gets 413", ge=1)
    cascade: bool = _opt(False, "stop evaluating members once the answer cannot change")
    forward: Literal["auto", "stacked", "loop"] = _opt(
        "auto", "all-members forward: vmap-stacked or a loop (auto: stacked on GPU, loop on CPU)")

    @model_validator(mode="after")
    def _check_autoscale(self) -> "ServeOptions":
        if self.autoscale is not None:
            low, high = (int(v) for v in self.autoscale.split(":"))
            if low > high or high < 1:
                raise ConfigError(f"--autoscale needs MIN <= MAX and MAX >= 1, got {self.autoscale!r}")
        return self

    def autoscale_range(self) -> tuple[int, int] | None:
        if self.autoscale is None:
            return None
        low, high = (int(v) for v in self.autoscale.split(":"))
        return low, high


class PredictOptions(Options):
    """Options of ``boostray predict`` (Ray Data batch inference over Parquet)."""

    batch_size: int = _opt(256, "rows per batch", ge=1)
    actors: int = _opt(1, "predictor actors", ge=1)
    cpus_per_actor: float = _opt(1.0, "CPUs reserved per actor", gt=0)
    gpu: bool = _opt(False, "one GPU per actor")
    cascade: bool = _opt(False, "cascade evaluation (same labels, fewer member passes)")
    id_column: str = _opt("id", "column carried over to identify rows", min_length=1)
    image_column: str = _opt("image", "image struct {bytes} or numeric list", min_length=1)


FIELDS = TrainConfig.model_fields
#: options that say where a run goes and what runs it, not what it trains: a finished run is reused, and
#: a comparison's or sweep's runs share them, whatever their values
PLACEMENT_OPTIONS = ("output", "address", "dashboard")
REMOVED_KEYS = {"loader_workers"}  # batches are gathered in memory now (batches.py): no DataLoader workers
RENAMED_KEYS = {"checkpoints": "members"}  # former name: new name (read from older YAML and config.yaml files)


def renamed(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with former option names replaced by the current ones."""
    return {RENAMED_KEYS.get(k, k): v for k, v in values.items()}
PRESET_KEYS = tuple(k for k, f in FIELDS.items() if (f.json_schema_extra or {}).get("preset"))


def coerce_option(key: str, value: Any) -> Any:
    """One option's value checked against its declaration (type and bounds), e.g. a YAML or override value."""
    if key not in FIELDS:
        raise ConfigError(f"unknown option --{key.replace('_', '-')}")
    try:
        return _adapter(key).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, key=key)) from None


@functools.cache
def _adapter(key: str) -> TypeAdapter:
    field = FIELDS[key]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(annotation, config=ConfigDict(strict=True))


# What a run was trained with when its saved config.yaml predates an option (or its current default).
LEGACY_VALUES: dict[str, Any] = {"lambda_source": "train", "ess_min": None, "mix_uniform": 0.0, "test_holdout_max": None,
                                 "val_holdout_max": None}


def saved_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml's options as the run was trained. Keys written before an option existed take
    that time's behaviour: before the method axes, each method was today's preset of the same name
    (cbnn: the paper's form, as today) without a temperature."""
    saved = renamed(saved)
    out = {**LEGACY_VALUES, **saved}
    if "schedule" not in saved and saved.get("method"):
        name = "cbnn-paper" if saved["method"] == "cbnn" else saved["method"]
        axes = {k: v for k, v in preset_options(name).items() if k not in ("eta", "lambda_source")}
        out = {**axes, "calibrate": False, **out}
    return out


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


def parse_options(data: dict, *, unknown: Callable[[str], str], where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A mapping of TrainConfig keys (dashes or underscores) with each value checked; ``unknown(key)``
    words the error for a key that is no option, ``where`` prefixes a bad value's."""
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        key = RENAMED_KEYS.get(key, key)
        if key in REMOVED_KEYS:  # written by an older boostray into a saved config.yaml: no effect now
            continue
        if key not in FIELDS or key in exclude:
            raise ConfigError(unknown(str(raw_key)))
        try:
            out[key] = coerce_option(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{where.format(key=raw_key)}: {exc}") from None
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """Read a YAML file of TrainConfig keys; unknown keys are an error."""
    return parse_options(load_yaml_mapping(path), unknown=lambda key: f"unknown key {key!r} in {path}", where=path)
