"""The one tolerance table of the test suite.

Keyed by dtype. Each entry says how it was calibrated. Numerical tests compare an implementation
with an independent reference computed in float64 on fresh random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    # float64 vs float64: two algorithms for the same math (chunked vs loop) differ only by
    # summation order; observed errors are ~1e-14 at the test sizes, 1e-9 leaves headroom for
    # exp/log of decays without hiding real bugs (a wrong index gives errors ~1e-1).
    torch.float64: Tolerance(atol=1e-9, rtol=1e-7),
    # float32 vs float64 reference: ~1e-6 relative observed for O(100)-length reductions.
    torch.float32: Tolerance(atol=2e-5, rtol=2e-4),
    # bfloat16 has 8 bits of mantissa: ~4e-3 relative per op, accumulated over a few ops.
    torch.bfloat16: Tolerance(atol=5e-2, rtol=5e-2),
}

# float32 *parameter* gradients vs a float64 reference. A parameter's gradient sums B*L per-token
# terms that largely cancel, so elements near zero carry absolute errors of ~1e-5 x the typical
# gradient size, whatever the algorithm. Calibrated on Mamba2 (B=2, L=203, D=24, 8 seeds): a plain
# float32 per-step loop already reaches 0.96x the float32 entry above on in_proj.weight, the
# chunked form 0.76x on A_log; this entry leaves ~5x headroom, a wrong term gives errors ~1e-1.
FLOAT32_PARAM_GRAD = Tolerance(atol=1e-4, rtol=1e-3)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, msg: str = ""
) -> None:
    tol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(
        actual.to(expected.dtype), expected, atol=tol.atol, rtol=tol.rtol, msg=msg or None
    )


def assert_within_rounding_of(
    actual: torch.Tensor,
    expected: torch.Tensor,
    magnitude: torch.Tensor,
    dtype: torch.dtype | None = None,
    msg: str = "",
) -> None:
    """Elementwise ``|actual - expected| <= atol + rtol * magnitude``, where ``magnitude`` is
    the float64 sum of the absolute values of the terms each output adds up. A sum of large
    terms that cancels to near zero carries rounding error of the size of its terms, not of its
    result, so an output-relative bound fails a correct float32
    kernel on some seeds (the Triton scan at L=600: 4.6e-5 absolute on an output of -0.023 whose
    terms reach 75: 1.9x the output-relative bound, 0.03x this one).
    A wrong index or term still gives errors of the order of the magnitude itself."""
    tol = TOLERANCES[dtype or actual.dtype]
    error = (actual.to(expected.dtype) - expected).abs()
    bound = tol.atol + tol.rtol * magnitude.to(expected.dtype)
    worst = (error / bound).max().item()
    assert worst <= 1.0, (
        f"{msg}: error reaches {worst:.2f}x the rounding bound atol + rtol * magnitude "
        f"(max error {error.max().item():.3g})"
    )
