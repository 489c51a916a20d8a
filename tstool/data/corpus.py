"""Reading stories: the bundled TinyStories sample, local files, or a Hugging Face dataset."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tstool.config import DataConfig
from tstool.data.tokenizer import EOT
from tstool.errors import InputError

Split = Literal["train", "val"]
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources" / "tinystories"
BUNDLED_FILES = ("train-000.txt.gz", "train-sample-001.txt.gz", "train-sample-002.txt.gz")
# The last stories of the last file are validation; the rest train. 600 stories (~120k tokens) give a
# steady validation figure, and every other story is worth more as training data on a small sample.
BUNDLED_VAL_STORIES = 600
TEXT_SUFFIXES = (".txt", ".text", ".md")


@dataclass(frozen=True)
class Corpus:
    """Stories of one split, with a fingerprint of their content (for cache keys)."""

    name: str
    stories: list[str]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for story in self.stories:
            digest.update(story.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()

    @property
    def num_bytes(self) -> int:
        return sum(len(s.encode("utf-8")) for s in self.stories)


def split_stories(text: str) -> list[str]:
    """Stories are separated by <|endoftext|>; surrounding whitespace is not part of a story."""
    return [s.strip() for s in text.split(EOT) if s.strip()]


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"data file {path} does not exist: check the path passed to --data")
    if not path.is_file():
        raise InputError(f"data path {path} is not a file: pass text, .jsonl or .parquet files")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"data file {path} is not valid gzip ({exc}): re-compress it or pass it uncompressed")
    if not raw.strip():
        raise InputError(f"data file {path} is empty: pass a file with stories in it")
    return raw


def _decode(path: Path, raw: bytes) -> str:
    if b"\0" in raw[:1_000_000]:
        raise InputError(f"data file {path} looks binary (it holds NUL bytes): pass UTF-8 text, .jsonl or .parquet")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"data file {path} is not UTF-8 (bad byte at offset {exc.start}): convert it to UTF-8")


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _read_jsonl(path: Path, text: str) -> list[str]:
    stories = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path} line {number} is not JSON: each line must be an object with a 'text' field")
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{path} line {number} has no string 'text' field: each line needs {{\"text\": ...}}")
        stories.append(row["text"])
    return stories


def _read_parquet(path: Path, raw: bytes) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:
        raise InputError(f"{path} is not a readable parquet file ({str(exc).splitlines()[0]}): check the file")
    if "text" not in table.column_names:
        raise InputError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)}): add one")
    return [s for s in table.column("text").to_pylist() if isinstance(s, str)]


def read_file(path: Path) -> list[str]:
    """Stories from one local file: text with <|endoftext|> separators, .jsonl or .parquet (.gz allowed)."""
    raw = _read_bytes(path)
    suffix = _base_suffix(path)
    if suffix == ".parquet":
        stories = _read_parquet(path, raw)
    elif suffix == ".jsonl":
        stories = _read_jsonl(path, _decode(path, raw))
    else:
        stories = split_stories(_decode(path, raw))
    stories = [s.strip() for s in stories if s.strip()]
    if not stories:
        raise InputError(f"data file {path} holds no stories: pass a file with text in it")
    return stories


def read_files(paths: list[str]) -> list[str]:
    stories: list[str] = []
    for path in paths:
        stories.extend(read_file(Path(path)))
    return stories


def read_bundled(split: Split) -> list[str]:
    stories: list[str] = []
    for name in BUNDLED_FILES:
        stories.extend(split_stories(gzip.decompress((BUNDLED_DIR / name).read_bytes()).decode("utf-8")))
    return stories[-BUNDLED_VAL_STORIES:] if split == "val" else stories[:-BUNDLED_VAL_STORIES]


def read_hf_dataset(name: str, split: str) -> list[str]:
    """A dataset saved with `save_to_disk` (a local folder) or a hub name, loaded through `datasets`."""
    import datasets

    try:
        if Path(name).is_dir():
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise InputError(
                        f"dataset {name} has no split '{split}' (it has {', '.join(loaded)}): pass --split"
                    )
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(name, split=split)
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise InputError(
            f"dataset '{name}' split '{split}' could not be loaded ({reason}): check the name, split and network, "
            "or pass local files with --data"
        ) from None
    if "text" not in loaded.column_names:
        raise InputError(f"dataset '{name}' has no 'text' column (columns: {', '.join(loaded.column_names)})")
    return [s.strip() for s in loaded["text"] if isinstance(s, str) and s.strip()]


def _held_out_index(count: int, fraction: float) -> int:
    return count - max(1, round(count * fraction))


def load_corpus(cfg: DataConfig, split: Split) -> Corpus:
    """The stories of one split, as the data config selects them (limit applied)."""
    if cfg.dataset:
        hf_split = cfg.split if split == "train" else cfg.val_split
        stories, name = read_hf_dataset(cfg.dataset, hf_split), f"{cfg.dataset}:{hf_split}"
    elif cfg.files:
        if split == "val" and cfg.val_files:
            stories, name = read_files(cfg.val_files), "val_files"
        else:
            stories = read_files(cfg.files)
            if not cfg.val_files:
                if len(stories) < 2:
                    raise InputError(
                        "the data holds a single story: add more stories or pass --val-data for validation"
                    )
                cut = _held_out_index(len(stories), cfg.val_fraction)
                stories = stories[:cut] if split == "train" else stories[cut:]
            name = f"files:{split}"
    else:
        stories, name = read_bundled(split), f"bundled:{split}"
    if cfg.limit is not None:
        stories = stories[: cfg.limit]
    if not stories:
        raise InputError(f"the {split} split holds no stories: check --data/--dataset and --limit")
    return Corpus(name=name, stories=stories)


def load_named_split(cfg: DataConfig, split: str) -> Corpus:
    """`train`/`val` as the config defines them; with a HF dataset any split name it has."""
    if split in ("train", "val"):
        return load_corpus(cfg, split)  # type: ignore[arg-type]
    if cfg.dataset:
        stories = read_hf_dataset(cfg.dataset, split)[: cfg.limit]
        return Corpus(name=f"{cfg.dataset}:{split}", stories=stories)
    raise InputError(f"unknown split '{split}': use --split train or --split val")
