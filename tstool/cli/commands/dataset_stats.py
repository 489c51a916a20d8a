"""`tstool dataset-stats`: how often the corpus uses articles, by form, position and context."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config


def _sampling_line(sampling: dict[str, Any]) -> str | None:
    """Articles per 100 words with its 95% interval, and whether --sample stopped the pass early."""
    rate = sampling["articles_per_100_words"]
    if rate is None:
        return None
    line = (
        f"articles per 100 words {rate['value']:.3f} (95% interval {rate['low']:.3f}–{rate['high']:.3f}, "
        f"{sampling['chunks']:,} chunks of {sampling['chunk_stories']:,} stories)"
    )
    if sampling["stopped_early"]:
        line += f"; stopped early at ±{100 * sampling['precision']:g}%"
    return line


@handle_errors
def dataset_stats(
    data: options.Data = None,
    dataset: options.Dataset = None,
    split: options.Split = "train",
    limit: options.Limit = None,
    tokenizer: options.Tokenizer = None,
    sample: Annotated[
        Optional[float],
        typer.Option(
            "--sample",
            min=0.0001,
            max=1.0,
            help="Stop once the 95% interval of articles per 100 words is within ± this share of it (e.g. 0.01).",
        ),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option("--workers", min=1, help="Processes counting in parallel \\[default: all cores].")
    ] = None,
    out_file: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON document to this file.")
    ] = None,
    config: options.ConfigSource = None,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Article statistics of a corpus split. Example: tstool dataset-stats --sample 0.01 --out stats.json"""
    from tstool.data.articles import resolve_articles
    from tstool.data.corpus import named_source
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
    source = named_source(cfg.data, split)
    started = time.perf_counter()
    with progress_bar(out.err, f"Counting {source.name}", enabled=not json_out, unit="stories") as progress:
        stats = compute(source, tok, articles, cfg.articles.words, progress=progress, workers=workers, precision=sample)
    out.status(f"{stats.stories:,} stories in {time.perf_counter() - started:.1f}s")
    document = stats.to_dict()
    if line := _sampling_line(document["sampling"]):
        out.status(line)
    if out_file is not None:
        out.status(f"Wrote {write_json_atomic(document, out_file)}")
    out.emit(document, lambda console: render_stats(console, document))
