"""Weights on disk: safetensors, written atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from archgen.errors import ArchgenError


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save ``model``'s parameters and buffers; tied tensors are stored once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_model(model, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights saved by :func:`save_weights` into ``model`` (strict: every name must match)."""
    path = Path(path)
    if not path.is_file():
        raise ArchgenError(f"{path}: weights file not found")
    hint = "were they built from the same spec? compare spec_hash in the manifests"
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
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
