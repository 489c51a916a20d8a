"""Turning shared CLI options into a resolved config (the precedence lives in tstool.config)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tstool.config import Config, resolve
from tstool.errors import InputError

if TYPE_CHECKING:  # torch stays out of `tstool --help`
    from tstool.analysis.calibration import Correction
    from tstool.model.loading import LoadedModel


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


def parse_correction_option(text: str) -> str | float:
    """`--correction` checked before any slow work; a bad value is an InputError (exit 2)."""
    from tstool.analysis.calibration import parse_correction

    try:
        return parse_correction(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def correction_for_model(loaded: LoadedModel, choice: str | float) -> Correction:
    """The correction `--correction` asks of `loaded`; a value it cannot take is an InputError."""
    from tstool.analysis.calibration import correction_for

    try:
        return correction_for(loaded, choice)
    except ValueError as exc:
        raise InputError(str(exc)) from None
