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
* ``step(x_t, state, pos, mask=None)`` consumes one token ``x_t: [B, D]`` at position ``pos``
  and returns ``(y_t, new_state)``. ``pos`` is an int64 tensor, so exported decode graphs take
  it as an input: 0-d (every sequence at the same position) or ``[B]`` (a position per
  sequence, counting that sequence's real tokens only).

Padded batches (the decode-step ONNX graph; left padding is the usual layout) also pass
``mask: bool [B, T]``, the validity of the T = ``steps so far + 1`` tokens this state has seen,
the current one last. A step whose token is padding (``mask[:, -1]`` False) must leave the state
as it was -- or, for a cache that grows by one slot per step, add a slot that later steps mask
out -- and return finite values (which the caller ignores). A mixer that cannot do this raises
rather than decode wrongly.

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
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
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


def step_positions(pos: torch.Tensor) -> torch.Tensor:
    """``pos`` of :meth:`TokenMixer.step` (0-d or ``[B]``) as ``[1 or B, 1]``: broadcasts over
    the batch either way, and RoPE gives one angle row per sequence."""
    return pos.reshape(-1, 1)


def is_real(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Whether the current token of each sequence is real (``[B]`` bool), or None (all are)."""
    return None if mask is None else mask[:, -1]


def keep_unless_real(mask: torch.Tensor | None, new: DecodeState, old: DecodeState) -> DecodeState:
    """``new`` where the current token is real, ``old`` where it is padding (a padded step must
    not change a recurrent state). ``torch.where``, not a blend by multiplication: a padded
    step's values may be anything (even inf), and 0 * inf would poison the state."""
    real = is_real(mask)
    if real is None:
        return new
    return tuple(
        torch.where(real.view(-1, *([1] * (n.dim() - 1))), n, o)
        for n, o in zip(new, old, strict=True)
    )


def history_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Attention mask ``[B, 1, 1, T]`` over a KV history whose last slot is the current token.

    The current token always attends to itself, even when it is padding: a padded query with no
    key at all would give NaN (softmax over nothing), and NaN in its cached key/value would
    reach later steps (a masked score weighs its value by 0, and 0 * NaN is NaN)."""
    if mask is None:
        return None
    visible = torch.cat([mask[:, :-1], torch.ones_like(mask[:, -1:])], dim=1)
    return visible[:, None, None, :]


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
