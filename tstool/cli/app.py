"""The tstool Typer app: maps command names to command modules."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tstool import __version__
from tstool.cli.commands import (
    compare_cmd,
    config_show,
    diagnose,
    eval_cmd,
    experiment_cmd,
    export_cmd,
    generate_cmd,
    plot_cmd,
    stats_cmd,
    tokenizer_cmd,
    train_cmd,
)

app = typer.Typer(
    name="tstool",
    help="Train small TinyStories language models and measure how they use articles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(config_show.app, name="config")
app.command("train")(train_cmd.train)
app.add_typer(tokenizer_cmd.app, name="tokenizer")
app.command("diagnose-tokenizer")(diagnose.diagnose_tokenizer)
app.command("dataset-stats")(stats_cmd.dataset_stats)
app.command("eval")(eval_cmd.evaluate)
app.command("plot")(plot_cmd.plot)
app.command("generate")(generate_cmd.generate)
app.command("compare")(compare_cmd.compare)
app.command("experiment")(experiment_cmd.experiment)
app.command("export-hf")(export_cmd.export_hf)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tstool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
) -> None:
    """Train small TinyStories language models and measure how they use articles."""


def main() -> None:
    app()
