"""metrics.jsonl: one JSON object per line, appended as training goes; trimmed on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tstool.atomic import write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (a crash mid-write) is skipped."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
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
