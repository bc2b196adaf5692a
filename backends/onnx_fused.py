"""ONNX lowering of the fused nodes of ``fuse_kernels`` (``add_norm``).

The torch module of ``add_norm`` calls the custom ops ``archgen::add_rms_norm`` /
``archgen::add_layer_norm`` while it is exported (mixers/add_norm.py), so the exporter sees one
node per fused IR node and translates it here:

* for onnxruntime (the default export): its fused contrib ops
  ``com.microsoft.SkipSimplifiedLayerNormalization`` (RMS norm) and ``SkipLayerNormalization``
  (layer norm), one kernel that writes the normalised sum and the sum (output 3,
  ``input_skip_bias_sum``);
* for ``--portable`` (TensorRT and any ONNX runtime): standard ops, ``Add`` then the RMS norm
  written out (``ReduceMean`` of the square, ``Sqrt``, ``Div``, ``Mul``) or ``LayerNormalization``.
"""

from __future__ import annotations

from typing import Any

import torch

_DOMAIN = "com.microsoft"


def _skip_norm_schema(name: str) -> Any:
    """The part of onnxruntime's ``Skip(Simplified)LayerNormalization`` schema used here (the
    ONNX package knows no schema for onnxruntime's contrib ops)."""
    from onnx.defs import OpSchema

    optional = OpSchema.FormalParameterOption.Optional
    inputs = [
        OpSchema.FormalParameter("input", "T"),
        OpSchema.FormalParameter("skip", "T"),
        OpSchema.FormalParameter("gamma", "T"),
    ]
    if name == "SkipLayerNormalization":
        inputs.append(OpSchema.FormalParameter("beta", "T", param_option=optional))
    inputs.append(OpSchema.FormalParameter("bias", "T", param_option=optional))
    outputs = [
        OpSchema.FormalParameter("output", "T"),
        OpSchema.FormalParameter("mean", "U", param_option=optional),
        OpSchema.FormalParameter("inv_std_var", "U", param_option=optional),
        OpSchema.FormalParameter("input_skip_bias_sum", "T", param_option=optional),
    ]
    attrs = [OpSchema.Attribute("epsilon", OpSchema.AttrType.FLOAT, "eps", required=False)]
    types = [
        ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
        ("U", ["tensor(float)"], ""),
    ]
    return OpSchema(
        name, _DOMAIN, 1, inputs=inputs, outputs=outputs, type_constraints=types, attributes=attrs
    )


def add_norm_translation(*, contrib_ops: bool) -> dict[Any, Any]:
    """``custom_translation_table`` entries for the ``add_norm`` custom ops: onnxruntime's
    fused contrib ops with ``contrib_ops``, else standard ONNX ops."""
    from onnxscript import opset18 as op
    from onnxscript import values

    import archgen.mixers.add_norm  # noqa: F401  (registers the custom ops)

    if contrib_ops:
        skip_rms = values.Op(
            values.Opset(_DOMAIN, 1),
            "SkipSimplifiedLayerNormalization",
            _skip_norm_schema("SkipSimplifiedLayerNormalization"),
        )
        skip_ln = values.Op(
            values.Opset(_DOMAIN, 1),
            "SkipLayerNormalization",
            _skip_norm_schema("SkipLayerNormalization"),
        )

        def add_rms_norm(stream: Any, branch: Any, weight: Any, eps: float) -> Any:
            out, _, _, total = skip_rms(stream, branch, weight, _outputs=4, epsilon=float(eps))
            return total, out

        def add_layer_norm(stream: Any, branch: Any, weight: Any, bias: Any, eps: float) -> Any:
            out, _, _, total = skip_ln(stream, branch, weight, bias, _outputs=4, epsilon=float(eps))
            return total, out

    else:

        def add_rms_norm(stream: Any, branch: Any, weight: Any, eps: float) -> Any:
            total = op.Add(stream, branch)
            mean_square = op.ReduceMean(
                op.Mul(total, total), op.Constant(value_ints=[-1]), keepdims=1
            )
            eps_t = op.CastLike(op.Constant(value_float=float(eps)), total)
            rms = op.Sqrt(op.Add(mean_square, eps_t))
            return total, op.Mul(op.Div(total, rms), weight)

        def add_layer_norm(stream: Any, branch: Any, weight: Any, bias: Any, eps: float) -> Any:
            total = op.Add(stream, branch)
            return total, op.LayerNormalization(total, weight, bias, axis=-1, epsilon=float(eps))

    return {
        torch.ops.archgen.add_rms_norm.default: add_rms_norm,
        torch.ops.archgen.add_layer_norm.default: add_layer_norm,
    }
