"""The tstool Typer app: maps command names to command modules."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tstool import __version__
from tstool.cli.commands import (
    compare,
    config,
    dataset_stats,
    diagnose_tokenizer,
    evaluate,
    experiment,
    export_hf,
    generate,
    plot,
    tokenizer,
    train,
)

app = typer.Typer(
    name="tstool",
    help="Train small TinyStories language models and measure how they use articles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(config.app, name="config")
app.command("train")(train.train)
app.add_typer(tokenizer.app, name="tokenizer")
app.command("diagnose-tokenizer")(diagnose_tokenizer.diagnose_tokenizer)
app.command("dataset-stats")(dataset_stats.dataset_stats)
app.command("eval")(evaluate.evaluate)
app.command("plot")(plot.plot)
app.command("generate")(generate.generate)
app.command("compare")(compare.compare)
app.command("experiment")(experiment.experiment)
app.command("export-hf")(export_hf.export_hf)


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
