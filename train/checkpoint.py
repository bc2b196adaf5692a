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

A checkpoint damaged afterwards (a truncated copy, a full disk) is skipped on resume: the run
continues from the newest intact one it keeps (``keep_checkpoints``), with a note, rather than
stopping or losing the steps before it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgen.atomic import fsync_folder, write_atomic, write_text_atomic
from archgen.backends.weights import load_weights, save_weights
from archgen.errors import ArchgenError
from archgen.staging import new_staging, replace_folder

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """The torch RNG (the loop draws nothing from numpy or ``random``: data is seeded per step)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    elapsed_s: float = 0.0  # training time up to ``step``, over all sessions (once loaded)


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, nn.Module],
    meta: dict[str, Any],
    *,
    keep: int,
    elapsed_s: float = 0.0,
) -> Checkpoint:
    """Write checkpoint ``step`` under ``root`` atomically and keep the ``keep`` newest.
    ``elapsed_s`` (training time so far) lets a resumed run's clock continue from it."""
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
            "elapsed_s": elapsed_s,
        }
        # Each file is synced before the folder's rename publishes it (write_atomic): after a
        # power cut the pointer never names a checkpoint whose data is still in the page cache.
        write_atomic(staging / "state.pt", lambda tmp: torch.save(state, tmp))
        meta_text = json.dumps({"step": step, **meta}, indent=2) + "\n"
        write_text_atomic(staging / "meta.json", meta_text)
        replace_folder(staging, final)  # a rerun of the same step after a crash replaces it
        fsync_folder(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):  # staging folders of killed writes
        shutil.rmtree(stale, ignore_errors=True)
    return Checkpoint(final, step, elapsed_s)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The checkpoint ``latest`` names, or None when there is none yet. Its files are not read
    here: :func:`restore_checkpoint` checks them and falls back to an older one."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    step = name.removeprefix("step_")
    if not step.isdigit():
        raise ArchgenError(
            f"{pointer} names {name!r}, not a checkpoint (step_NNNNNNN)",
            hint=f"write the name of an intact folder in {root} into it, or choose another --out",
        )
    return Checkpoint(root / name, int(step))


def _read_state(path: Path) -> dict[str, Any]:
    """``state.pt``, or an ArchgenError saying why it cannot be used."""
    if not path.is_file():
        raise ArchgenError(f"{path}: missing")
    try:
        state = torch.load(path, weights_only=True)
    # What a damaged zip or pickle raises depends on where it was cut.
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ArchgenError(f"{path}: not a readable checkpoint state ({exc})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "extra", "rng"} <= state.keys():
        raise ArchgenError(f"{path}: not a checkpoint state (keys missing)")
    return state


def load_checkpoint(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, nn.Module],
) -> Checkpoint:
    """Restore model, optimizer, extra modules and RNGs; return the checkpoint with the step to
    continue from and the training time so far (0 for checkpoints older than that field).
    Both files are read (and checked) before anything is restored, so a damaged checkpoint
    raises :class:`~archgen.errors.ArchgenError` and leaves model and optimizer as they were."""
    state = _read_state(checkpoint.path / "state.pt")
    load_weights(model, checkpoint.path / "weights.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    for key, module in extra.items():
        module.load_state_dict(state["extra"][key])
    set_rng_state(state["rng"])
    return Checkpoint(checkpoint.path, int(state["step"]), float(state.get("elapsed_s", 0.0)))


def restore_checkpoint(
    latest: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, nn.Module],
    log: Callable[[str], None],
) -> Checkpoint:
    """Load ``latest``, or when it is damaged the newest intact checkpoint before it (with a
    note naming what was skipped and why); return the one loaded. Raises
    :class:`~archgen.errors.ArchgenError` listing every problem when none is intact."""
    root = latest.path.parent
    older = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and p.name.removeprefix("step_").isdigit()),
        reverse=True,
    )
    candidates = [latest] + [
        Checkpoint(p, int(p.name.removeprefix("step_")))
        for p in older
        if int(p.name.removeprefix("step_")) < latest.step
    ]
    problems: list[str] = []
    for checkpoint in candidates:
        try:
            loaded = load_checkpoint(checkpoint, model, optimizer, extra)
        except ArchgenError as exc:
            problems.append(exc.message)
            continue
        if problems:
            log(
                f"note: skipped damaged checkpoint(s) ({'; '.join(problems)}); resuming from "
                f"step {loaded.step}, the newest intact one"
            )
        return loaded
    raise ArchgenError(
        f"no intact checkpoint to resume from in {root}: " + "; ".join(problems),
        hint="start a new run in another --out (or without --resume in an empty one)",
    )
