"""The practitioner's answers to imbalanced labels, as axes of any method: class-balanced loss weights,
a class-balanced sampler, and boosting started from class-balanced sample weights."""

import numpy as np
import pytest
import torch

from boostray.config import TrainConfig
from boostray.core.data.batches import epoch_indices
from boostray.core.data.datasets import load_dataset
from boostray.core.method.boosting import class_balanced, class_loss_weights, imbalance
from boostray.core.method.engine import Engine, train_in_process
from boostray.core.method.weights import LocalWeightStore
from boostray.errors import ConfigError


@pytest.fixture(scope="module")
def long_tailed():
    return load_dataset("digits", imbalance_ratio=10)


def test_balanced_loss_weights_average_one_and_equalise_the_classes(long_tailed):
    labels = long_tailed.train.labels
    w = class_loss_weights(labels, 10)
    assert w[labels].mean() == pytest.approx(1.0)  # the learning rate keeps its meaning
    totals = np.bincount(labels, weights=w[labels])
    np.testing.assert_allclose(totals, totals[0])  # every class weighs the same in an epoch
    assert imbalance(labels) == pytest.approx(np.bincount(labels).max() / np.bincount(labels).min())
    assert imbalance(labels) > 8


def test_the_balanced_sampler_draws_classes_equally_and_ranks_split_one_order(long_tailed):
    labels = long_tailed.train.labels
    draw = torch.as_tensor(class_balanced(labels))
    n = labels.size
    one = epoch_indices(n, 3, 7, 0, 1, draw)
    assert one.numel() == n  # an epoch of the same length
    counts = np.bincount(labels[one.numpy()], minlength=10)
    assert counts.min() > 0.6 * n / 10 and counts.max() < 1.4 * n / 10  # not the 10:1 of the labels
    ranks = [epoch_indices(n, 3, 7, r, 2, draw) for r in range(2)]
    merged = torch.stack(ranks, 1).reshape(-1)[:n]  # DistributedSampler strides one global order over the ranks
    assert torch.equal(merged, one)  # two ranks see exactly the samples one process sees
    assert not torch.equal(epoch_indices(n, 4, 7, 0, 1, draw), one)  # a new draw each epoch


def test_each_option_changes_training_and_start_weights_are_balanced(long_tailed):
    base = TrainConfig(epochs=2, members=2, method="cbnn")
    plain = train_in_process(base.spec(), long_tailed)
    for change in ({"class_weight": "balanced"}, {"sampler": "balanced"}, {"start_weights": "balanced"}):
        state = train_in_process(base.replace(**change).spec(), long_tailed)
        assert not np.array_equal(state.weights_history[-1], plain.weights_history[-1]) or \
            state.members[0].val_accuracy != plain.members[0].val_accuracy, change
    engine = Engine(base.replace(start_weights="balanced").spec(), long_tailed, store=LocalWeightStore())
    start = engine.initial_state().weights
    totals = np.bincount(long_tailed.train.labels, weights=start)
    assert start.sum() == pytest.approx(1.0) and np.allclose(totals, 0.1)


def test_the_balanced_sampler_needs_the_eval_correctness_pass():
    with pytest.raises(ConfigError, match="--error-source eval"):
        TrainConfig(sampler="balanced", error_source="running")
    with pytest.raises(ConfigError, match="drop --stream"):
        TrainConfig(sampler="balanced", dataset="parquet", stream=True)


def test_compare_lists_the_balanced_baselines_as_methods():
    from boostray.apps.compare import parse_methods

    specs = parse_methods("single,single:class_weight=balanced,single:sampler=balanced,cbnn-tail:start_weights=balanced")
    assert [s.overrides for s in specs] == [{}, {"class_weight": "balanced"}, {"sampler": "balanced"},
                                            {"start_weights": "balanced"}]


@pytest.mark.ray
def test_two_workers_train_with_balanced_loss_and_sampler(ray_cluster, tmp_path):
    from boostray.distributed.trainer import train

    run_dir, metrics = train(TrainConfig(workers=2, epochs=2, members=2, imbalance_ratio=10, class_weight="balanced",
                                         sampler="balanced", start_weights="balanced", output=str(tmp_path), name="bal"))
    assert all(per_rank[0] == per_rank[1] for per_rank in metrics["rank_weight_digests"])  # the ranks agree
    assert metrics["train_imbalance"] > 8 and metrics["test"]["accuracy"] > 0.2  # chance: 0.1, after 2 epochs
