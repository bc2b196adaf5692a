"""The contract every archgen mixer module follows.

A token mixer maps ``[B, L, D] -> [B, L, D]``. It has two implementations of the same math:

* ``forward``    -- the production path: chunked/parallel, no Python loop over ``L``, exportable
                    with a dynamic sequence length (torch.onnx dynamo, torch.compile).
* ``reference``  -- the obvious, loop-level path used only by tests to prove ``forward`` right.

Causal mixers also decode one token at a time:

* ``init_state(batch, max_len=...)`` returns the decode state as a tuple of tensors (so a decode
  step can be exported to ONNX with the state as explicit inputs/outputs); ``max_len`` is the
  longest sequence the state must serve (the model's ``max_seq_len``), for mixers that
  preallocate a state growing with the sequence (SCOUT's checkpoint cache);
* ``step(x_t, state, pos)`` consumes one token ``x_t: [B, D]`` at position ``pos`` (a 0-d int64
  tensor, so exported decode graphs take it as an input) and returns ``(y_t, new_state)``.

Running ``step`` over a sequence must reproduce ``forward`` (tests check it for every mixer).
"""

from __future__ import annotations

import torch
from torch import nn

DecodeState = tuple[torch.Tensor, ...]


class TokenMixer(nn.Module):
    """Base class of sequence (token) mixers: see the module docstring for the contract."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Loop-level reference of ``forward`` (slow; tests only)."""
        raise NotImplementedError

    def output_projection(self) -> nn.Linear | None:
        """The last linear map of the mixer, whose output is the mixer's output (None if it has
        no such single map). Zeroing it makes the mixer output exactly zero: a weight converter
        starts a newly inserted mixer that way, so the model first computes what it did."""
        return None

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        raise NotImplementedError(f"{type(self).__name__} does not support incremental decoding")

    def step(
        self, x: torch.Tensor, state: DecodeState, pos: torch.Tensor
    ) -> tuple[torch.Tensor, DecodeState]:
        raise NotImplementedError(f"{type(self).__name__} does not support incremental decoding")


class ChannelMixer(nn.Module):
    """Base class of per-token (channel) mixers. They are position-wise, so decoding needs no
    state: ``step`` is ``forward`` on one token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_projection(self) -> nn.Linear | None:
        """As :meth:`TokenMixer.output_projection`."""
        return None

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def param_dtype_kwargs(device: torch.device | str | None, dtype: torch.dtype | None) -> dict:
    """``factory_kwargs`` for ``nn.Linear`` & co., as torch's own modules spell it."""
    return {"device": device, "dtype": dtype}


def exporting() -> bool:
    """Whether ``torch.export`` (and so the ONNX exporter) is tracing this call.

    ``torch.compiler.is_exporting()`` without a torch bug (pytorch/pytorch#176347, fixed after
    2.11): Dynamo folded that call to True under ``torch.compile`` too, so a compiled Mamba took
    its export path (on an H200 with torch 2.11, a compiled hybrid model ran 10x slower than
    eager: benchmarks/results/cuda.md). The flag read here is set by ``torch.export`` alone, and
    Dynamo reads a module global's current value while it traces."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)
