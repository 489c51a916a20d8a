"""`tstool compare`: runs side by side on the same evaluation blocks and the same seeded generations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.commands.evaluate import DEVICES
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import parse_correction_option
from tstool.errors import InputError


@handle_errors
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR",
            help="Run folders written by `tstool train`, or transformers models (folders or hub ids).",
        ),
    ],
    samples: Annotated[
        Optional[int], typer.Option("--samples", min=1, help="Samples per prompt (5 prompts) \\[default: 8].")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option("--max-new-tokens", min=1, help="Tokens per sample \\[default: the first run's config]."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed, the same for every run.")] = 0,
    max_blocks: Annotated[
        int, typer.Option("--max-blocks", min=1, help="Validation blocks of max_seq_len tokens, shared by every run.")
    ] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    correction: options.Correction = "fitted",
    json_out: options.Json = False,
) -> None:
    """Compare runs side by side: loss, bpb, article metrics, generated article rate, slot probes, curves.

    Example: tstool compare runs/tiny-w1 runs/tiny-w5 roneneldan/TinyStories-33M

    Generations are ancestral (temperature 1). Weighted runs get --correction; weight-1 runs never, nor do
    transformers models, which have no training curves.
    """
    from tstool.analysis.compare import compare_runs
    from tstool.training.runtime import resolve_device
    from tstool.ui.comparison import compare_status, comparison_document, render_comparison

    if device not in DEVICES:
        raise InputError(f"unknown device '{device}': use --device {', '.join(DEVICES)}")
    choice = parse_correction_option(correction)
    out = Output(json_out)
    comparison = compare_runs(
        runs,
        samples,
        max_new_tokens,
        seed,
        max_blocks,
        resolve_device(device),
        lambda e: out.status(compare_status(e)),
        corpus_optional=True,  # a run trained on text without articles still compares, with n/a cells
        correction=choice,
    )
    out.emit(comparison_document(comparison), lambda console: render_comparison(console, comparison))
