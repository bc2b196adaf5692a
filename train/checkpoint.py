"""Checkpoints that a kill cannot corrupt.

A checkpoint is a folder ``checkpoints/step_0000100/`` holding

* ``weights.safetensors`` -- the model (same format as ``archgen build``),
* ``state.pt``            -- optimizer state, extra trainable modules (e.g. distillation adapters),
                             RNG states and the step (the data position: batches are a pure
                             function of ``(seed, step)``, see :mod:`archgen.train.data`),
* ``meta.json``           -- step and the last validation metrics, for people.

It is written to a hidden staging folder and renamed into place, and only then does the
``checkpoints/latest`` pointer (replaced atomically) name it. A run killed at any instant leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgen.backends.weights import load_weights, save_weights
from archgen.errors import ArchgenError
from archgen.staging import new_staging, replace_folder

LATEST = "latest"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rng_state() -> dict[str, Any]:
    """The torch RNG (the loop draws nothing from numpy or ``random``: data is seeded per step)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, nn.Module],
    meta: dict[str, Any],
    *,
    keep: int,
) -> Checkpoint:
    """Write checkpoint ``step`` under ``root`` atomically and keep the ``keep`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    staging = new_staging(final)
    try:
        save_weights(model, staging / "weights.safetensors", {"step": str(step)})
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "extra": {k: m.state_dict() for k, m in extra.items()},
            "rng": rng_state(),
        }
        torch.save(state, staging / "state.pt")
        (staging / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
        replace_folder(staging, final)  # a rerun of the same step after a crash replaces it
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):  # staging folders of killed writes
        shutil.rmtree(stale, ignore_errors=True)
    return Checkpoint(final, step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The checkpoint ``latest`` names, or None when there is none yet."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not (path / "state.pt").is_file() or not (path / "weights.safetensors").is_file():
        raise ArchgenError(f"{pointer} names {name}, which is missing or incomplete")
    return Checkpoint(path, int(name.removeprefix("step_")))


def load_checkpoint(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, nn.Module],
) -> int:
    """Restore model, optimizer, extra modules and RNGs; return the step to continue from."""
    load_weights(model, checkpoint.path / "weights.safetensors")
    state = torch.load(checkpoint.path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    for key, module in extra.items():
        module.load_state_dict(state["extra"][key])
    set_rng_state(state["rng"])
    return int(state["step"])
