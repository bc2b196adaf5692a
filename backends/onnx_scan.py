"""Lower Mamba-1's selective scan to one onnxruntime custom-op node, ``archgen.SelectiveScan``.

The exporter's standard-ops form of the scan is an ONNX ``Scan`` over ``L/8`` chunks whose body
is a doubling scan of small elementwise ops: onnxruntime ran the Mamba-1 examples at 0.16-0.40x
eager with it (benchmarks/results/backends_cpu.md; ``Scan`` was 50 % of the kernel time).
With ``LowerOptions.fused_scan`` the export runs under
:func:`archgen.mixers.kernels.selective_scan.exported_as_custom_op`: Mamba then records its scan
as the torch custom op ``archgen::selective_scan_softplus`` (the eager C++ kernel's module; the
raw dt projection and the dt bias as a seventh input), and the translation below turns that op
into an ``archgen.SelectiveScan`` node with ``delta_softplus=1``: the kernel computes
``Δ = softplus(dt + bias)`` itself (mamba-ssm's ``delta_softplus``), saving onnxruntime's slow
``Softplus`` (19 % of the fused graph's time at L=512) and the ``Add``. The plain
``archgen::selective_scan`` (six inputs, Δ given) becomes the node without the attribute.
onnxruntime runs it with archgen's custom-op library
(:mod:`archgen.mixers.kernels.ort_selective_scan`, the eager kernel's math, built on first use);
:mod:`archgen.backends.onnx` registers that library on every session of a graph that imports the
``archgen`` domain. Other ONNX runtimes (TensorRT) do not know the op: ``--portable`` (and the
TensorRT backend) export the ``Scan`` form.

No math here: the node is a call of the mixer's own kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from archgen.mixers.kernels.ort_selective_scan import DOMAIN, OP_TYPE

INPUTS = ("x", "dt", "A", "B", "C", "D")


def _schema() -> Any:
    """The op's schema for the exporter (it builds nodes from schemas); not registered with the
    ONNX package, which has no business knowing archgen's ops."""
    from onnx.defs import OpSchema

    return OpSchema(
        OP_TYPE,
        DOMAIN,
        1,
        inputs=[
            *(OpSchema.FormalParameter(name, "T") for name in INPUTS),
            OpSchema.FormalParameter(
                "dt_bias", "T", param_option=OpSchema.FormalParameterOption.Optional
            ),
        ],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)"], "the scan runs in float32")],
        attributes=[
            OpSchema.Attribute(
                "delta_softplus",
                OpSchema.AttrType.INT,
                "1: dt is the raw dt projection, the scan uses softplus(dt + dt_bias)",
                required=False,
            )
        ],
    )


def scan_translation() -> dict[Any, Any]:
    """The ``custom_translation_table`` entry for ``torch.onnx.export``: ``archgen::selective_scan
    (x, dt, A, B, C, D) -> y`` becomes one ``archgen.SelectiveScan`` node."""
    from onnxscript import values

    import archgen.mixers.kernels.selective_scan  # noqa: F401  (registers the torch op)

    scan = values.Op(values.Opset(DOMAIN, 1), OP_TYPE, _schema())

    def selective_scan(x: Any, dt: Any, a_mat: Any, b: Any, c: Any, d_skip: Any) -> Any:
        return scan(x, dt, a_mat, b, c, d_skip)

    def selective_scan_softplus(
        x: Any, dt: Any, a_mat: Any, b: Any, c: Any, d_skip: Any, dt_bias: Any
    ) -> Any:
        return scan(x, dt, a_mat, b, c, d_skip, dt_bias, delta_softplus=1)

    return {
        torch.ops.archgen.selective_scan.default: selective_scan,
        torch.ops.archgen.selective_scan_softplus.default: selective_scan_softplus,
    }
