"""Writing files so that a crash leaves the old file or the new one, never a truncated one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed over `path` if the block succeeds, deleted if not."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
