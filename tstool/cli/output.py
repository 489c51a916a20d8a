"""One output object: human tables on stdout, or exactly one JSON document with --json.

Status lines and progress always go to stderr so `--json | jq` works.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console


@dataclass
class Output:
    json_mode: bool = False
    # soft_wrap: long lines (paths, log lines) stay whole instead of being cut at the terminal width.
    console: Console = field(default_factory=lambda: Console(soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

    def status(self, message: str) -> None:
        """A human status line on stderr (silent with --json)."""
        if not self.json_mode:
            self.err.print(message)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/yellow] {message}")

    def emit(self, data: Any, render: Callable[[Console], None]) -> None:
        """JSON on stdout with --json, otherwise the Rich rendering."""
        if self.json_mode:
            print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        else:
            render(self.console)
