"""Shared option aliases so that every command spells the same option the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
Data = Annotated[
    Optional[list[Path]],
    typer.Option("--data", help="Local text (<|endoftext|> separated), .jsonl or .parquet files, .gz allowed."),
]
Dataset = Annotated[
    Optional[str], typer.Option("--dataset", help="Hugging Face dataset name or a folder saved with save_to_disk.")
]
Split = Annotated[str, typer.Option("--split", help="Which split: train or val (HF datasets: the split name).")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use at most this many stories.")]
Tokenizer = Annotated[
    Optional[Path],
    typer.Option(
        "--tokenizer", help="tokenizer.json, a folder with one, or GPT-2 vocab.json+merges.txt \\[default: shipped]."
    ),
]
ConfigSource = Annotated[Optional[str], typer.Option("--config", help="Preset name (tiny, small, ...) or YAML file.")]
Sets = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any config key: section.key=value (repeatable).")
]
Checkpoint = Annotated[
    Path,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="RUN_DIR|CKPT_DIR|HF_MODEL",
        help="A run folder (its latest checkpoint), a checkpoint folder, or a transformers causal LM: a folder "
        "(config.json, weights, tokenizer) or a hub model id from the Hugging Face cache.",
    ),
]
RunTokenizer = Annotated[
    Optional[Path],
    typer.Option(
        "--tokenizer",
        help="A tstool run's tokenizer.json, when it is not in the run folder (a transformers model brings its "
        "own). Example: --tokenizer runs/w5/tokenizer.json",
    ),
]
Correction = Annotated[
    str,
    typer.Option(
        "--correction",
        metavar="fitted|none|TAU",
        help="Post-hoc correction of a weighted model: lower its article logits by TAU * log(weight). "
        "fitted: the tau kept with the checkpoint; none; or a number >= 0. Weight-1 models are never corrected. "
        "Example: --correction 1.0",
    ),
]
