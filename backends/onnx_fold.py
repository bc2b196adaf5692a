"""Fold products of weights in an exported ONNX graph.

A module that folds a BatchNorm into the conv before it in eval mode (EfficientViM's depthwise
convs and FFN, mixers/efficientvim.py) computes ``conv.weight * scale`` from two parameters.
The exporter's constant folding (onnxscript) leaves such a ``Mul`` alone once a factor has more
than 8192 elements, so the file would hold the weight and the BatchNorm's scale separately and
multiply them at load time. :func:`fold_weight_products` replaces each ``Mul`` of two
initializers by one initializer holding the product (computed in the initializers' dtype, the
same IEEE products the runtime would compute), where the product is no larger than its larger
factor, so the file never grows.
"""

from __future__ import annotations

from typing import Any


def _names_read(node: Any) -> set[str]:
    """Every value name ``node`` and its subgraphs (If/Loop bodies) read."""
    names = set(node.input)
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs]:
            for inner in sub.node:
                names |= _names_read(inner)
    return names


def fold_weight_products(proto: Any) -> int:
    """Fold ``Mul(initializer, initializer)`` nodes of ``proto``'s main graph in place and drop
    the initializers nothing reads afterwards; returns how many nodes were folded."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept, folded = [], []
    for node in graph.node:
        if node.op_type == "Mul" and len(node.input) == 2 and all(v in inits for v in node.input):
            a, b = (numpy_helper.to_array(inits[v]) for v in node.input)
            product = a * b
            if (
                product.dtype == a.dtype == b.dtype
                and product.size <= max(a.size, b.size)
                and node.output[0] not in outputs
            ):
                folded.append(numpy_helper.from_array(product, node.output[0]))
                continue
        kept.append(node)
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    read = set().union(*(_names_read(n) for n in graph.node)) | outputs
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    return len(folded)
