"""The one forward+backward comparison of a vision module with its plainly written
``reference``: both run in float64 on the same input, and a fixed random weighting of the
output is backpropagated through each; output, input gradient and every parameter's gradient
must agree within the central tolerance table."""

from __future__ import annotations

import torch
from torch import nn

from tests.tolerances import assert_close


def perturbed(module: nn.Module, scale: float) -> nn.Module:
    """``module`` with every parameter moved off its initial value (zero biases, unit scales and
    zero-initialised tokens are special cases a bug can hide behind)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def assert_matches_reference(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Compare ``module(x)`` with ``module.reference(x)`` forward and backward; returns the
    production path's parameter gradients (in ``module.parameters()`` order) for further checks."""
    results = []
    for fn in (module, module.reference):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * w).sum().backward()
        grads = [p.grad.clone() for p in module.parameters()]
        results.append([out.detach(), xi.grad, *grads])
        module.zero_grad()
    for actual, expected in zip(*results, strict=True):
        assert_close(actual, expected)
    return results[0][2:]
