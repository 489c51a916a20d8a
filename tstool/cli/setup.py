"""Turning shared CLI options into a resolved config (the precedence lives in tstool.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tstool.config import Config, resolve


def build_config(
    config: str | None = None,
    sets: list[str] | None = None,
    data: list[Path] | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    tokenizer: Path | None = None,
    **options: Any,
) -> Config:
    """First-class options are dotted config keys (e.g. `train.article_weight`) passed as keyword
    arguments with dots written as `__`; None means not given."""
    dotted = {key.replace("__", "."): value for key, value in options.items()}
    dotted.update(
        {
            "data.files": [str(p) for p in data] if data else None,
            "data.dataset": dataset,
            "data.limit": limit,
            "data.tokenizer": str(tokenizer) if tokenizer else None,
        }
    )
    return resolve(config, dotted, sets)
