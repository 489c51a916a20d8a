"""Tokenise a split once, streaming, into a flat memmap of token IDs, and find it again in a moment.

Stories arrive in batches (`StorySource.read`), are encoded (`StoryEncoder`: a cache of pre-token IDs, or
`tokenizers`' batch encoding on all cores) and appended to one file, so memory stays flat however large
the corpus. One file written in pieces, not separate shard files: `BlockSampler` indexes one flat array,
and a memmap of one file is that array, with nothing to join for blocks that straddle pieces.

The cache key hashes the layout version, the tokenizer's sha256, the split's name and its fingerprint
(file sizes, modification times and sampled chunks, or a dataset's own fingerprint; the limit and held-out
share), so a warm start reads no stories and a changed tokenizer or text never reuses a cache. A manifest
written last marks a cache complete: a token file without one (a run killed while writing), or that does
not match it (size, sampled checksum), is rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from tstool.atomic import replacing, write_text
from tstool.config import DataConfig
from tstool.data.corpus import Progress, Split, StorySource, expected_stories, sampled_sha256, split_source
from tstool.data.tokenizer import TextTokenizer
from tstool.errors import InputError, TokenizerError

FORMAT = 2  # the cache's layout, part of its key: a cache of another layout is never read as this one
ENCODE_CHUNK = 1024


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


# Non-ASCII punctuation common in English stories: general category P, never a letter, number or space.
PUNCTUATION = "“”‘’–—…«»¡¿"
_OTHER_CHARACTER = re.compile(f"[^\\x00-\\x7f{PUNCTUATION}]")
# GPT-2's pre-tokenizer regex as `tokenizers` runs it (ByteLevel, use_regex), for text of ASCII and
# PUNCTUATION alone: there \s, \p{L} and \p{N} are exactly these classes.
_SPACE = r"\t\n\x0b\x0c\r "
PRETOKENS = re.compile(
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_SPACE}A-Za-z0-9]+|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+"
)
PRETOKEN_CACHE_SIZE = 1 << 18  # pre-tokens remembered (TinyStories has far fewer); past it the cache starts over


def plain_byte_level(tokenizer: TextTokenizer) -> bool:
    """No normalizer, GPT-2's byte-level pre-tokenizer alone and a deterministic model: the pipeline that
    `PRETOKENS` and a cache of pre-token IDs reproduce."""
    config = json.loads(tokenizer.backend.to_str())
    pre = config.get("pre_tokenizer") or {}
    return (
        config.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
        and not (config.get("model") or {}).get("dropout")
    )


def added_tokens(tokenizer: TextTokenizer) -> list[str]:
    return [token.content for token in tokenizer.backend.get_added_tokens_decoder().values()]


def splits_alone(story: str, added: list[str]) -> bool:
    """`PRETOKENS` splits the story as the tokenizer does: it holds only ASCII and PUNCTUATION, and no added
    token (which the tokenizer would take whole before splitting)."""
    return (story.isascii() or not _OTHER_CHARACTER.search(story)) and not any(a in story for a in added)


class _PretokenIds(dict[str, bytes]):
    """Token IDs of pre-tokens, as bytes of the cache's dtype, from the tokenizer the first time each is seen."""

    def __init__(self, tokenizer: TextTokenizer, dtype: np.dtype):
        super().__init__()
        self.tokenizer, self.dtype = tokenizer, dtype

    def __missing__(self, pretoken: str) -> bytes:
        if len(self) >= PRETOKEN_CACHE_SIZE:
            self.clear()
        ids = self[pretoken] = np.asarray(self.tokenizer.encode(pretoken), dtype=self.dtype).tobytes()
        return ids


class StoryEncoder:
    """Stories to one flat array of token IDs, each story followed by <|endoftext|>.

    Byte-level BPE encodes each pre-token (a match of GPT-2's regex) on its own, so a story's IDs are its
    pre-tokens' IDs in order. For a plain byte-level tokenizer (`plain_byte_level`), stories of ASCII and
    PUNCTUATION holding no added token (in TinyStories all but a few) are split here, and their pre-tokens'
    IDs looked up in a cache and joined as bytes: about five times the tokens per second of one core of
    `tokenizers` (bench.data_scale), so one core outruns its batch encoding on two. Other stories, and other
    tokenizers, go through that batch encoding, on all cores.
    """

    def __init__(self, tokenizer: TextTokenizer, dtype: np.dtype):
        self.tokenizer, self.dtype = tokenizer, dtype
        self.eot = np.asarray([tokenizer.eot_id], dtype=dtype).tobytes()
        self.pretoken_ids = _PretokenIds(tokenizer, dtype) if plain_byte_level(tokenizer) else None
        self.added = added_tokens(tokenizer)

    def _cached(self, story: str) -> bool:
        return self.pretoken_ids is not None and splits_alone(story, self.added)

    def _pieces(self, story: str) -> Iterator[bytes]:
        """IDs of the story's pre-tokens, then <|endoftext|>."""
        assert self.pretoken_ids is not None
        return chain(map(self.pretoken_ids.__getitem__, PRETOKENS.findall(story)), (self.eot,))

    def __call__(self, stories: list[str]) -> np.ndarray:
        cached = [self._cached(story) for story in stories]
        others = iter(self.tokenizer.encode_batch([s for s, c in zip(stories, cached, strict=True) if not c]))
        pieces = (
            self._pieces(story) if c else (np.asarray(next(others), dtype=self.dtype).tobytes(), self.eot)
            for story, c in zip(stories, cached, strict=True)
        )
        return np.frombuffer(b"".join(chain.from_iterable(pieces)), dtype=self.dtype)


def tokenize_stories(stories: list[str], tokenizer: TextTokenizer, progress: Progress | None = None) -> np.ndarray:
    """`StoryEncoder` on a list in memory, in chunks, reporting progress after each."""
    encode = StoryEncoder(tokenizer, token_dtype(tokenizer.vocab_size))
    pieces: list[np.ndarray] = []
    for start in range(0, len(stories), ENCODE_CHUNK):
        pieces.append(encode(stories[start : start + ENCODE_CHUNK]))
        if progress:
            progress(min(start + ENCODE_CHUNK, len(stories)), len(stories))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=encode.dtype)


# ---- the cache -------------------------------------------------------------------------------------------


def _cache_key(source: StorySource, tokenizer: TextTokenizer) -> str:
    parts = [str(FORMAT), tokenizer.sha256, source.name, source.fingerprint]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(_manifest_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _matches(path: Path, manifest: dict[str, Any], dtype: np.dtype) -> bool:
    """The token file is the one the manifest describes: its layout, dtype, size and sampled content."""
    try:
        return (
            manifest.get("format") == FORMAT
            and manifest.get("dtype") == dtype.name
            and path.stat().st_size == manifest["num_tokens"] * dtype.itemsize
            and sampled_sha256(path) == manifest["sample_sha256"]
        )
    except (OSError, KeyError, TypeError):
        return False


def _open(path: Path, manifest: dict[str, Any], dtype: np.dtype) -> TokenStream:
    tokens = np.memmap(path, dtype=dtype, mode="r")
    return TokenStream(tokens, manifest["num_bytes"], manifest["num_stories"], path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _remove_abandoned(path: Path) -> None:
    """Temporary token files that a killed build left behind (`replacing` names them `.NAME.PID.tmp`)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _write_tokens(
    tmp: Path, source: StorySource, tokenizer: TextTokenizer, dtype: np.dtype, progress: Progress | None
) -> dict[str, int]:
    """Encode the source batch by batch, appending each batch's tokens to `tmp`; what was written."""
    encode = StoryEncoder(tokenizer, dtype)
    stories = tokens = num_bytes = 0
    with tmp.open("wb") as out:
        for batch in source.read():
            ids = encode(batch.stories)
            ids.tofile(out)
            stories, tokens = stories + len(batch.stories), tokens + len(ids)
            num_bytes += sum(len(story.encode("utf-8")) for story in batch.stories)
            if progress:
                progress(stories, expected_stories(stories, batch.fraction), tokens=tokens)
        out.flush()
        os.fsync(out.fileno())  # the manifest that follows must never vouch for data still in flight
    if progress:
        progress(stories, stories, tokens=tokens)
    return {"num_tokens": tokens, "num_stories": stories, "num_bytes": num_bytes}


def _build(
    path: Path, source: StorySource, tokenizer: TextTokenizer, dtype: np.dtype, progress: Progress | None
) -> TokenStream:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    _manifest_path(path).unlink(missing_ok=True)  # from here until the new manifest, nothing vouches for `path`
    with replacing(path) as tmp:
        counts = _write_tokens(tmp, source, tokenizer, dtype, progress)
    manifest = counts | {
        "format": FORMAT,
        "dtype": dtype.name,
        "sample_sha256": sampled_sha256(path),
        "tokenizer_sha256": tokenizer.sha256,
        "source": source.name,
        "fingerprint": source.fingerprint,
    }
    write_text(_manifest_path(path), json.dumps(manifest))
    return _open(path, manifest, dtype)


def load_tokens(
    cfg: DataConfig, split: Split, tokenizer: TextTokenizer, progress: Progress | None = None
) -> TokenStream:
    """The token stream of a split: from the cache when a complete one matches its key, else built now."""
    source = split_source(cfg, split)
    path = cache_root(cfg) / f"{_cache_key(source, tokenizer)}.bin"
    dtype = token_dtype(tokenizer.vocab_size)
    manifest = _read_manifest(path)
    if manifest is not None and _matches(path, manifest, dtype):
        return _open(path, manifest, dtype)
    return _build(path, source, tokenizer, dtype, progress)


def require_blocks(stream: TokenStream, seq_len: int, split: str) -> None:
    if len(stream.tokens) < seq_len + 1:
        raise InputError(
            f"the {split} split has {len(stream.tokens)} tokens, fewer than one block of {seq_len + 1}: "
            "add data or lower model.max_seq_len"
        )
