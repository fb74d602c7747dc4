"""Checkpoints of a run, and where their parts live.

A checkpoint is one folder holding ``state.pt``: the rank's training state (model, optimizer, LR
schedule, loss scaler, SWA average) and the boosting state (sample weights, lambdas, history). The
members are written once each, ``members/round_NNNN.pt`` beside the checkpoints (a local folder or a
storage URI), so a checkpoint's size does not grow with M. Ray Train keeps its checkpoints under
``OUTPUT/.ray/NAME/``; a run in this process (``--workers 0``) keeps ``round_NNNN/`` folders there too,
the newest two, each written under a hidden name and renamed whole.
"""

from __future__ import annotations

import os
import shutil

import torch

from boostray.core.artifact import storage
from boostray.core.method.boost_state import BoostState

CHECKPOINT_FILE = "state.pt"
MEMBERS_FOLDER = "members"  # beside a run's checkpoints: each member's state and probabilities, written once


def member_file(members_dir: str, round_number: int) -> str:
    return storage.join(members_dir, f"round_{round_number:04d}.pt")


def save_checkpoint(directory: str, training: dict, state: BoostState, members_dir: str | None = None) -> None:
    """``training`` and ``state`` into ``directory``. With ``members_dir`` the members go there, once
    each, instead of into every checkpoint."""
    torch.save({**training, "boost": state.to_saveable(members=members_dir is None)},
               os.path.join(directory, CHECKPOINT_FILE))
    if members_dir is not None:  # a local folder, or a storage URI (core/artifact/storage.py)
        for i, member in enumerate(state.members):
            path = member_file(members_dir, member.round)
            if not storage.exists(path):  # written once; a rerun of the round writes it again first
                storage.torch_save(state.member_payload(i), path)


def read_checkpoint(directory: str) -> dict:
    """The checkpoint in ``directory`` (a folder or a storage URI): the training state's parts and, under
    "boost", the saved state."""
    return storage.torch_load(storage.join(directory, CHECKPOINT_FILE))


def load_boost_state(saved: dict, members_dir: str | None = None, with_members: bool = True) -> BoostState:
    """A checkpoint's boosting state, with the members it lists read from ``members_dir`` when the
    checkpoint does not carry them itself (older checkpoints do). ``with_members`` False: without the
    members' weights and probabilities (a rank other than 0, which keeps none)."""
    state = BoostState.from_saveable(saved)
    if not with_members:
        state.member_states, state.val_proba, state.test_proba = [], [], []
    elif state.members and not state.member_states:
        if members_dir is None:
            raise RuntimeError("this checkpoint keeps its members beside it; say where (members_dir)")
        for member in state.members:
            path = member_file(members_dir, member.round)
            if not storage.exists(path):
                raise RuntimeError(f"member of round {member.round} is missing: {path}")
            state.add_member_payload(storage.torch_load(path))
    return state


def round_dirs(checkpoint_dir: str) -> list[str]:
    """Finished ``round_NNNN`` checkpoints in ``checkpoint_dir``, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    names = sorted(d for d in os.listdir(checkpoint_dir) if d.startswith("round_") and ".partial-" not in d
                   and os.path.isfile(os.path.join(checkpoint_dir, d, CHECKPOINT_FILE)))
    return [os.path.join(checkpoint_dir, d) for d in names]


def write_round_checkpoint(checkpoint_dir: str, training: dict, state: BoostState, members_dir: str | None,
                           keep: int = 2) -> None:
    """``round_NNNN/`` for the rounds done so far, appearing whole or not at all; the newest ``keep`` stay."""
    final = os.path.join(checkpoint_dir, f"round_{state.rounds_done:04d}")
    tmp = f"{final}.partial-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    save_checkpoint(tmp, training, state, members_dir)
    os.replace(tmp, final)
    for old in round_dirs(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
