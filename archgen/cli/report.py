"""Rich tables for ``archgen check``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from archgen.api import CheckReport
from archgen.cli.format import human_bytes, human_count
from archgen.ir.cost import NodeCost


def print_check(console: Console, report: CheckReport, spec_path: Path) -> None:
    if report.graph.model.image is not None:
        print_image_check(console, report, spec_path)
        return
    m = report.graph.model
    title = f"{m.name} ({m.task}, d_model={m.d_model}, vocab={m.vocab_size}) at L={report.seq_len}"
    t = report.total
    console.print(
        _cost_table(
            title,
            report,
            "state/KV",
            lambda c: human_bytes(c.state_bytes) if c.state_bytes else "-",
            human_bytes(t.state_bytes),
        )
    )
    if m.mask_token is not None:
        # a bidirectional denoiser re-reads the whole sequence on every decoding step
        tail = (
            f"{t.flops / 1e9:.2f} GFLOPs per denoiser call on {report.seq_len} tokens (a "
            f"generation costs one call per decoding step, its NFE); mask token {m.mask_token}; "
            "no decode state (bidirectional)"
        )
    else:
        tail = (
            f"{t.flops / 1e9:.2f} GFLOPs per sequence of {report.seq_len} tokens, "
            f"decode state {human_bytes(t.state_bytes)} (float32, batch 1)"
        )
    console.print(
        f"{spec_path}: ok -- {human_count(t.params)} parameters, {tail}",
        markup=False,
        soft_wrap=True,
    )


def print_image_check(console: Console, report: CheckReport, spec_path: Path) -> None:
    """An image-classification model, costed at its image size: parameters, FLOPs and the
    activations a training step keeps per image (no decode state: nothing is decoded)."""
    m = report.graph.model
    assert m.image is not None
    size = f"{m.image.image_size}x{m.image.image_size}x{m.image.in_channels}"
    title = f"{m.name} ({m.task}, {m.image.num_classes} classes) at {size} images"
    t = report.total
    console.print(
        _cost_table(
            title,
            report,
            "activations",
            lambda c: human_bytes(c.activation_bytes),
            human_bytes(t.activation_bytes),
        )
    )
    console.print(
        f"{spec_path}: ok -- {human_count(t.params)} parameters, {t.flops / 1e9:.3f} GFLOPs "
        f"({t.flops / 2e9:.3f} G multiply-adds) per {size} image, "
        f"{human_bytes(t.activation_bytes)} of training activations per image (float32)",
        markup=False,
        soft_wrap=True,
    )


def print_passes(console: Console) -> None:
    """``archgen passes``: every registered pass, its exactness and its options."""
    import dataclasses
    import sys
    import typing

    from archgen.passes import PASS_REGISTRY

    for name, cls in PASS_REGISTRY.items():
        kind = "analysis" if cls.analysis else ("exact" if cls.exact else "approximate")
        doc = cls.__doc__ or ""
        if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature: no docstring
            doc = sys.modules[cls.__module__].__doc__ or ""
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        summary = summary.removeprefix(f"``{name}``: ")
        console.print(f"[bold]{name}[/bold] ({kind}): ", end="")
        console.print(summary, markup=False)
        hints = typing.get_type_hints(cls)
        for f in cls.options():
            if f.name == "extra":
                console.print(f"    any other option: {f.metadata.get('doc', '')}", markup=False)
                continue
            default = (
                "required"
                if f.default is dataclasses.MISSING
                else f"default {'null' if f.default is None else f.default}"
            )
            console.print(
                f"    {f.name}: {_type_text(hints[f.name])}, {default} -- "
                f"{f.metadata.get('doc', '')}",
                markup=False,
            )
    console.print(
        'usage: archgen check|build SPEC --passes "name{option=value,...},name2"', markup=False
    )


def _type_text(hint: object) -> str:
    """``int``, ``swa|mamba|null``, ``[int,...]``: how the value is written on the command line."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return "|".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (tuple, list):
        return "[int,...]"
    return getattr(hint, "__name__", str(hint))


def _cost_table(
    title: str,
    report: CheckReport,
    last_column: str,
    last_cell: Callable[[NodeCost], str],
    last_total: str,
) -> Table:
    """One row per layer (or stage block): its mixers, parameters, GFLOPs and ``last_column``
    (an LM's decode state, an image model's activations), then the total."""
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("layer", "left"),
        ("token mixer", "left"),
        ("channel mixer", "left"),
        ("params", "right"),
        ("GFLOPs", "right"),
        (last_column, "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(
            row.name,
            row.token_mixer,
            row.channel_mixer,
            f"{row.cost.params:,}",
            f"{row.cost.flops / 1e9:.3f}",
            last_cell(row.cost),
        )
    t = report.total
    table.add_section()
    table.add_row("total", "", "", f"{t.params:,}", f"{t.flops / 1e9:.3f}", last_total)
    return table
