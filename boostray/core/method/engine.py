"""One rank's boosting run without Ray: train a round, pass over the training set for correctness,
take the boosting step, capture the member, evaluate. Needs only PyTorch.

``Engine`` holds what one rank needs for the whole run (model, optimizer, LR schedule, batches);
``Engine.run`` trains every remaining round and calls ``on_round(metrics, state)`` after each, which is
where an edge reports and checkpoints (train_loop.py does it with Ray Train; ``train_in_process`` keeps
everything in this process). Ranks agree through torch.distributed collectives (collectives.py, a no-op
for one process) and a weight store (weight_store.py: Ray's object store, or an in-process twin).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from boostray.core.data.batches import ChunkedBatches, TrainBatches
from boostray.core.method.boost_state import BoostState, MemberRecord
from boostray.core.artifact.checkpoints import (
    MEMBERS_FOLDER, load_boost_state, read_checkpoint, round_dirs, save_checkpoint, write_round_checkpoint,
)
from boostray.core.method.boosting import (
    ChanceLevelWarning, boost_step, clamp_error, class_balanced, class_loss_weights, effective_sample_size,
)
from boostray.core.method.collectives import (
    REDUCED_BYTES, all_sum, barrier, combine_codes, combine_correctness, combine_rows, correctness_codes, gather_digests,
    shard_indices, weights_digest,
)
from boostray.core.method.combine import crossfit_proba, lambda_from_validation
from boostray.core.data.datasets import ImageDataset, normalization_tensors, normalize, release_unused_memory
from boostray.core.method.metrics import accuracy
from boostray.core.models import build_model
from boostray.core.method.recipe import DEFAULT_RECIPE, Recipe
from boostray.core.method.spec import RunSpec
from boostray.core.method.weights import LocalWeightStore

EVAL_BATCH = 1024  # SWA's batch-norm recount; on CUDA, the evaluation passes too


def eval_batch_size(device: torch.device, image_shape: tuple[int, ...]) -> int:
    """Images per forward of an evaluation pass. Large on CUDA. On a CPU about 50,000 pixels a batch, so
    that a batch's activations stay in cache (larger batches ran slower: docs/performance.md)."""
    if device.type == "cuda":
        return EVAL_BATCH
    pixels = int(np.prod(image_shape[1:])) if len(image_shape) == 3 else 1
    return int(max(16, min(EVAL_BATCH, 2 ** round(math.log2(50_000 / pixels)))))


def emit(line: str) -> None:
    """A progress line from rank 0. Not print(): Ray Train routes print through a logger and tees it."""
    sys.stdout.write(f"[boostray] {line}\n")
    sys.stdout.flush()


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Dropout randomness fixed by (seed, epoch, rank): a resumed run replays it."""
    torch.manual_seed((seed * 1_000_003 + epoch * 7919 + rank) % (2**63))


@dataclass
class RoundOutcome:
    """What a round's end decided about its member: lambda_m and the error behind it, the shrinkage."""

    error: float = math.nan
    raw_error: float = math.nan
    lambda_: float = 1.0
    eta: float = math.nan
    train_accuracy: float = math.nan
    val_proba: np.ndarray | None = None  # the network's, when the boosting step already needed it
    record_seconds: float = 0.0  # evaluation for the record inside the round: kept out of train_seconds
    digests: list | None = None  # every rank's digest of the weights it read back (None: not re-synced)


class Engine:
    """What one rank needs for the whole run: device, model, optimizer, LR schedule, batches.
    ``wrap_model`` wraps the network for data-parallel training (Ray Train's prepare_model);
    ``batches``, given the batching options, builds this rank's training batches where the edge feeds
    them (default: from the data in memory, or its chunks)."""

    def __init__(self, spec: RunSpec, data: ImageDataset, *, store: Any, rank: int = 0, world: int = 1,
                 device: torch.device | None = None,
                 wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 recipe: Recipe = DEFAULT_RECIPE, batches: Callable[[dict], Any] | None = None) -> None:
        self.spec, self.data, self.store, self.recipe = spec, data, store, recipe
        self.method = spec.method
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.eval_batch = eval_batch_size(self.device, data.input_shape)
        self.mean, self.std = normalization_tensors(data.mean, data.std, data.input_shape, self.device)
        torch.manual_seed(spec.seed)  # identical initialisation on every rank (DDP also broadcasts it)
        net = self.new_network()
        if spec.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.to(self.device)  # the plain network: what members, evals and checkpoints use
        if self.device.type == "cuda":  # process-wide settings of a rank's own process
            torch.backends.cudnn.benchmark = spec.cuda_autotune
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = spec.cuda_autotune
        wrapped = wrap_model(self.net) if wrap_model else self.net  # DDP first: torch.compile sees its hooks
        self.model = torch.compile(wrapped) if spec.compile else wrapped  # shares the network's parameters
        self.optimizer = recipe.make_optimizer(self.model.parameters(), spec.lr, spec.weight_decay)
        labels = np.asarray(data.train.labels)
        self.class_weights = None if spec.class_weight == "none" else torch.as_tensor(
            class_loss_weights(labels, data.num_classes), dtype=torch.float32, device=self.device)
        augment = spec.augment and data.augmentable
        batching = dict(batch_size=max(1, spec.batch_size // world), device=self.device, seed=spec.seed, rank=rank,
                        world=world, augment=augment, crop_padding=data.crop_padding if augment else 0,
                        hflip=data.hflip and augment)
        if batches is not None:  # the edge's own input (Ray Data on a cluster: distributed/ingest.py)
            self.batches = batches(batching)
        elif data.streamed or data.train.chunked is not None:  # read a chunk at a time (streaming.py)
            self.batches: TrainBatches | ChunkedBatches = ChunkedBatches(data.train, window=spec.stream_window, **batching)
        else:
            draw = class_balanced(labels) if spec.sampler == "balanced" else None
            self.batches = TrainBatches(data.train.images, data.train.labels, draw=draw, **batching)
        self.steps_per_epoch = len(self.batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.method.lr_factor(step / self.steps_per_epoch)
        )
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16 if spec.amp == "bf16" else torch.float16)
            if spec.amp and self.device.type == "cuda" else nullcontext()
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=spec.amp == "fp16" and self.device.type == "cuda")
        # SWA's running average: created eagerly (loading never depends on lazily built members) and
        # saved and restored with every checkpoint, like a stateful training callback.
        self.averaged = torch.optim.swa_utils.AveragedModel(self.net) if self.method.averaged_member else None

    def new_network(self) -> torch.nn.Module:
        """A freshly initialised network: the recipe's model, or the one the run's model name builds."""
        return build_model(self.spec.model, num_classes=self.data.num_classes, input_shape=self.data.input_shape,
                           kwargs=self.spec.model_kwargs, factory=self.recipe.model)

    # -- passes over data ---------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device, non_blocking=True), self.mean, self.std, self.data.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last_inputs else x

    @property
    def channels_last_inputs(self) -> bool:
        return self.spec.channels_last and len(self.data.input_shape) == 3

    def train_epoch(self, epoch: int, weights: torch.Tensor, record: bool) -> tuple[dict, tuple | None]:
        """One epoch with the weighted loss L = sum_i (n w_i) CE_i / |batch|; optionally record
        on-the-fly correctness (error_source=running)."""
        self.model.train()
        _seed_epoch(self.spec.seed, epoch, self.rank)
        n = weights.numel()
        # Losses and correctness are summed into two device scalars as the epoch goes: one synchronisation
        # per epoch. Keeping every batch's small tensors until the end would pin the host heap between the
        # batches' large transient ones, and a rank's memory would grow with the epoch's length.
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        seen, oks, rec_idx = 0, [], []
        for images, y, idx in self.batches.epoch(epoch):
            x = self.prepare(images)
            with self.autocast:
                logits = self.model(x)
                per_sample = self.recipe.per_sample_loss(logits.float(), y)
            scaled = per_sample if self.class_weights is None else per_sample * self.class_weights[y]
            loss = (n * weights[idx] * scaled).sum() / y.numel()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            ok = logits.detach().argmax(1) == y
            totals += torch.stack([per_sample.detach().sum(dtype=torch.float64), ok.sum(dtype=torch.float64)])
            seen += y.numel()
            if record:  # the round's last epoch under error_source=running: every sample's correctness
                oks.append(ok)
                rec_idx.append(idx)
        loss_sum, correct, seen = all_sum([*totals.tolist(), seen])
        stats = {"loss": loss_sum / seen, "accuracy": correct / seen, "lr": self.scheduler.get_last_lr()[0],
                 "samples": int(seen)}  # trained over all ranks (a sampler's padding included)
        recorded = (torch.cat(rec_idx).cpu(), torch.cat(oks).cpu()) if record else None
        return stats, recorded

    def eval_net(self, module: torch.nn.Module | None = None) -> tuple[torch.nn.Module, bool]:
        """The network an evaluation pass runs, in eval mode, and whether its inputs go channels-last.
        On a CPU that is a channels-last copy, whose convolutions run faster there; training keeps its
        own format."""
        net = self.net if module is None else module
        net.eval()
        if self.device.type == "cuda" or self.spec.channels_last or len(self.data.input_shape) != 3:
            return net, self.channels_last_inputs
        twin = copy.deepcopy(net).to(memory_format=torch.channels_last)
        return twin.eval(), True

    def forward_proba(self, net: torch.nn.Module, channels_last: bool, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            return torch.softmax(net(x).float(), dim=1).cpu()

    def predict_proba(self, images: np.ndarray, module: torch.nn.Module | None = None) -> torch.Tensor:
        """Softmax outputs of ``module`` (default: the network) on this rank's shard of ``images``, combined."""
        net, channels_last = self.eval_net(module)
        n = images.shape[0]
        index = shard_indices(n, self.rank, self.world)
        rows = []
        with torch.inference_mode():
            for start in range(0, index.size, self.eval_batch):
                batch = torch.from_numpy(images[index[start:start + self.eval_batch]])
                rows.append(self.forward_proba(net, channels_last, batch))
        local = torch.cat(rows) if rows else torch.zeros((0, self.data.num_classes))
        return combine_rows(index, local.clone(), n)  # clone: a normal tensor, not an inference one

    def eval_correctness(self) -> np.ndarray:
        """c_i on the training set from one eval-mode pass without augmentation (error_source=eval). Each
        rank scores its own share and contributes one byte a sample (combine_correctness): the ranks move
        N bytes a round, never the N x K probabilities."""
        net, channels_last = self.eval_net()
        labels = self.data.train.labels
        codes = np.zeros(len(labels), dtype=np.uint8)
        with torch.inference_mode():
            for idx, images in self.batches.eval_chunks(self.eval_batch):
                predicted = self.forward_proba(net, channels_last, torch.from_numpy(images)).argmax(1)
                correctness_codes(idx, predicted.numpy() == labels[idx], codes)
        return combine_codes(codes)

    def member_module(self) -> torch.nn.Module:
        """The network a member is taken from: the SWA average (BN statistics recomputed on the whole
        training set, identically on every rank) or the network itself."""
        if self.averaged is None:
            return self.net
        batches = (self.prepare(torch.from_numpy(images)) for images in self.batches.all_chunks(EVAL_BATCH))
        torch.optim.swa_utils.update_bn(batches, self.averaged, device=self.device)
        return self.averaged.module

    def initial_state(self) -> BoostState:
        """A fresh run's state: the sample weights start uniform, or class-balanced (--start-weights)."""
        state = BoostState.initial(len(self.data.train))
        if self.spec.start_weights == "balanced":
            state.weights = class_balanced(np.asarray(self.data.train.labels))
        return state

    # -- checkpoints --------------------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything besides the boosting state that a checkpoint must hold to resume bit for bit."""
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "averaged": self.averaged.state_dict() if self.averaged is not None else None}

    def save(self, directory: str, state: BoostState, members_dir: str | None = None) -> None:
        """A checkpoint of this rank's training and ``state`` in ``directory`` (checkpoints.py)."""
        save_checkpoint(directory, self.training_state(), state, members_dir)

    def restore(self, directory: str, members_dir: str | None = None) -> BoostState:
        """Load the checkpoint in ``directory`` into this engine; returns its boosting state."""
        saved = read_checkpoint(directory)
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.averaged is not None:
            self.averaged.load_state_dict(saved["averaged"])
        state = load_boost_state(saved["boost"], members_dir, with_members=self.rank == 0)
        state.resumed_at_rounds.append(state.rounds_done)
        if self.rank == 0:
            emit(f"resuming from the checkpoint of round {state.rounds_done}/{self.spec.members}")
        return state

    # -- rounds -------------------------------------------------------------------------------------
    def reinitialise(self, r: int) -> None:
        """A fresh network for round ``r`` of independent networks: its own initialisation (seed + r, the
        same on every rank), and an optimizer without momentum. The LR schedule restarts by itself
        (Method.lr_factor); the parameters are copied in place, so a DDP or compiled wrapper keeps them."""
        torch.manual_seed(self.spec.seed + r)
        fresh = self.new_network()
        with torch.no_grad():
            self.net.load_state_dict(fresh.state_dict())
        self.optimizer.state.clear()

    def probe(self, state: BoostState, clock: dict) -> None:
        """The network's validation accuracy at 3/4 of the last network's schedule (diagnostics'
        late_gain); its time stays out of train_seconds, like every pass made for the record."""
        started = time.perf_counter()
        state.probe_val_accuracy = accuracy(self.predict_proba(self.data.val.images).numpy(), self.data.val.labels)
        clock["record_seconds"] += time.perf_counter() - started

    def train_round(self, state: BoostState, r: int, weights: torch.Tensor, clock: dict) -> tuple | None:
        """The epochs of round ``r`` (0-based), with a progress line each; returns the last epoch's
        on-the-fly correctness when error_source is running."""
        spec, method = self.spec, self.method
        bounds = method.boundaries()
        start, end = (bounds[r - 1] if r else 0), bounds[r]
        total = method.total_epochs
        if method.independent and r > 0:
            self.reinitialise(r)
        recorded = None
        for epoch in range(start, end):
            record = method.reweights and spec.error_source == "running" and epoch == end - 1
            stats, rec = self.train_epoch(epoch, weights, record)
            if method.averages_after_epoch(epoch):
                self.averaged.update_parameters(self.net)
            recorded = rec if rec is not None else recorded
            session = time.perf_counter() - clock["started"]
            elapsed, done = clock["seconds_before"] + session, epoch + 1
            eta_s = session / (done - clock["first_epoch"]) * (total - done)
            stats.update(epoch=done, round=r + 1, elapsed=elapsed)
            state.epoch_log.append(stats)
            if done == method.probe_epoch():
                self.probe(state, clock)
            if self.rank == 0:
                emit(f"epoch {done}/{total} round {r + 1}/{spec.members} "
                     f"loss {stats['loss']:.4f} acc {stats['accuracy']:.4f} lr {stats['lr']:.4g} "
                     f"elapsed {elapsed:.1f}s eta {eta_s:.1f}s")
        return recorded

    def boost(self, state: BoostState, r: int, recorded: tuple | None) -> RoundOutcome:
        """Round ``r``'s boosting step on every rank: correctness combined over the ranks, rank 0's
        SAMME step published through the store, every rank reading it back."""
        spec, data = self.spec, self.data
        n, k = len(data.train), data.num_classes
        out = RoundOutcome()
        before = REDUCED_BYTES["correctness"]
        correct = combine_correctness(recorded[0], recorded[1], n) if spec.error_source == "running" else self.eval_correctness()
        state.error_pass_bytes.append(REDUCED_BYTES["correctness"] - before)
        out.train_accuracy = float(correct.mean())
        val_error = None
        if spec.lambda_source == "val":
            # The validation pass that every round of every method makes for the record, moved before
            # the update: the same cost for all methods, so it stays out of train_seconds.
            started = time.perf_counter()
            out.val_proba = self.predict_proba(data.val.images).numpy()
            val_error = 1.0 - accuracy(out.val_proba, data.val.labels)
            out.record_seconds = time.perf_counter() - started
        last = r == spec.members - 1
        entry = boost_round(state, correct, k, spec, last, val_error) if self.rank == 0 else None
        state.weights, out.digests = sync_weights(self.store, self.rank, r + 1, state, entry)
        entry = self.store.history()[-1]  # every rank takes e_m and lambda_m from the store
        out.error, out.raw_error, out.lambda_, out.eta = entry["error"], entry["raw_error"], entry["lambda"], entry["eta"]
        return out

    def capture(self, state: BoostState, r: int, out: RoundOutcome) -> np.ndarray:
        """Evaluate the round's network (or SWA average) for the record and, if it is a member
        candidate, keep it with lambda_m; returns its validation probabilities."""
        data, method, k = self.data, self.method, self.data.num_classes
        member_net = self.member_module() if method.is_member(r) else self.net
        val_p = out.val_proba
        if val_p is None or member_net is not self.net:
            val_p = self.predict_proba(data.val.images, member_net).numpy()
        test_p = self.predict_proba(data.test.images, member_net).numpy()
        state.last_val_proba, state.last_test_proba = val_p, test_p
        if method.is_member(r):
            if not method.reweights:  # lambda_m from the validation error: what combine=lambda weighs by
                out.error = clamp_error(1.0 - accuracy(val_p, data.val.labels), k, self.spec.min_error)
                out.lambda_ = float(lambda_from_validation(val_p[None], data.val.labels, k, self.spec.min_error)[0])
            state.members.append(MemberRecord(
                round=r + 1, epoch=method.boundaries()[r], lambda_=out.lambda_, error=out.error, raw_error=out.raw_error,
                train_accuracy=out.train_accuracy, val_accuracy=accuracy(val_p, data.val.labels),
                test_accuracy=accuracy(test_p, data.test.labels), eta=out.eta,
            ))
            if self.rank == 0:  # the members' weights and probabilities: rank 0 saves and returns them, alone
                state.member_states.append({kk: v.detach().cpu().clone() for kk, v in member_net.state_dict().items()})
                state.val_proba.append(val_p)
                state.test_proba.append(test_p)
        return val_p

    def run(self, state: BoostState, on_round: Callable[[dict, BoostState], None]) -> BoostState:
        """Train every round left in ``state`` (fresh, or restored from a checkpoint)."""
        spec, method = self.spec, self.method
        state.loop_wall = [time.time()]
        # The store's read-only view, not a copy: nothing writes into the weights (a boosting step makes
        # new ones), and on a node the ranks then share one copy of them.
        state.weights, digests = sync_weights(self.store, self.rank, state.rounds_done, state)
        bounds = method.boundaries()
        clock = {"started": time.perf_counter(), "first_epoch": bounds[state.rounds_done - 1] if state.rounds_done else 0,
                 "seconds_before": state.train_seconds, "record_seconds": 0.0}
        for r in range(state.rounds_done, spec.members):
            round_start, clock["record_seconds"] = time.perf_counter(), 0.0
            used = state.weights.astype(np.float32)  # what the loss weighs by (on a CPU, the same memory)
            recorded = self.train_round(state, r, torch.from_numpy(used).to(self.device), clock)
            if self.rank == 0:  # the sample-weights file and the checkpoints are rank 0's: the others keep no history
                state.weights_history.append(used)
            if method.reweights:
                out = self.boost(state, r, recorded)
                digests = out.digests
            else:
                out = RoundOutcome(train_accuracy=state.epoch_log[-1]["accuracy"])
            state.ess.append(effective_sample_size(state.weights))
            state.train_seconds += time.perf_counter() - round_start - out.record_seconds - clock["record_seconds"]
            val_p = self.capture(state, r, out)  # evaluation for the record: not part of train_seconds
            state.rounds_done = r + 1
            state.peak_chunks_held = max(state.peak_chunks_held, self.batches.peak_chunks)
            state.rank_digests.append(digests)  # one per rank, equal by construction (checked in sync_weights)
            metrics = round_metrics(state, self.data, spec)
            if self.rank == 0:
                emit(f"round {r + 1}/{spec.members}: member val acc {accuracy(val_p, self.data.val.labels):.4f} "
                     f"ensemble val acc {metrics['val_accuracy']:.4f}"
                     + (f" e={out.error:.4f} lambda={out.lambda_:.3f} eta={out.eta:.3g} ess={state.ess[-1]:.3f}"
                        if method.reweights else ""))
            on_round(metrics, state)
            release_unused_memory()  # the round's passes and weight updates: N-sized arrays the heap keeps
        state.loop_wall = state.loop_wall[:1] + [time.time()]
        return state


def boost_round(
    state: BoostState, correct: np.ndarray, num_classes: int, spec: RunSpec, last_round: bool,
    val_error: float | None = None,
) -> dict:
    """Rank 0's part of a round: e_m, lambda_m and the new weights (into ``state``); returns the
    history entry that the weight store publishes. ``val_error`` is the member's validation error,
    which lambda_m uses when ``lambda_source`` is ``val``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ChanceLevelWarning)
        result = boost_step(
            state.weights, correct, num_classes, eta=spec.eta, min_error=spec.min_error,
            update=not last_round, max_weight_ratio=spec.max_weight_ratio, ess_min=spec.ess_min,
            gamma=spec.mix_uniform, lambda_error=val_error if spec.lambda_source == "val" else None,
        )
    for w in caught:
        emit(f"warning: {w.message}")
    state.weights = result.weights
    return {"round": state.rounds_done + 1, "error": result.error, "raw_error": result.raw_error,
            "lambda": result.lambda_, "eta": result.eta}


def sync_weights(store: Any, rank: int, version: int, state: BoostState, entry: dict | None = None) -> tuple[np.ndarray, list]:
    """Rank 0 publishes ``state.weights`` as ``version`` with the (e_m, lambda_m) history, plus this
    round's ``entry``; after a barrier every rank reads that version back from the store. Returns the
    weights and every rank's digest of them; ranks that disagree stop the run."""
    if rank == 0:
        store.publish(version, state.weights, state.history() + ([entry] if entry else []))
    barrier()
    weights = store.fetch(version)
    digests = gather_digests(weights_digest(weights))
    if any(d != digests[0] for d in digests):
        raise RuntimeError(f"ranks hold different sample weights after sync of version {version}: {digests}")
    return weights, digests


def round_metrics(state: BoostState, data: ImageDataset, spec: RunSpec) -> dict:
    """What each round reports. The ensemble-so-far validation accuracy, what Tune selects on, is
    cross-fitted (combine.crossfit_proba): a rule that fits on validation data is not scored on it."""
    if state.val_proba:  # rank 0 (the others keep no member probabilities, and Ray Train reports rank 0's)
        val_acc = accuracy(ensemble_val_proba(state, data, spec), data.val.labels)
    else:
        val_acc = accuracy(state.last_val_proba, data.val.labels)
    out = {
        "round": state.rounds_done,
        "epoch": spec.method.boundaries()[state.rounds_done - 1],
        "val_accuracy": val_acc,
        "network_val_accuracy": accuracy(state.last_val_proba, data.val.labels),
        "members": len(state.members),
        "ess": state.ess[-1],
        "train_seconds": state.train_seconds,
    }
    if state.members and not math.isnan(state.members[-1].error):
        out.update({"error": state.members[-1].error, "lambda": state.members[-1].lambda_})
    return out


def ensemble_val_proba(state: BoostState, data: ImageDataset, spec: RunSpec) -> np.ndarray:
    """Out-of-fold validation probabilities of the members so far under the run's combination rule
    (accuracy only: the temperature, which cannot change it, is left out)."""
    lambdas = None if spec.lambdas_from_validation else np.array([m.lambda_ for m in state.members])
    return crossfit_proba(spec.method.combine, np.stack(state.val_proba), data.val.labels, num_classes=data.num_classes,
                          lambdas=lambdas, mode=spec.vote, calibrate=False)


def train_in_process(spec: RunSpec, data: ImageDataset, device: str | torch.device = "cpu",
                     on_round: Callable[[dict, BoostState], None] | None = None,
                     checkpoint_dir: str | None = None, keep: int = 2, recipe: Recipe = DEFAULT_RECIPE) -> BoostState:
    """A whole run in this process, without Ray: one rank, an in-process weight store. With
    ``checkpoint_dir`` every round is checkpointed there (round_NNNN/, the newest ``keep`` kept, members
    once each in members/), and a run that finds checkpoints resumes from the newest."""
    engine = Engine(spec, data, store=LocalWeightStore(), device=torch.device(device), recipe=recipe)
    state = engine.initial_state()
    members_dir = os.path.join(checkpoint_dir, MEMBERS_FOLDER) if checkpoint_dir else None
    if checkpoint_dir and (done := round_dirs(checkpoint_dir)):
        state = engine.restore(done[-1], members_dir)

    def report(metrics: dict, state: BoostState) -> None:
        if checkpoint_dir:
            write_round_checkpoint(checkpoint_dir, engine.training_state(), state, members_dir, keep)
        if on_round:
            on_round(metrics, state)

    return engine.run(state, report)
