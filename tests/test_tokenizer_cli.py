"""`tstool tokenizer train`: trains byte-level BPE and writes tokenizer.json + tokenizer_meta.json."""

from __future__ import annotations

import json
from pathlib import Path

from tstool.data.tokenizer import EOT, load_tokenizer


def test_train_on_local_file(cli_json, tmp_path: Path) -> None:
    stories = [f"Once upon a time there was a little cat number {i}. The cat liked the sun." for i in range(40)]
    data = tmp_path / "stories.txt"
    data.write_text(f"\n{EOT}\n".join(stories), encoding="utf-8")
    doc = cli_json("tokenizer", "train", "--data", data, "--vocab-size", 300, "--out", "tok")
    meta = json.loads(Path("tok/tokenizer_meta.json").read_text(encoding="utf-8"))
    tok = load_tokenizer("tok")
    assert doc["tokenizer"] == str(Path("tok/tokenizer.json"))
    assert meta["sha256"] == doc["sha256"] == tok.sha256
    assert meta["vocab_size"] == tok.vocab_size <= 300
    assert tok.token(meta["eot_id"]) == EOT
    assert "files:train" in meta["trained_on"]
    assert tok.decode(tok.encode(stories[0])) == stories[0]


def test_train_on_bundled_sample_then_diagnose(cli_json) -> None:
    cli_json("tokenizer", "train", "--limit", 200, "--vocab-size", 512, "--out", "tok")
    doc = cli_json("diagnose-tokenizer", "--tokenizer", "tok", "--no-corpus")
    the = next(f for f in doc["forms"] if f["text"] == " the")
    assert the["single_token"] and the["weighted"]


def test_vocab_below_bytes_is_refused(cli, user_error) -> None:
    user_error(cli("tokenizer", "train", "--limit", 5, "--vocab-size", 100, "--out", "tok"), "257")


def test_out_that_is_a_file_is_refused(cli, user_error, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    user_error(cli("tokenizer", "train", "--limit", 5, "--vocab-size", 300, "--out", "taken"), "is a file")
