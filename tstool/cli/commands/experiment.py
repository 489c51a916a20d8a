"""`tstool experiment`: train article weight 1 and 5 alike, compare them, write a computed report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config, parse_correction_option
from tstool.errors import InputError


@handle_errors
def experiment(
    config: options.ConfigSource = None,
    weights: Annotated[
        str, typer.Option("--weights", help="Comma-separated article weights, the baseline 1 first. Example: 1,3,5")
    ] = "1,5",
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Seeds per arm (3 is a pilot; 5-10 is firmer). Example: --seeds 5")
    ] = 3,
    arms: Annotated[
        str,
        typer.Option(
            "--arms",
            help="Arms besides weight 1: raw (weighted as trained), corrected (post-hoc), adjusted (logit-adjusted "
            "loss). Example: --arms raw,corrected",
        ),
    ] = "raw,corrected,adjusted",
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Run folders (w5-s1337, ...), report.md, report.json and figures.")
    ] = Path("runs/experiment"),
    max_steps: Annotated[
        Optional[int],
        typer.Option("--max-steps", min=1, help="The budget: optimizer steps of every run \\[default: the preset's]."),
    ] = None,
    prompts: Annotated[
        int,
        typer.Option(
            "--prompts", min=1, help="Held-out story openings to generate from, per arm and seed. Example: --prompts 48"
        ),
    ] = 64,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens per continuation.")] = 150,
    max_blocks: Annotated[
        int, typer.Option("--max-blocks", min=1, help="Validation blocks of max_seq_len tokens, shared by every run.")
    ] = 256,
    correction: options.Correction = "fitted",
    no_live: Annotated[bool, typer.Option("--no-live", help="Plain log lines instead of the live table.")] = False,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Seeded study of article weighting against weight 1. Example: tstool experiment --config tiny --max-steps 600

    Every arm of a seed shares initialisation and data order; every measure gets a 95% interval over seeds.
    Rerun the same command to resume a stopped study: finished runs are reused.
    """
    from tstool.analysis.experiment import parse_arms, parse_weights, run_experiment
    from tstool.config import DEFAULT_PRESET
    from tstool.training.runtime import configure_process
    from tstool.ui.experiment import ExperimentView, render_experiment

    reserved = ("train.article_weight", "train.logit_adjusted", "train.seed")
    if any(s.partition("=")[0].strip() in reserved for s in sets or []):
        raise InputError(f"--set {'/'.join(reserved)} are the experiment's own: use --weights, --arms and --seeds")
    parsed_weights, parsed_arms = parse_weights(weights), parse_arms(arms)
    choice = parse_correction_option(correction)
    if choice == "none" and "corrected" in parsed_arms:
        raise InputError("--correction none leaves the corrected arm uncorrected: pass fitted or a tau, or drop it")
    cfg = build_config(config, sets, train__max_steps=max_steps)
    out = Output(json_out)
    live = not no_live and not json_out and sys.stdout.isatty()
    configure_process(cfg.train.threads)
    with ExperimentView(out.console, out.err, live=live, quiet=json_out) as view:
        result = run_experiment(
            cfg,
            out_dir,
            parsed_weights,
            seeds,
            parsed_arms,
            config or DEFAULT_PRESET,
            prompts,
            max_new_tokens,
            max_blocks,
            choice,
            view,
        )
    out.emit(result.to_dict(), lambda console: render_experiment(console, result))
