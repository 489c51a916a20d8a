"""Tokenise a split once and cache it as a flat memmap of token IDs, keyed by what produced it.

The key covers the tokenizer's sha256, the data source and its content hash, the split and the
limit, so a second run reuses the cache and a changed tokenizer or text never does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tstool.atomic import replacing, write_text
from tstool.config import DataConfig
from tstool.data.corpus import Corpus, Split, load_corpus
from tstool.data.tokenizer import TextTokenizer
from tstool.errors import InputError, TokenizerError

ENCODE_CHUNK = 1024
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TokenStream:
    """All tokens of one split, stories separated by <|endoftext|>, as a read-only memmap."""

    tokens: np.ndarray
    num_bytes: int
    num_stories: int
    path: Path

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / len(self.tokens)


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("TSTOOL_CACHE") or Path.home() / ".cache" / "tstool")


def token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise TokenizerError(f"vocab size {vocab_size} does not fit the uint32 token cache: use a vocab below 2**32")


def tokenize_stories(stories: list[str], tokenizer: TextTokenizer, progress: Progress | None = None) -> np.ndarray:
    """Encode in parallel batches; each story is followed by <|endoftext|>."""
    eot = tokenizer.eot_id
    dtype = token_dtype(tokenizer.vocab_size)
    pieces: list[np.ndarray] = []
    for start in range(0, len(stories), ENCODE_CHUNK):
        for ids in tokenizer.encode_batch(stories[start : start + ENCODE_CHUNK]):
            ids.append(eot)
            pieces.append(np.asarray(ids, dtype=dtype))
        if progress:
            progress(min(start + ENCODE_CHUNK, len(stories)), len(stories))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _cache_key(corpus: Corpus, tokenizer: TextTokenizer, split: Split, limit: int | None) -> str:
    parts = [tokenizer.sha256, corpus.name, corpus.fingerprint, split, str(limit)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _write_atomic(path: Path, tokens: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tokens.tofile(tmp)
    write_text(path.with_suffix(".json"), json.dumps(meta))


def load_tokens(
    cfg: DataConfig, split: Split, tokenizer: TextTokenizer, progress: Progress | None = None
) -> TokenStream:
    """The token stream of a split, from the cache when its key matches."""
    corpus = load_corpus(cfg, split)
    path = cache_root(cfg) / f"{_cache_key(corpus, tokenizer, split, cfg.limit)}.bin"
    dtype = token_dtype(tokenizer.vocab_size)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("dtype") == dtype.name and path.stat().st_size == meta["num_tokens"] * dtype.itemsize:
            tokens = np.memmap(path, dtype=dtype, mode="r")
            return TokenStream(tokens, meta["num_bytes"], meta["num_stories"], path)
    tokens = tokenize_stories(corpus.stories, tokenizer, progress)
    meta = {
        "num_tokens": int(len(tokens)),
        "num_bytes": corpus.num_bytes,
        "num_stories": len(corpus.stories),
        "dtype": dtype.name,
        "tokenizer_sha256": tokenizer.sha256,
        "source": corpus.name,
        "split": split,
    }
    _write_atomic(path, tokens, meta)
    return TokenStream(np.memmap(path, dtype=dtype, mode="r"), corpus.num_bytes, len(corpus.stories), path)


def require_blocks(stream: TokenStream, seq_len: int, split: str) -> None:
    if len(stream.tokens) < seq_len + 1:
        raise InputError(
            f"the {split} split has {len(stream.tokens)} tokens, fewer than one block of {seq_len + 1}: "
            "add data or lower model.max_seq_len"
        )
