"""Rich tables for ``archgen check``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from archgen.api import CheckReport
from archgen.cli.format import human_bytes, human_count


def print_check(console: Console, report: CheckReport, spec_path: Path) -> None:
    m = report.graph.model
    title = f"{m.name} ({m.task}, d_model={m.d_model}, vocab={m.vocab_size}) at L={report.seq_len}"
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("layer", "left"),
        ("token mixer", "left"),
        ("channel mixer", "left"),
        ("params", "right"),
        ("GFLOPs", "right"),
        ("state/KV", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(
            row.name,
            row.token_mixer,
            row.channel_mixer,
            f"{row.cost.params:,}",
            f"{row.cost.flops / 1e9:.3f}",
            human_bytes(row.cost.state_bytes) if row.cost.state_bytes else "-",
        )
    t = report.total
    table.add_section()
    table.add_row(
        "total", "", "", f"{t.params:,}", f"{t.flops / 1e9:.3f}", human_bytes(t.state_bytes)
    )
    console.print(table)
    console.print(
        f"{spec_path}: ok -- {human_count(t.params)} parameters, "
        f"{t.flops / 1e9:.2f} GFLOPs per sequence of {report.seq_len} tokens, "
        f"decode state {human_bytes(t.state_bytes)} (float32, batch 1)",
        markup=False,
        soft_wrap=True,
    )
