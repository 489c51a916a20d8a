"""Reading stories: local formats, the bundled sample, Hugging Face datasets on disk, and bad input;
streaming them in steps, and the token cache built from the stream."""

from __future__ import annotations

import gzip
import json
import os
import random
from itertools import chain
from pathlib import Path

import numpy as np
import pytest

from tstool.config import DataConfig
from tstool.data import corpus
from tstool.data.corpus import (
    BUNDLED_VAL_STORIES,
    Corpus,
    expected_stories,
    file_fingerprint,
    load_corpus,
    load_named_split,
    read_bundled,
    read_file,
    read_hf_dataset,
    split_source,
    split_stories,
)
from tstool.data.packing import PUNCTUATION, StoryEncoder, load_tokens, plain_byte_level, token_dtype, tokenize_stories
from tstool.data.tokenizer import EOT, TextTokenizer, load_tokenizer
from tstool.errors import InputError

STORIES = ["Once upon a time there was a cat.", "The dog ran home.\nIt was happy.", "An owl flew by."]


def _text(stories: list[str]) -> str:
    return f"\n{EOT}\n".join(stories) + f"\n{EOT}\n"


def test_split_stories_strips_and_drops_empty() -> None:
    assert split_stories(f"  a \n{EOT}\n\n{EOT}b{EOT}   ") == ["a", "b"]


def _write(path: Path, stories: list[str]) -> Path:
    suffixes = path.suffixes
    if ".jsonl" in suffixes:
        raw = "".join(json.dumps({"text": s}) + "\n" for s in stories).encode("utf-8")
    elif ".parquet" in suffixes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": stories}), path)
        return path
    else:
        raw = _text(stories).encode("utf-8")
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.mark.parametrize("name", ["s.txt", "s.txt.gz", "s.md", "s.jsonl", "s.jsonl.gz", "s.parquet"])
def test_read_every_format(tmp_path: Path, name: str) -> None:
    assert read_file(_write(tmp_path / name, STORIES)) == STORIES


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"   \n\n", "is empty"),
        (b"story\x00with a NUL", "binary"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_text_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment):
        read_file(path)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.txt.gz", b"not gzip at all", "not valid gzip"),
        ("bad.jsonl", b'{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
        ("bad.jsonl", b'{"story": "no text field"}\n', "no string 'text' field"),
        ("bad.parquet", b"PAR1 garbage", "not a readable parquet"),
    ],
)
def test_bad_structured_files(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment):
        read_file(path)


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not a file"):
        read_file(tmp_path)


def test_bundled_splits_are_disjoint_and_stable() -> None:
    train, val = read_bundled("train"), read_bundled("val")
    assert len(val) == BUNDLED_VAL_STORIES and len(train) > 10 * len(val)
    assert not set(train) & set(val)
    assert Corpus("a", train[:5]).fingerprint == Corpus("b", list(train[:5])).fingerprint
    assert Corpus("a", train[:5]).fingerprint != Corpus("a", train[1:6]).fingerprint


def test_load_corpus_holds_out_val_from_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.txt", [f"Story {i}." for i in range(40)])
    cfg = DataConfig(files=[str(path)], val_fraction=0.1)
    train, val = load_corpus(cfg, "train"), load_corpus(cfg, "val")
    assert (len(train.stories), len(val.stories)) == (36, 4)
    assert train.stories + val.stories == [f"Story {i}." for i in range(40)]
    assert len(load_corpus(cfg.model_copy(update={"limit": 5}), "train").stories) == 5


def test_load_corpus_with_val_files_and_single_story(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.txt", ["Only story."])
    with pytest.raises(InputError, match="single story"):
        load_corpus(DataConfig(files=[str(one)]), "train")
    cfg = DataConfig(files=[str(one)], val_files=[str(_write(tmp_path / "val.txt", STORIES))])
    assert load_corpus(cfg, "train").stories == ["Only story."]
    assert load_corpus(cfg, "val").stories == STORIES


def test_named_split_on_local_data_is_train_or_val() -> None:
    assert load_named_split(DataConfig(limit=3), "val").name == "bundled:val"
    with pytest.raises(InputError, match="unknown split 'test'"):
        load_named_split(DataConfig(), "test")


def test_datasets_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": STORIES + ["  ", None]}).save_to_disk(tmp_path / "plain")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": STORIES}), "test": datasets.Dataset.from_dict({"text": ["x."]})}
    ).save_to_disk(tmp_path / "dict")
    datasets.Dataset.from_dict({"body": STORIES}).save_to_disk(tmp_path / "notext")
    assert read_hf_dataset(str(tmp_path / "plain"), "train") == STORIES
    assert read_hf_dataset(str(tmp_path / "dict"), "test") == ["x."]
    assert load_named_split(DataConfig(dataset=str(tmp_path / "dict"), limit=2), "train").stories == STORIES[:2]
    with pytest.raises(InputError, match="has no split 'validation'"):
        load_corpus(DataConfig(dataset=str(tmp_path / "dict")), "val")
    with pytest.raises(InputError, match="no 'text' column"):
        read_hf_dataset(str(tmp_path / "notext"), "train")


def test_unreachable_dataset_name_fails_offline() -> None:
    with pytest.raises(InputError, match="could not be loaded"):
        read_hf_dataset("no-such-user/no-such-dataset-tstool", "train")


# ---- streaming: a file is read a step at a time ---------------------------------------------------------


@pytest.fixture
def tiny_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of 5 bytes: separators, lines and multi-byte characters straddle steps."""
    monkeypatch.setattr(corpus, "READ_BYTES", 5)


@pytest.mark.parametrize("name", ["s.txt", "s.txt.gz", "s.jsonl"])
def test_reading_in_small_steps_gives_the_same_stories(tmp_path: Path, tiny_steps: None, name: str) -> None:
    stories = STORIES + ["Zoë’s café — “naïve” 🙂.", "Last."]
    assert read_file(_write(tmp_path / name, stories)) == stories


def test_errors_name_the_right_place_across_steps(tmp_path: Path, tiny_steps: None) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes("Story one ü.".encode() + b" caf\xe9 " + b"x" * 20)
    with pytest.raises(InputError, match="bad byte at offset 17"):
        read_file(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"text": "a long first story"}\n{"text": "two"}\n\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 4 has no string 'text' field"):
        read_file(lines)


def test_a_file_of_separators_holds_no_stories(tmp_path: Path) -> None:
    path = tmp_path / "seps.txt"
    path.write_text(f"{EOT}\n{EOT}  ", encoding="utf-8")
    with pytest.raises(InputError, match="holds no stories"):
        read_file(path)


def test_fingerprint_reads_no_stories_and_sees_a_rewrite(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.txt", STORIES)
    first = file_fingerprint(path)
    assert file_fingerprint(path) == first
    stat = path.stat()
    path.write_text(_text(STORIES).replace("cat", "dog"), encoding="utf-8")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old modification time
    assert path.stat().st_size == stat.st_size
    assert file_fingerprint(path) != first


def test_held_out_split_streams_as_the_list_splits(tmp_path: Path, tiny_steps: None) -> None:
    stories = [f"Story {i}." for i in range(40)]
    cfg = DataConfig(files=[str(_write(tmp_path / "s.txt", stories))], val_fraction=0.1, limit=30)
    train = [s for batch in split_source(cfg, "train").read() for s in batch.stories]
    val = [s for batch in split_source(cfg, "val").read() for s in batch.stories]
    assert (train, val) == (stories[:30], stories[36:])


def test_expected_stories_stays_above_the_stories_read() -> None:
    assert expected_stories(10, 0.25) == 40
    assert expected_stories(10, 1.0) == expected_stories(10, 0.999) == 11  # the last batch may not end the pass
    assert expected_stories(0, 0.0) == 1


# ---- encoding: the pre-token cache agrees with tokenizers ------------------------------------------------


def _reference(tokenizer: TextTokenizer, stories: list[str]) -> np.ndarray:
    rows = [ids + [tokenizer.eot_id] for ids in tokenizer.encode_batch(stories)]
    return np.fromiter(chain.from_iterable(rows), dtype=token_dtype(tokenizer.vocab_size))


def _random_texts(alphabet: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("gpt2", [False, True])
def test_story_encoder_matches_tokenizers(gpt2_dir: Path, gpt2: bool) -> None:
    tokenizer = load_tokenizer(gpt2_dir if gpt2 else None)
    assert plain_byte_level(tokenizer)
    # Contractions in either case, runs of every ASCII space, control characters, digits, punctuation;
    # then characters that must take the tokenizers path: letters and spaces beyond ASCII, <|endoftext|>.
    simple = list("aAzZ09 '\t\n\r\x0b\x0c\x1c\x00.,!?-_\"") + ["'s", "'S", "'ll", "'re", "''", "  ", " the"]
    simple += list(PUNCTUATION)
    other = simple + ["é", "ñ", "\u00a0", "\u2028", "\u0301", EOT]
    encode = StoryEncoder(tokenizer, token_dtype(tokenizer.vocab_size))
    for stories in (read_bundled("val"), _random_texts(simple, 3000, 1), _random_texts(other, 3000, 2)):
        assert np.array_equal(encode(stories), _reference(tokenizer, stories))


def test_other_tokenizers_take_the_tokenizers_path(tmp_path: Path) -> None:
    config = json.loads(load_tokenizer().backend.to_str())
    config["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    lowercase = load_tokenizer(tmp_path / "tokenizer.json")
    assert not plain_byte_level(lowercase)
    stories = ["The Cat said: 'THE END'."] + read_bundled("val")[:50]
    assert np.array_equal(tokenize_stories(stories, lowercase), _reference(lowercase, stories))


# ---- the token cache: streamed, found without reading, rebuilt when incomplete --------------------------


def _stories_file(tmp_path: Path) -> DataConfig:
    stories = read_bundled("val")[:200]
    return DataConfig(files=[str(_write(tmp_path / "stories.txt.gz", stories))], cache_dir=str(tmp_path / "cache"))


def test_streamed_cache_holds_the_tokens_of_the_whole_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "READ_BYTES", 4096)  # many steps, a batch each
    cfg, tokenizer = _stories_file(tmp_path), load_tokenizer()
    calls: list[tuple[int, int, int | None]] = []
    stream = load_tokens(cfg, "train", tokenizer, lambda done, total, tokens=None: calls.append((done, total, tokens)))
    stories = load_corpus(cfg, "train").stories
    assert np.array_equal(stream.tokens, tokenize_stories(stories, tokenizer))
    assert (stream.num_stories, stream.num_bytes) == (len(stories), Corpus("x", stories).num_bytes)
    assert len(calls) > 5
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert all(done < total for done, total, _ in calls[:-1])
    assert calls[-1] == (len(stories), len(stories), len(stream.tokens))


def test_warm_cache_reads_no_stories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, tokenizer = _stories_file(tmp_path), load_tokenizer()
    first = load_tokens(cfg, "val", tokenizer)

    def no_reading(path: Path) -> None:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(corpus, "_file_batches", no_reading)
    again = load_tokens(cfg, "val", tokenizer)
    assert again.path == first.path
    assert np.array_equal(again.tokens, first.tokens)


@pytest.mark.parametrize("damage", ["no manifest", "truncated", "overwritten", "bad manifest", "other format"])
def test_damaged_cache_is_rebuilt_not_read(tmp_path: Path, damage: str) -> None:
    cfg, tokenizer = _stories_file(tmp_path), load_tokenizer()
    good = np.array(load_tokens(cfg, "train", tokenizer).tokens)
    path = next(Path(cfg.cache_dir).glob("*.bin"))
    manifest = path.with_suffix(".json")
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-2])
    elif damage == "overwritten":
        path.write_bytes(bytes(path.stat().st_size))
    elif damage == "bad manifest":
        manifest.write_text("{not json", encoding="utf-8")
    else:
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": 1}), encoding="utf-8")
    rebuilt = load_tokens(cfg, "train", tokenizer)
    assert rebuilt.path == path
    assert np.array_equal(rebuilt.tokens, good)
    assert json.loads(manifest.read_text())["num_tokens"] == len(good)


def test_files_a_killed_build_left_are_removed(tmp_path: Path) -> None:
    cfg, tokenizer = _stories_file(tmp_path), load_tokenizer()
    path = load_tokens(cfg, "train", tokenizer).path
    path.with_suffix(".json").unlink()
    dead = path.parent / f".{path.name}.999999999.tmp"  # no process has this ID
    writing = path.parent / f".{path.name}.{os.getppid()}.tmp"  # a live process may still be writing it
    dead.write_bytes(b"half")
    writing.write_bytes(b"half")
    load_tokens(cfg, "train", tokenizer)
    assert not dead.exists()
    assert writing.exists()


def test_dataset_cache_is_keyed_by_its_fingerprint(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": STORIES * 5}),
            "validation": datasets.Dataset.from_dict({"text": STORIES}),
        }
    ).save_to_disk(tmp_path / "dict")
    cfg, tokenizer = DataConfig(dataset=str(tmp_path / "dict"), cache_dir=str(tmp_path / "cache")), load_tokenizer()
    first = load_tokens(cfg, "train", tokenizer)
    assert load_tokens(cfg, "train", tokenizer).path == first.path
    assert first.num_stories == 15
    assert load_tokens(cfg, "val", tokenizer).path != first.path
