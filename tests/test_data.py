"""Reading stories: local formats, the bundled sample, Hugging Face datasets on disk, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tstool.config import DataConfig
from tstool.data.corpus import (
    BUNDLED_VAL_STORIES,
    Corpus,
    load_corpus,
    load_named_split,
    read_bundled,
    read_file,
    read_hf_dataset,
    split_stories,
)
from tstool.errors import InputError
from tstool.data.tokenizer import EOT

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
