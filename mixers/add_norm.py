"""``add_norm``: a residual add fused with the norm that reads its sum (IR kind ``add_norm``).

``s = stream + branch``, ``n = norm(s)``; the module returns ``(s, n)``. Its parameters are the
norm's, under the norm's names (``weight``; ``bias`` for a layer norm), so a checkpoint of the
unfused model loads into the fused one and back.

Implementations, chosen per call:

* eager torch (CPU, and CUDA without triton): ``stream + branch`` then ``F.rms_norm`` /
  ``F.layer_norm``, the very calls of the unfused ``residual_add`` and ``nn.RMSNorm``, so the
  fused model computes bit for bit what the unfused one does;
* Triton (CUDA with triton, float32 / bfloat16 / float16): one program per row reads both inputs
  once and writes both outputs (``archgen.mixers.kernels.add_norm_triton``); backward by
  autograd through the torch formula (recomputed from the saved sum), as the unfused model's;
* ONNX export: the custom ops ``archgen::add_rms_norm`` / ``archgen::add_layer_norm``, which the
  exporter lowers to onnxruntime's ``SkipSimplifiedLayerNormalization`` /
  ``SkipLayerNormalization`` or, for ``--portable``, to standard ops
  (``archgen.backends.onnx_fused``).

``reference`` writes the math out in the input's dtype (float64 in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import exporting
from archgen.mixers.kernels import HAS_TRITON, triton_available

NORMS = ("rmsnorm", "layernorm")


@torch.library.custom_op("archgen::add_rms_norm", mutates_args=())
def add_rms_norm(
    stream: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, rms_norm(s) * weight)`` with ``s = stream + branch`` (export's opaque node)."""
    s = stream + branch
    return s, F.rms_norm(s, (s.shape[-1],), weight, eps)


@add_rms_norm.register_fake
def _(stream: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple:
    return torch.empty_like(stream), torch.empty_like(stream)


@torch.library.custom_op("archgen::add_layer_norm", mutates_args=())
def add_layer_norm(
    stream: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, layer_norm(s) * weight + bias)`` with ``s = stream + branch``."""
    s = stream + branch
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


@add_layer_norm.register_fake
def _(
    stream: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple:
    return torch.empty_like(stream), torch.empty_like(stream)


class AddNorm(nn.Module):
    """The ``add_norm`` node.

    >>> s, n = AddNorm(8)(torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    >>> s.shape, n.shape
    (torch.Size([2, 3, 8]), torch.Size([2, 3, 8]))
    """

    def __init__(
        self,
        d_model: int,
        *,
        norm: str = "rmsnorm",
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm, self.eps, self.d_model = norm, eps, d_model
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))
        self.bias = (
            nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype))
            if norm == "layernorm"
            else None
        )
        self.last_impl = ""  # which implementation the last call ran (tests, benchmarks)

    def extra_repr(self) -> str:
        return f"{self.d_model}, norm={self.norm}, eps={self.eps}"

    def impl(self, x: torch.Tensor) -> str:
        """``"export"``, ``"triton"`` or ``"torch"`` for an input like ``x``."""
        if exporting():
            return "export"
        if (
            HAS_TRITON
            and triton_available(x.device.type)
            and x.device.type == "cuda"
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        ):
            return "triton"
        return "torch"

    def forward(
        self, stream: torch.Tensor, branch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        impl = self.last_impl = self.impl(stream)
        if impl == "export":
            if self.bias is None:
                return add_rms_norm(stream, branch, self.weight, self.eps)
            return add_layer_norm(stream, branch, self.weight, self.bias, self.eps)
        if impl == "triton":
            from archgen.mixers.kernels import add_norm_triton

            return add_norm_triton.add_norm(stream, branch, self.weight, self.bias, self.eps)
        return self.torch_forward(stream, branch)

    def torch_forward(
        self, stream: torch.Tensor, branch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unfused model's own calls (``residual_add``, ``nn.RMSNorm`` / ``nn.LayerNorm``)."""
        s = stream + branch
        shape = (self.d_model,)
        if self.bias is None:
            return s, F.rms_norm(s, shape, self.weight, self.eps)
        return s, F.layer_norm(s, shape, self.weight, self.bias, self.eps)

    def reference(
        self, stream: torch.Tensor, branch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The formula written out, in the inputs' dtype."""
        s = stream + branch
        if self.bias is None:
            rms = torch.sqrt((s * s).mean(dim=-1, keepdim=True) + self.eps)
            return s, s / rms * self.weight
        mean = s.mean(dim=-1, keepdim=True)
        var = ((s - mean) ** 2).mean(dim=-1, keepdim=True)
        return s, (s - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
