"""`tstool train`: weighted cross-entropy training with a live table, checkpoints and exact resume."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config


@handle_errors
def train(
    config: options.ConfigSource = None,
    article_weight: Annotated[
        Optional[float], typer.Option("--article-weight", help="Loss weight of article targets (1 = plain CE).")
    ] = None,
    logit_adjusted: Annotated[
        Optional[bool],
        typer.Option(
            "--logit-adjusted/--no-logit-adjusted",
            help="Add log(article weight) to the article logits inside the loss: articles keep the weight's "
            "gradient, but the model stays calibrated. Example: --article-weight 5 --logit-adjusted",
            show_default=False,
        ),
    ] = None,
    data: options.Data = None,
    val_data: Annotated[Optional[list[Path]], typer.Option("--val-data", help="Validation files for --data.")] = None,
    dataset: options.Dataset = None,
    tokenizer: options.Tokenizer = None,
    limit: options.Limit = None,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", min=1, help="Optimizer steps: the schedule's length.")
    ] = None,
    stop_after: Annotated[
        Optional[int],
        typer.Option("--stop-after", min=1, help="End this invocation after N steps with a resumable checkpoint."),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Run folder: config, tokenizer, metrics.jsonl, checkpoints.")
    ] = Path("runs/latest"),
    resume: Annotated[
        Optional[str], typer.Option("--resume", help="'auto' (the out dir's latest checkpoint) or a checkpoint path.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out-dir.")] = False,
    init_from: Annotated[
        Optional[Path],
        typer.Option(
            "--init-from",
            help="Start from a local Hugging Face Llama folder of the run's shape and tokenizer (export-hf).",
        ),
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or mps.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32, bf16 or fp16 (autocast).")] = None,
    compile_model: Annotated[
        Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of init, data order and dropout.")] = None,
    allow_multi_token_articles: Annotated[
        Optional[bool],
        typer.Option(
            "--allow-multi-token-articles",
            help="Weight only the single-token forms when a named form is several tokens.",
        ),
    ] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="Plain log lines instead of the live table.")] = False,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Train with article-weighted loss. Example: tstool train --config tiny --article-weight 5"""
    from tstool.training.runtime import configure_process
    from tstool.training.trainer import RunOptions
    from tstool.training.trainer import train as run_training
    from tstool.ui.training import TrainingView

    cfg = build_config(
        config,
        sets,
        data,
        dataset,
        limit,
        tokenizer,
        train__article_weight=article_weight,
        train__logit_adjusted=logit_adjusted,
        train__max_steps=max_steps,
        train__device=device,
        train__dtype=dtype,
        train__compile=compile_model,
        train__seed=seed,
        articles__allow_multi_token=allow_multi_token_articles,
        data__val_files=[str(p) for p in val_data] if val_data else None,
    )
    out = Output(json_out)
    live = not no_live and not json_out and sys.stdout.isatty()
    run_options = RunOptions(
        out_dir=out_dir, resume=resume, overwrite=overwrite, stop_after=stop_after, init_from=init_from
    )
    configure_process(cfg.train.threads)
    with TrainingView(out.console, out.err, live=live, quiet=json_out) as view:
        summary = run_training(cfg, run_options, view)
    result = {
        "step": summary.step,
        "max_steps": summary.max_steps,
        "checkpoint": str(summary.checkpoint),
        "train": summary.last_train,
        "val": summary.last_val,
        "best_val_loss": summary.best_val_loss,
        "wall_time_s": summary.wall_time_s,
        "bad_steps": summary.bad_steps,
        "out_dir": str(out_dir),
        "world": summary.world,
        "ddp_params_in_sync": summary.ddp_params_in_sync,
    }
    if not summary.is_main:  # one report per run, from rank 0
        return

    def render(console) -> None:
        val = summary.last_val
        # a resumed run that was already finished trains no step and validates nothing
        validation = f"val loss {val['loss_unweighted']:.3f} · bpb {val['bpb']:.3f}" if val else "no validation run"
        console.print(
            f"[bold green]done[/] step {summary.step}/{summary.max_steps} in {summary.wall_time_s:.0f}s · "
            f"{validation} · checkpoint {summary.checkpoint}"
        )

    out.emit(result, render)
