"""`tstool config show`: print the resolved config as YAML."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.syntax import Syntax

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config

app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)


@app.command("show")
@handle_errors
def show(
    preset: Annotated[Optional[str], typer.Argument(help="Preset name or YAML file [default: tiny].")] = None,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Print the resolved config. Example: tstool config show small --set train.lr=3e-4"""
    cfg = build_config(preset, sets)
    Output(json_out).emit(cfg.to_dict(), lambda console: console.print(Syntax(cfg.to_yaml(), "yaml")))
