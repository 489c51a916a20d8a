"""`tstool diagnose-tokenizer`: which token IDs are articles, how they tokenize, how often they occur."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config
from tstool.errors import CheckFailed, ConfigError


def parse_ids(text: str) -> list[int]:
    """`262,264,389` -> [262, 264, 389]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--expect-ids {text!r} is not a comma-separated list of integers: e.g. --expect-ids 257,262,281"
        )


@handle_errors
def diagnose_tokenizer(
    tokenizer: options.Tokenizer = None,
    expect_ids: Annotated[
        Optional[str],
        typer.Option("--expect-ids", help="Comma-separated IDs you believe are articles; checked (exit 1 if wrong)."),
    ] = None,
    data: options.Data = None,
    dataset: options.Dataset = None,
    limit: options.Limit = None,
    no_corpus: Annotated[bool, typer.Option("--no-corpus", help="Skip counting article forms in the corpus.")] = False,
    config: options.ConfigSource = None,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Show how articles tokenize and check expected IDs. Example: tstool diagnose-tokenizer --expect-ids 262,264,389

    --tokenizer also takes a transformers tokenizer: a folder (tokenizer_config.json) or a hub model id.
    """
    from tstool.analysis.diagnosis import diagnose
    from tstool.data.corpus import load_corpus
    from tstool.model.hf_models import load_any_tokenizer
    from tstool.ui.reports import progress_bar, render_diagnosis

    cfg = build_config(
        config,
        sets,
        data,
        dataset,
        limit,
        tokenizer,
        articles__expect_ids=parse_ids(expect_ids) if expect_ids is not None else None,
    )
    out = Output(json_out)
    tok = load_any_tokenizer(cfg.data.tokenizer)
    corpus = None if no_corpus else load_corpus(cfg.data, "train")
    with progress_bar(out.err, "Counting article tokens", enabled=not json_out and corpus is not None) as progress:
        report = diagnose(tok, cfg.articles, corpus, progress)
    out.emit(report.to_dict(), lambda console: render_diagnosis(console, report))
    if not report.ok:
        raise CheckFailed(f"{len(report.problems)} problem(s): " + " | ".join(report.problems))
