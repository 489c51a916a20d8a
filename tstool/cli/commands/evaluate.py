"""`tstool eval`: teacher-forced loss, bits per byte, article precision/recall, slot and shift probes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import correction_for_model, parse_correction_option
from tstool.errors import CheckFailed, InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


@handle_errors
def evaluate(
    checkpoint: options.Checkpoint,
    data: options.Data = None,
    dataset: options.Dataset = None,
    split: options.Split = "val",
    limit: options.Limit = None,
    max_blocks: Annotated[
        Optional[int],
        typer.Option("--max-blocks", min=1, help="Evaluate at most N blocks of max_seq_len tokens (default 256)."),
    ] = None,
    all_blocks: Annotated[bool, typer.Option("--all-blocks", help="Evaluate every block of the split.")] = False,
    contexts: Annotated[
        Optional[list[str]],
        typer.Option("--context", help="A slot-probe context (repeatable) (default: a built-in set)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    correction: options.Correction = "fitted",
    json_out: options.Json = False,
) -> None:
    """Loss, bpb, article precision/recall and probes of a model. Example: tstool eval --checkpoint runs/latest

    A tstool run or checkpoint, or a transformers model (folder or hub id). Scores the run's validation text
    (a transformers model: the bundled TinyStories sample's), or --data files (whole) or --dataset.
    Exit 1: misaligned labels.
    """
    from tstool.analysis.evaluate import DEFAULT_MAX_BLOCKS, check_split
    from tstool.analysis.evaluate import evaluate as run_eval
    from tstool.analysis.probes import DEFAULT_CONTEXTS
    from tstool.model.loading import load_any_model
    from tstool.training.runtime import resolve_device
    from tstool.ui.evaluation import render_eval
    from tstool.ui.reports import progress_bar

    if all_blocks and max_blocks is not None:
        raise InputError("--max-blocks and --all-blocks contradict each other: pass one of them")
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}': use --device {', '.join(DEVICES)}")
    split = check_split(split)  # before the slow model load; `validation` becomes `val`
    choice = parse_correction_option(correction)
    out = Output(json_out)
    loaded = load_any_model(checkpoint, resolve_device(device))
    data_cfg = loaded.config.data
    if data or dataset:
        # Other text replaces the run's data section whole; local files are evaluated entire (no held-out cut).
        files = [str(p) for p in data or []]
        data_cfg = data_cfg.model_copy(update={"files": files, "val_files": files, "dataset": dataset, "limit": None})
    if limit is not None:
        data_cfg = data_cfg.model_copy(update={"limit": limit})
    applied = correction_for_model(loaded, choice)
    out.status(f"Evaluating {loaded.describe()} on {loaded.device}; correction: {applied.describe()}")
    with progress_bar(out.err, f"Scoring {split} blocks", enabled=not json_out) as progress:
        report = run_eval(
            loaded,
            data_cfg,
            split,
            None if all_blocks else max_blocks or DEFAULT_MAX_BLOCKS,
            contexts or DEFAULT_CONTEXTS,
            progress,
            applied,
        )
    out.emit(report.to_dict(), lambda console: render_eval(console, report))
    if not report.ok:
        raise CheckFailed(report.shift.message)
