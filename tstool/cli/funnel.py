"""The one error funnel: library errors become `Error: ...` on stderr with a fixed exit code."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tstool.errors import TstoolError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 3
F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("TSTOOL_DEBUG", "") not in ("", "0")


def handle_errors(command: F) -> F:
    """Wrap a command so that no traceback reaches the user unless TSTOOL_DEBUG is set."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TstoolError as exc:
            if _debug():
                raise
            print(f"Error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _debug():
                raise
            print(
                f"Internal error: {exc.__class__.__name__}: {exc} (set TSTOOL_DEBUG=1 for the traceback and report it)",
                file=sys.stderr,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]
