"""`tstool tokenizer train`: train a byte-level BPE tokenizer on the training stories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import build_config
from tstool.errors import InputError

app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)


@app.command("train")
@handle_errors
def train(
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size, <|endoftext|> included (>= 257).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for tokenizer.json and tokenizer_meta.json.")],
    data: options.Data = None,
    dataset: options.Dataset = None,
    limit: options.Limit = None,
    config: options.ConfigSource = None,
    sets: options.Sets = None,
    json_out: options.Json = False,
) -> None:
    """Train byte-level BPE on the training split. Example: tstool tokenizer train --vocab-size 4096 --out tok/"""
    from tstool.data.corpus import load_corpus
    from tstool.data.tokenizer import train_tokenizer, write_meta
    from tstool.ui.reports import render_trained_tokenizer

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file: pass a folder for tokenizer.json and tokenizer_meta.json")
    cfg = build_config(config, sets, data, dataset, limit)
    out = Output(json_out)
    corpus = load_corpus(cfg.data, "train")
    tok = train_tokenizer(corpus.stories, vocab_size, show_progress=not json_out)  # HF's own bar, on stderr
    trained_on = f"{corpus.name}, {len(corpus.stories)} stories, vocab {vocab_size}"
    result = {
        "tokenizer": str(tok.save(out_dir)),
        "meta": str(write_meta(tok, out_dir, trained_on)),
        "vocab_size": tok.vocab_size,
        "sha256": tok.sha256,
        "eot_id": tok.eot_id,
        "trained_on": trained_on,
    }
    out.emit(result, lambda console: render_trained_tokenizer(console, result))
