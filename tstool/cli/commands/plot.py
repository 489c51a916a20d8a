"""`tstool plot`: training and validation curves of one or more runs in one image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.errors import InputError


def parse_labels(text: str) -> list[str]:
    """`a,b` -> ["a", "b"]; an empty label is an error."""
    labels = [part.strip() for part in text.split(",")]
    if not all(labels):
        raise InputError(f"--labels {text!r} has an empty label: pass one non-empty name per run, e.g. --labels a,b")
    return labels


@handle_errors
def plot(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders (or their metrics.jsonl files) to overlay.")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Image to write: .png, .svg or .pdf.")],
    labels: Annotated[
        Optional[str],
        typer.Option("--labels", help="Comma-separated legend names, one per run (default: folder names)."),
    ] = None,
    json_out: options.Json = False,
) -> None:
    """Plot loss, article/other loss, ratio and bpb curves. Example: tstool plot runs/base runs/w5 --out curves.png"""
    from tstool.analysis.plot import plot_runs
    from tstool.ui.evaluation import render_plot_summary

    out = Output(json_out)
    curves = plot_runs(runs, out_file, parse_labels(labels) if labels is not None else None)
    out.emit(
        {"out": str(out_file), "runs": [c.summary() for c in curves]},
        lambda console: render_plot_summary(console, curves, str(out_file)),
    )
