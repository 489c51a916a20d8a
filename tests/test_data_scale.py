"""Data at scale: a training run killed while it tokenises restarts cleanly, and the scale benchmark runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench import data_scale
from tstool.config import DataConfig
from tstool.data.corpus import load_corpus
from tstool.data.packing import load_tokens
from tstool.data.tokenizer import load_tokenizer


def _train(corpus: Path, run: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "tstool", "train", "--config", "debug", "--data", str(corpus)),
        *("--set", "data.limit=null", "--max-steps", "2", "--out-dir", str(run), "--no-live"),
    ]


def _wait_for_partial_tokens(cache: Path, process: subprocess.Popen, timeout: float = 300.0) -> Path:
    """The temporary token file of the build in progress, once its first batch is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        partial = [p for p in cache.glob(".*.bin.*.tmp") if p.stat().st_size > 0] if cache.exists() else []
        if partial:
            return partial[0]
        time.sleep(0.01)
    raise AssertionError(f"no partial token file appeared (exit code {process.poll()})")


@pytest.mark.slow
def test_run_killed_while_tokenising_restarts_cleanly(tmp_path: Path) -> None:
    corpus = data_scale.write_corpus(tmp_path / "corpus.txt", 12, data_scale.bundled_text())
    cache, run = Path(os.environ["TSTOOL_CACHE"]), tmp_path / "run"
    killed = subprocess.Popen(_train(corpus, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = _wait_for_partial_tokens(cache, killed)
    finally:
        killed.kill()
        killed.wait()
    assert partial.exists(), "the killed build left its temporary file"
    assert not list(cache.glob("*.json")), "no manifest vouches for a cache the kill cut short"

    restarted = subprocess.run(_train(corpus, run), capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr
    assert not list(cache.glob(".*.tmp")), "the abandoned temporary file is gone"
    assert len(list(cache.glob("*.json"))) == 2, "train and val caches are complete"
    cfg, tokenizer = DataConfig(files=[str(corpus)]), load_tokenizer()
    stream = load_tokens(cfg, "train", tokenizer)
    stories = load_corpus(cfg, "train").stories
    assert stream.path.parent == cache
    assert int((np.asarray(stream.tokens) == tokenizer.eot_id).sum()) == stream.num_stories == len(stories)
    first = tokenizer.encode(stories[0]) + [tokenizer.eot_id]
    assert stream.tokens[: len(first)].tolist() == first


@pytest.mark.slow
def test_scale_benchmark_in_its_quick_mode() -> None:
    console = Console(file=io.StringIO(), width=120)
    result = data_scale.run(console, sizes=(1, 2))
    printed = console.file.getvalue()
    assert result.name == "data_scale" and result.value > 0
    assert result.target == data_scale.TARGET_TOKENS_PER_S
    assert "warm start" in printed and "log-log slope" in printed
