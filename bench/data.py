"""Data throughput on the bundled TinyStories sample: tokenise-and-pack, and `tstool dataset-stats`.

Tokenise-and-pack is `tstool.packing.tokenize_stories` on the bundled train split (parallel encode,
EOS between stories, one flat array). `dataset-stats` runs as a user runs it, in a fresh process, so
its wall time includes start-up. Value: the dataset-stats wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from rich.console import Console

from bench import Result, interleaved, table, threads_note, tokenizer
from tstool.config import DataConfig
from tstool.data.corpus import load_corpus
from tstool.data.packing import tokenize_stories

REPEATS = 3
TARGET_S = 15.0


def dataset_stats_seconds() -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tstool", "dataset-stats", "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=os.environ | {"TSTOOL_CACHE": cache},
        )
        return time.perf_counter() - start


def run(console: Console) -> Result:
    tok = tokenizer()
    corpus = load_corpus(DataConfig(), "train")
    packed: list[int] = []
    seconds = interleaved(
        {"pack": lambda: packed.append(len(tokenize_stories(corpus.stories, tok)))}, REPEATS, warmup=0
    ).median("pack")
    tokens = packed[0]
    stats_s = dataset_stats_seconds()
    title = f"data: bundled train split, {len(corpus.stories):,} stories, {corpus.num_bytes / 1e6:.1f} MB"
    report = table(title, "measure", "value")
    report.add_row("tokenize_stories tokens/s", f"{tokens / seconds:,.0f}")
    report.add_row("tokenize_stories MB/s", f"{corpus.num_bytes / seconds / 1e6:.2f}")
    report.add_row("tokenize_stories seconds", f"{seconds:.2f}")
    report.add_row("dataset-stats wall seconds (fresh process)", f"{stats_s:.2f}")
    console.print(report)
    threads_note(console)
    return Result("data", stats_s, "s (dataset-stats wall time)", TARGET_S, stats_s < TARGET_S)
