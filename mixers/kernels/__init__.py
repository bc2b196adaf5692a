"""Optional compiled kernels of archgen's mixers (built on first use, with a torch fallback)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

# Checked once: under torch.compile the scan choice must not trace an import-system call.
HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_available(device_type: str) -> bool:
    """Whether the Triton kernels (``selective_scan_triton``) can run on ``device_type``:
    triton installed, and a CUDA device -- or the CPU under the Triton interpreter
    (``TRITON_INTERPRET=1``, for tests)."""
    if not HAS_TRITON:
        return False
    return device_type == "cuda" or (
        device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    )


def register_scan_backward(op: Any, backward_op: Callable[..., tuple[Any, ...]]) -> None:
    """Make ``backward_op(*inputs, grad_y)`` the autograd formula of the scan ``op(*inputs)``
    (both kernels' scans save their inputs and recompute the states in the backward)."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx: Any, grad_y: Any) -> tuple[Any, ...]:
        return backward_op(*ctx.saved_tensors, grad_y.contiguous())

    op.register_autograd(backward, setup_context=setup_context)
