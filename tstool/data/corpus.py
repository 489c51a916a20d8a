"""Reading stories: the bundled TinyStories sample, local files, or a Hugging Face dataset.

Every split is a `StorySource`: its stories as a stream of batches, read on demand through bounded
memory (a file a megabyte at a time, a dataset's Arrow table a batch at a time), and a fingerprint that
reads no stories (file sizes, modification times and sampled chunks, or a dataset's own fingerprint),
so that a token cache is found without reading the corpus. `load_corpus` gathers a split into a list,
for the tools that keep a small corpus in memory.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple, Protocol

from tstool.config import DataConfig
from tstool.data.tokenizer import EOT
from tstool.errors import InputError

if TYPE_CHECKING:
    import datasets

Split = Literal["train", "val"]
SPLIT_ALIASES = {"validation": "val"}  # the Hugging Face name of val, so either spelling works
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources" / "tinystories"
BUNDLED_FILES = ("train-000.txt.gz", "train-sample-001.txt.gz", "train-sample-002.txt.gz")
# The last stories of the last file are validation; the rest train. 600 stories (~120k tokens) give a
# steady validation figure, and every other story is worth more as training data on a small sample.
BUNDLED_VAL_STORIES = 600
READ_BYTES = 1 << 20  # a text file is decoded this much at a time: memory stays flat whatever its size
BATCH_STORIES = 1024  # stories per batch from lists, parquet files and datasets
NUL_WINDOW = 1_000_000  # a NUL byte this near the start marks a binary file
# A file's fingerprint hashes this many evenly spaced blocks of it, first and last included: about
# 1 MiB read, whatever the file's size.
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16


class Progress(Protocol):
    """`progress(done, total, tokens=None)` after each step of a pass. Over a stream of stories `total` is
    an estimate (`expected_stories`) until the last call, where it equals `done`; `tokens` counts what
    the pass has tokenised so far, where it tokenises."""

    def __call__(self, done: int, total: int, tokens: int | None = None) -> None: ...


class StoryBatch(NamedTuple):
    stories: list[str]
    fraction: float  # of the whole pass, done once this batch is (for progress estimates)


def expected_stories(read: int, fraction: float) -> int:
    """How many stories a pass will read in all, estimated from the `read` so far at `fraction` of it: more
    than `read`, since only the pass's last report, after its last batch, is exact."""
    return max(read + 1, round(read / fraction)) if fraction > 0 else read + 1


class Stories(Protocol):
    """What a pass over a corpus needs: a name, and its stories in batches."""

    @property
    def name(self) -> str: ...

    def read(self) -> Iterator[StoryBatch]: ...


@dataclass(frozen=True)
class Corpus:
    """Stories of one split held in memory, with a fingerprint of their content (for cache keys)."""

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

    def read(self) -> Iterator[StoryBatch]:
        return _list_batches(self.stories)


@dataclass(frozen=True)
class StorySource:
    """One split's stories, streamed in batches by `read`; `fingerprint` names them without reading them."""

    name: str
    fingerprint: str
    batches: Callable[[], Iterator[StoryBatch]]

    def read(self) -> Iterator[StoryBatch]:
        return self.batches()


def _stripped(texts: Iterable[object]) -> list[str]:
    """Stories as tstool keeps them: strings with surrounding whitespace removed, empty ones dropped."""
    return [story for text in texts if isinstance(text, str) and (story := text.strip())]


def split_stories(text: str) -> list[str]:
    """Stories are separated by <|endoftext|>; surrounding whitespace is not part of a story."""
    return _stripped(text.split(EOT))


def _list_batches(stories: list[str]) -> Iterator[StoryBatch]:
    for start in range(0, len(stories), BATCH_STORIES):
        end = min(start + BATCH_STORIES, len(stories))
        yield StoryBatch(stories[start:end], end / len(stories))


# ---- fingerprints --------------------------------------------------------------------------------------


def sampled_sha256(path: Path) -> str:
    """sha256 of SAMPLE_BLOCKS evenly spaced blocks of a file (of all of a small one)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            digest.update(handle.read())
            return digest.hexdigest()
        step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
        for block in range(SAMPLE_BLOCKS):
            handle.seek(round(block * step))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """Size, modification time and sampled content, read in a moment: a rewrite goes unseen only if it keeps
    the size, the modification time and every sampled block."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{sampled_sha256(path)}"


# ---- local files ---------------------------------------------------------------------------------------


def _checked(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"data file {path} does not exist: check the path passed to --data")
    if not path.is_file():
        raise InputError(f"data path {path} is not a file: pass text, .jsonl or .parquet files")
    if path.stat().st_size == 0:
        raise InputError(f"data file {path} is empty: pass a file with stories in it")
    return path


def _gzip_error(path: Path, exc: Exception) -> InputError:
    return InputError(f"data file {path} is not valid gzip ({exc}): re-compress it or pass it uncompressed")


def _read_step(handle: BinaryIO, path: Path) -> bytes:
    try:
        return handle.read(READ_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        if path.suffix != ".gz":
            raise
        raise _gzip_error(path, exc)


def _raw_chunks(path: Path) -> Iterator[tuple[bytes, int]]:
    """The file's bytes (gunzipped for .gz), a step at a time, with how far into the file on disk each ends."""
    with path.open("rb") as raw, gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else nullcontext(raw) as handle:
        while chunk := _read_step(handle, path):
            yield chunk, raw.tell()


def _decode(decoder: codecs.IncrementalDecoder, chunk: bytes, read: int, path: Path, final: bool = False) -> str:
    pending = len(decoder.getstate()[0])  # bytes of a character split across steps, read before `chunk`
    try:
        return decoder.decode(chunk, final)
    except UnicodeDecodeError as exc:
        offset = read - pending + exc.start
        raise InputError(f"data file {path} is not UTF-8 (bad byte at offset {offset}): convert it to UTF-8")


def _decoded(path: Path) -> Iterator[tuple[str, int]]:
    """The file as UTF-8 text, a step at a time, with how far into the file on disk each step ends."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    read, has_text = 0, False
    for chunk, position in _raw_chunks(path):
        if read == 0 and b"\0" in chunk[:NUL_WINDOW]:
            raise InputError(f"data file {path} looks binary (it holds NUL bytes): pass UTF-8 text, .jsonl or .parquet")
        has_text = has_text or bool(chunk.strip())
        yield _decode(decoder, chunk, read, path), position
        read += len(chunk)
    _decode(decoder, b"", read, path, final=True)
    if not has_text:
        raise InputError(f"data file {path} is empty: pass a file with stories in it")


def _text_batches(path: Path) -> Iterator[tuple[list[str], int]]:
    """Stories separated by <|endoftext|>; the text after a step's last separator waits for the next step."""
    tail, position = "", 0
    for text, position in _decoded(path):
        pieces = (tail + text).split(EOT)
        tail = pieces.pop()
        yield _stripped(pieces), position
    yield _stripped([tail]), position


def _jsonl_texts(path: Path, lines: list[str], before: int) -> Iterator[str]:
    """The 'text' field of each line; `before` lines came earlier in the file (for error messages)."""
    for number, line in enumerate(lines, before + 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path} line {number} is not JSON: each line must be an object with a 'text' field")
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{path} line {number} has no string 'text' field: each line needs {{\"text\": ...}}")
        yield row["text"]


def _jsonl_batches(path: Path) -> Iterator[tuple[list[str], int]]:
    tail, before, position = "", 0, 0
    for text, position in _decoded(path):
        lines = (tail + text).split("\n")
        tail = lines.pop()
        yield _stripped(_jsonl_texts(path, lines, before)), position
        before += len(lines)
    yield _stripped(_jsonl_texts(path, [tail], before)), position


def _gunzipped(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise _gzip_error(path, exc)


def _parquet_batches(path: Path) -> Iterator[tuple[list[str], int]]:
    """The 'text' column a batch of rows at a time (a .parquet.gz needs random access: it is gunzipped whole)."""
    import pyarrow.parquet as pq

    source = io.BytesIO(_gunzipped(path)) if path.suffix == ".gz" else path
    try:
        parquet = pq.ParquetFile(source)
    except Exception as exc:
        raise InputError(f"{path} is not a readable parquet file ({str(exc).splitlines()[0]}): check the file")
    columns = parquet.schema_arrow.names
    if "text" not in columns:
        raise InputError(f"{path} has no 'text' column (columns: {', '.join(columns)}): add one")
    size, rows, done = path.stat().st_size, max(1, parquet.metadata.num_rows), 0
    for batch in parquet.iter_batches(batch_size=BATCH_STORIES, columns=["text"]):
        done += batch.num_rows
        yield _stripped(batch.column(0).to_pylist()), size * done // rows


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


FORMATS = {".parquet": _parquet_batches, ".jsonl": _jsonl_batches}  # anything else is text


def _file_batches(path: Path) -> Iterator[tuple[list[str], int]]:
    """One file's stories in batches, with how far into the file on disk each batch ends."""
    found = False
    for stories, position in FORMATS.get(_base_suffix(path), _text_batches)(path):
        found = found or bool(stories)
        yield stories, position
    if not found:
        raise InputError(f"data file {path} holds no stories: pass a file with text in it")


def read_file(path: Path) -> list[str]:
    """Stories from one local file: text with <|endoftext|> separators, .jsonl or .parquet (.gz allowed)."""
    return [story for stories, _ in _file_batches(_checked(path)) for story in stories]


def _files_source(paths: list[str], name: str) -> StorySource:
    files = [_checked(Path(path)) for path in paths]
    sizes = [path.stat().st_size for path in files]

    def batches() -> Iterator[StoryBatch]:
        before = 0
        for path, size in zip(files, sizes, strict=True):
            for stories, position in _file_batches(path):
                yield StoryBatch(stories, (before + position) / sum(sizes))
            before += size

    return StorySource(name, ",".join(file_fingerprint(path) for path in files), batches)


# ---- the bundled sample and Hugging Face datasets ---------------------------------------------------------


def read_bundled(split: Split) -> list[str]:
    stories: list[str] = []
    for name in BUNDLED_FILES:
        stories.extend(split_stories(gzip.decompress((BUNDLED_DIR / name).read_bytes()).decode("utf-8")))
    return stories[-BUNDLED_VAL_STORIES:] if split == "val" else stories[:-BUNDLED_VAL_STORIES]


def _bundled_source(split: Split) -> StorySource:
    """A small sample: read whole when the stream starts."""
    fingerprint = ",".join(file_fingerprint(BUNDLED_DIR / name) for name in BUNDLED_FILES)
    return StorySource(f"bundled:{split}", fingerprint, lambda: _list_batches(read_bundled(split)))


def _hf_dataset(name: str, split: str) -> datasets.Dataset:
    """A dataset saved with `save_to_disk` (a local folder) or a hub name, loaded through `datasets`
    (memory-mapped Arrow: nothing is read into memory yet)."""
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
    return loaded


def _hf_source(name: str, split: str) -> StorySource:
    loaded = _hf_dataset(name, split)
    texts = loaded.select_columns("text")

    def batches() -> Iterator[StoryBatch]:
        done = 0
        for batch in texts.iter(batch_size=BATCH_STORIES):
            done += len(batch["text"])
            yield StoryBatch(_stripped(batch["text"]), done / len(texts))

    # The dataset's own fingerprint, which `datasets` derives from its files and the steps that made them.
    return StorySource(f"{name}:{split}", loaded._fingerprint, batches)


def read_hf_dataset(name: str, split: str) -> list[str]:
    return gather(_hf_source(name, split)).stories


# ---- splits ----------------------------------------------------------------------------------------------


def _story_range(batches: Iterator[StoryBatch], start: int, stop: int | None) -> Iterator[StoryBatch]:
    """Stories start..stop of a stream (stop None: to its end); reading ends at `stop`."""
    seen = 0
    for batch in batches:
        first, seen = seen, seen + len(batch.stories)
        if seen > start:
            end = None if stop is None else stop - first
            yield batch._replace(stories=batch.stories[max(0, start - first) : end])
        if stop is not None and seen >= stop:
            return


def _held_out_index(count: int, fraction: float) -> int:
    return count - max(1, round(count * fraction))


def _held_out(source: StorySource, split: Split, fraction: float) -> StorySource:
    """`source` less its last `fraction` of stories (train), or those alone (val): a counting pass finds the cut."""

    def batches() -> Iterator[StoryBatch]:
        count = sum(len(batch.stories) for batch in source.read())
        if count < 2:
            raise InputError("the data holds a single story: add more stories or pass --val-data for validation")
        cut = _held_out_index(count, fraction)
        yield from _story_range(source.read(), 0, cut) if split == "train" else _story_range(source.read(), cut, None)

    return StorySource(source.name, f"{source.fingerprint}|held out {fraction}", batches)


def _limited(source: StorySource, limit: int | None, split: str) -> StorySource:
    """The first `limit` stories of `source` (all of them without a limit); a split without any is an error."""

    def batches() -> Iterator[StoryBatch]:
        found = 0
        for batch in source.read() if limit is None else _story_range(source.read(), 0, limit):
            found += len(batch.stories)
            yield batch if limit is None else batch._replace(fraction=max(batch.fraction, found / limit))
        if not found:
            raise InputError(f"the {split} split holds no stories: check --data/--dataset and --limit")

    return StorySource(
        source.name, source.fingerprint if limit is None else f"{source.fingerprint}|limit {limit}", batches
    )


def split_source(cfg: DataConfig, split: Split) -> StorySource:
    """The stories of one split, as the data config selects them (limit applied), not yet read."""
    if cfg.dataset:
        source = _hf_source(cfg.dataset, cfg.split if split == "train" else cfg.val_split)
    elif cfg.files and split == "val" and cfg.val_files:
        source = _files_source(cfg.val_files, "val_files")
    elif cfg.files:
        source = _files_source(cfg.files, f"files:{split}")
        if not cfg.val_files:
            source = _held_out(source, split, cfg.val_fraction)
    else:
        source = _bundled_source(split)
    return _limited(source, cfg.limit, split)


def canonical_split(name: str) -> str:
    """`validation` as `val` (see SPLIT_ALIASES); any other name unchanged."""
    return SPLIT_ALIASES.get(name, name)


def named_source(cfg: DataConfig, split: str) -> StorySource:
    """`train`/`val` (or `validation`) as the config defines them; with a HF dataset any split name it has."""
    split = canonical_split(split)
    if split in ("train", "val"):
        return split_source(cfg, split)  # type: ignore[arg-type]
    if cfg.dataset:
        return _limited(_hf_source(cfg.dataset, split), cfg.limit, split)
    raise InputError(f"unknown split '{split}': use --split train or --split val (or validation)")


def gather(stories: Stories) -> Corpus:
    """All the stories of a stream, in memory."""
    return Corpus(stories.name, [story for batch in stories.read() for story in batch.stories])


def load_corpus(cfg: DataConfig, split: Split) -> Corpus:
    """The stories of one split, as the data config selects them (limit applied), in memory."""
    return gather(split_source(cfg, split))


def load_named_split(cfg: DataConfig, split: str) -> Corpus:
    """`named_source`, in memory."""
    return gather(named_source(cfg, split))
