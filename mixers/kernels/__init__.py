"""Optional compiled kernels of archgen's mixers (built on first use, with a torch fallback)."""

from __future__ import annotations

import importlib.util
import os

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
