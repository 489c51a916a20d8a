"""metrics.jsonl: one JSON object per line, appended as training goes; trimmed on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tstool.atomic import write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records. Only lines ending in a newline count: a last line without one is being
    appended by a run still training (or was torn by a crash), and a line that is not JSON is skipped."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return []
    records = []
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is not a whole line yet
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError from a torn multi-byte character
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Appends records; on resume keeps only records up to the checkpoint's step, so no step repeats."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        # One write per line keeps lines whole even if the process dies right after.
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def sync(self) -> None:
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()
