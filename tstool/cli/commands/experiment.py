"""`tstool experiment`: train article weight 1 and 5 alike, compare them, write a computed report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config
from tstool.errors import InputError


@handle_errors
def experiment(
    config: options.ConfigSource = None,
    weights: Annotated[
        str, typer.Option("--weights", help="Comma-separated article weights, the baseline first.")
    ] = "1,5",
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="One run folder per weight (w1, w5), report.md, report.json, curves.png.")
    ] = Path("runs/experiment"),
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", min=1, help="Optimizer steps of every run.")
    ] = None,
    samples: Annotated[
        Optional[int], typer.Option("--samples", min=1, help="Samples per prompt (5 prompts) \\[default: 8].")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", min=1, help="Tokens per sample \\[default: the config's].")
    ] = None,
    max_blocks: Annotated[
        int, typer.Option("--max-blocks", min=1, help="Validation blocks of max_seq_len tokens, shared by every run.")
    ] = 256,
    no_live: Annotated[bool, typer.Option("--no-live", help="Plain log lines instead of the live table.")] = False,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Train with article weights 1 and 5, compare them, write OUT/report.md. Example: tstool experiment --config debug

    Same seed, data and step budget for every weight. Rerun the same command to resume a stopped experiment.
    """
    from tstool.analysis.experiment import parse_weights, run_experiment
    from tstool.config import DEFAULT_PRESET
    from tstool.training.runtime import configure_process
    from tstool.ui.comparison import ExperimentView, render_experiment

    if any(s.partition("=")[0].strip() == "train.article_weight" for s in sets or []):
        raise InputError("--set train.article_weight conflicts with the experiment's weights: pass --weights 1,5")
    parsed = parse_weights(weights)
    cfg = build_config(config, sets, train__max_steps=max_steps)
    out = Output(json_out)
    live = not no_live and not json_out and sys.stdout.isatty()
    configure_process(cfg.train.threads)
    with ExperimentView(out.console, out.err, live=live, quiet=json_out) as view:
        result = run_experiment(
            cfg, out_dir, parsed, config or DEFAULT_PRESET, samples, max_new_tokens, max_blocks, view
        )
    out.emit(result.to_dict(), lambda console: render_experiment(console, result))
