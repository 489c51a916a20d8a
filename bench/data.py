"""Data throughput on the bundled TinyStories sample: tokenise-and-pack, and `tstool dataset-stats`.

Tokenise-and-pack is `tstool.data.packing.tokenize_stories` on the bundled train split (parallel
encode, EOS between stories, one flat array), shown. `dataset-stats` runs as a user runs it, in a
fresh process with an empty token cache, so its wall time includes start-up and tokenising.

Value: the dataset-stats wall time.
Target: `tstool dataset-stats` answers on the bundled sample within 15 s, start-up included (< 15).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from rich.console import Console

from bench import Result, interleaved, seconds_per_call, table, threads_note, tokenizer
from tstool.config import DataConfig
from tstool.data.corpus import load_corpus
from tstool.data.packing import tokenize_stories

ROUNDS = 3
TARGET_S = 15.0
GUARDS = "tstool dataset-stats answers on the bundled sample within 15 s, start-up included (< 15)"


def dataset_stats() -> None:
    with tempfile.TemporaryDirectory() as cache:
        subprocess.run(
            [sys.executable, "-m", "tstool", "dataset-stats", "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=os.environ | {"TSTOOL_CACHE": cache},
        )


def run(console: Console, rounds: int = ROUNDS) -> Result:
    tok = tokenizer()
    corpus = load_corpus(DataConfig(), "train")
    tokens = len(tokenize_stories(corpus.stories, tok))  # also the warm-up
    seconds = interleaved({"pack": lambda: tokenize_stories(corpus.stories, tok)}, rounds, warmup=0).median("pack")
    stats_s = seconds_per_call(dataset_stats)
    title = f"data: bundled train split, {len(corpus.stories):,} stories, {corpus.num_bytes / 1e6:.1f} MB"
    report = table(title, "measure", "value")
    report.add_row("tokenize_stories tokens/s", f"{tokens / seconds:,.0f}")
    report.add_row("tokenize_stories MB/s", f"{corpus.num_bytes / seconds / 1e6:.2f}")
    report.add_row("tokenize_stories seconds", f"{seconds:.2f}")
    report.add_row("dataset-stats wall seconds (fresh process)", f"{stats_s:.2f}")
    console.print(report)
    threads_note(console)
    return Result("data", stats_s, "s (dataset-stats wall time)", TARGET_S, stats_s < TARGET_S, GUARDS)
