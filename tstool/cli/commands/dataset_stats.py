"""`tstool dataset-stats`: how often the corpus uses articles, by form, position and context."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config


@handle_errors
def dataset_stats(
    data: options.Data = None,
    dataset: options.Dataset = None,
    split: options.Split = "train",
    limit: options.Limit = None,
    tokenizer: options.Tokenizer = None,
    out_file: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON document to this file.")
    ] = None,
    config: options.ConfigSource = None,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Article statistics of a corpus split. Example: tstool dataset-stats --limit 1000 --out stats.json"""
    from tstool.data.articles import resolve_articles
    from tstool.data.corpus import load_named_split
    from tstool.data.stats import check_out_path, write_json_atomic
    from tstool.data.stats import dataset_stats as compute
    from tstool.data.tokenizer import load_tokenizer
    from tstool.ui.reports import progress_bar, render_stats

    if out_file is not None:
        check_out_path(out_file)
    cfg = build_config(config, sets, data, dataset, limit, tokenizer)
    out = Output(json_out)
    tok = load_tokenizer(cfg.data.tokenizer)
    articles = resolve_articles(tok, cfg.articles)
    corpus = load_named_split(cfg.data, split)
    started = time.perf_counter()
    with progress_bar(out.err, f"Counting {len(corpus.stories):,} stories", enabled=not json_out) as progress:
        stats = compute(corpus, tok, articles, cfg.articles.words, progress=progress)
    out.status(f"{len(corpus.stories):,} stories in {time.perf_counter() - started:.1f}s")
    document = stats.to_dict()
    if out_file is not None:
        out.status(f"Wrote {write_json_atomic(document, out_file)}")
    out.emit(document, lambda console: render_stats(console, document))
