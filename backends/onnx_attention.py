"""Lower causal self-attention to onnxruntime's fused ``com.microsoft.GroupQueryAttention``.

The ONNX exporter's default translation of ``aten.scaled_dot_product_attention`` spells causal
attention out as ``MatMul -> Add(L x L mask) -> Softmax -> MatMul``: onnxruntime then builds the
mask, exponentiates the masked half and runs the softmax as separate passes over ``[B, H, L, L]``
(the transformer example at L=1024 spent 36 % of its kernel time in Softmax and 13 % in the mask
Add, benchmarks/results/backends_cpu.md). ``GroupQueryAttention`` is onnxruntime's fused kernel
(flash-style tiles, causal, grouped kv heads without materialising the repeat), on its CPU and
CUDA execution providers.

Only calls that are exactly causal self-attention take this path (``is_causal``, no mask, no
dropout, as many keys as queries, a multiple of kv heads, a head size that is a multiple of 8);
everything else, e.g. the sliding
window's band mask or a decode step's single query, keeps the exporter's own translation. The
result is an onnxruntime graph, not portable ONNX: TensorRT parses standard ops only, so its
backend exports without this table (:class:`LowerOptions.fused_attention`).
"""

from __future__ import annotations

from typing import Any

import torch

_DOMAIN = "com.microsoft"
INT32 = 6  # onnx.TensorProto.INT32


def _gqa_schema() -> Any:
    """The part of onnxruntime's ``GroupQueryAttention`` schema used here (the exporter needs a
    schema to build a node; the ONNX package knows none for onnxruntime's contrib ops)."""
    from onnx.defs import OpSchema

    optional = OpSchema.FormalParameterOption.Optional
    inputs = [
        OpSchema.FormalParameter("query", "T"),
        OpSchema.FormalParameter("key", "T", param_option=optional),
        OpSchema.FormalParameter("value", "T", param_option=optional),
        OpSchema.FormalParameter("past_key", "T", param_option=optional),
        OpSchema.FormalParameter("past_value", "T", param_option=optional),
        OpSchema.FormalParameter("seqlens_k", "M"),
        OpSchema.FormalParameter("total_sequence_length", "M"),
    ]
    outputs = [
        OpSchema.FormalParameter("output", "T"),
        OpSchema.FormalParameter("present_key", "T"),
        OpSchema.FormalParameter("present_value", "T"),
    ]
    attrs = [
        OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
        OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "key/value heads"),
        OpSchema.Attribute(
            "scale", OpSchema.AttrType.FLOAT, "default 1/sqrt(head_dim)", required=False
        ),
    ]
    types = [
        ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
        ("M", ["tensor(int32)"], ""),
    ]
    return OpSchema(
        "GroupQueryAttention",
        _DOMAIN,
        1,
        inputs=inputs,
        outputs=outputs,
        type_constraints=types,
        attributes=attrs,
    )


def gqa_translation() -> dict[Any, Any]:
    """The ``custom_translation_table`` entry for ``torch.onnx.export``."""
    from onnxscript import opset18 as op
    from onnxscript import values
    from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention

    gqa = values.Op(values.Opset(_DOMAIN, 1), "GroupQueryAttention", _gqa_schema())

    def scaled_dot_product_attention(
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Any:
        heads, kv_heads = query.shape[1], key.shape[1]
        head_dim = query.shape[3]
        fusable = (
            is_causal
            and attn_mask is None
            and dropout_p == 0.0
            and isinstance(heads, int)
            and isinstance(kv_heads, int)
            and isinstance(head_dim, int)
            and heads % kv_heads == 0
            and head_dim % 8 == 0  # the kernel's requirement (it rejects others at run time)
            and query.shape[2] == key.shape[2]  # self-attention: same (symbolic) length
        )
        if not fusable:
            return aten_scaled_dot_product_attention(
                query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )

        def packed(t: Any) -> Any:  # [B, H, L, Dh] -> [B, L, H*Dh]
            return op.Reshape(
                op.Transpose(t, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1])
            )

        shape = op.Shape(query)
        length = op.Gather(shape, op.Constant(value_int=2), axis=0)
        batch = op.Gather(shape, op.Constant(value_ints=[0]), axis=0)
        # Every row holds the whole prompt: seqlens_k = total length - 1 per batch entry.
        seqlens_k = op.Cast(op.Expand(op.Sub(length, op.Constant(value_int=1)), batch), to=INT32)
        attrs: dict[str, Any] = {"num_heads": heads, "kv_num_heads": kv_heads}
        if scale is not None:
            attrs["scale"] = float(scale)
        out, _, _ = gqa(
            packed(query),
            packed(key),
            packed(value),
            None,
            None,
            seqlens_k,
            op.Cast(length, to=INT32),
            _outputs=3,
            **attrs,
        )
        split = op.Reshape(out, op.Constant(value_ints=[0, 0, heads, head_dim]))
        return op.Transpose(split, perm=[0, 2, 1, 3])

    return {torch.ops.aten.scaled_dot_product_attention.default: scaled_dot_product_attention}
