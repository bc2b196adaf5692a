"""Weights on disk: safetensors, written atomically and synced (:mod:`archgen.atomic`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from archgen.atomic import write_atomic
from archgen.errors import ArchgenError


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save ``model``'s parameters and buffers; tied tensors are stored once."""
    write_atomic(Path(path), lambda tmp: save_model(model, tmp, metadata=metadata))


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save named tensors (e.g. part of a model's state dict) that share no storage."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(Path(path), lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a file written by :func:`save_tensors` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ArchgenError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> ArchgenError:
    """A truncated or foreign file: safetensors reports it as a header error, which names
    neither the file nor what to do."""
    return ArchgenError(
        f"{path}: not a readable safetensors file ({exc})",
        hint="the file is truncated or damaged (an interrupted copy?); write it again, e.g. "
        "with archgen build or train",
    )


def weights_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/weights.safetensors`` for a folder written by build, train,
    distill or search (``best/``): every ``--weights`` option accepts both.

    The path returned is absolute: manifests record it, and a path relative to the working
    directory of the command that wrote them would name nothing once read from elsewhere."""
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        return path
    if (path / "weights.safetensors").is_file():
        return path / "weights.safetensors"
    # A run killed before its end has checkpoints but no final weights: point at the newest.
    latest = sorted((path / "checkpoints").glob("step_*/weights.safetensors"))
    hint = (
        f"a run stopped early: its newest checkpoint's weights are {latest[-1]}"
        if latest
        else "give a weights file, or a folder written by build, train, distill or a "
        "search's OUT/best"
    )
    raise ArchgenError(f"{path} is a folder without weights.safetensors", hint=hint)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights saved by :func:`save_weights` into ``model`` (strict: every name must match)."""
    path = Path(path)
    if not path.is_file():
        raise ArchgenError(f"{path}: weights file not found")
    hint = "were they built from the same spec? compare spec_hash in the manifests"
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from None
    except RuntimeError as exc:  # shape mismatches
        lines = str(exc).splitlines()
        first = next((ln.strip() for ln in lines if "size mismatch" in ln), str(exc))
        raise ArchgenError(f"{path}: weights do not match the model ({first})", hint=hint) from None
    if missing or unexpected:
        raise ArchgenError(
            f"{path}: weights do not match the model "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})",
            hint=hint,
        )
