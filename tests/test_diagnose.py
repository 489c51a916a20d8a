"""Tokenizer diagnosis: article resolution on real tokenizers, expected-ID checks, merged/split articles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tstool.config import ArticleConfig
from tstool.data.articles import resolve_articles
from tstool.data.tokenizer import EOT, TextTokenizer, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def gpt2(gpt2_dir: Path) -> TextTokenizer:
    return load_tokenizer(gpt2_dir)


def test_gpt2_article_ids(gpt2: TextTokenizer) -> None:
    forms = {f.text: f.ids for f in resolve_articles(gpt2, ArticleConfig()).forms}
    assert (forms[" a"], forms[" the"], forms[" an"]) == ((257,), (262,), (281,))
    assert [gpt2.token(i) for i in (262, 264, 389)] == [" the", " s", " are"]


def test_shipped_tokenizer_resolves_every_single_token_form() -> None:
    tok = load_tokenizer()
    articles = resolve_articles(tok, ArticleConfig())
    for text in (" a", " the", " an", "The", " The", "A"):
        form = next(f for f in articles.forms if f.text == text)
        assert form.single_token and form.ids[0] in articles.ids
        assert tok.token(form.ids[0]) == text
    assert all(tok.token(f.ids[0]) == f.text for f in articles.forms if f.single_token)


def test_expect_ids_wrong_exits_1_and_names_the_real_tokens(cli, gpt2_dir: Path) -> None:
    result = cli("diagnose-tokenizer", "--tokenizer", gpt2_dir, "--expect-ids", "262,264,389", "--no-corpus", "--json")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "264 is ' s'" in result.stderr
    doc = json.loads(result.stdout)
    checks = {c["id"]: c for c in doc["expect_ids"]["checks"]}
    assert (checks[262]["token"], checks[262]["is_article"], checks[262]["ok"]) == (" the", True, True)
    assert (checks[264]["token"], checks[264]["is_article"]) == (" s", False)
    assert (checks[389]["token"], checks[389]["is_article"]) == (" are", False)
    assert {257, 262, 281} <= {a["id"] for a in doc["article_ids"]}
    assert doc["ok"] is False and len(doc["problems"]) == 1


def test_expect_ids_right_passes(cli_json, gpt2_dir: Path) -> None:
    doc = cli_json("diagnose-tokenizer", "--tokenizer", gpt2_dir, "--expect-ids", "257,262,281", "--no-corpus")
    assert doc["ok"] is True and doc["expect_ids"]["ok"] is True
    contexts = {(c["word"], c["context"]): c for c in doc["contexts"]}
    assert contexts[("the", "after_newline")]["ids"] == [464]  # "The" after a newline is the cap_bare token
    assert all(c["status"] == "ok" and c["matches_form"] and c["round_trip"] for c in doc["contexts"])
    first = doc["phrases"][0]
    assert [t["id"] for t in first["tokens"] if t["article"]] == [257, 257]


def test_expect_ids_from_config_and_outside_vocab(cli_json, gpt2_dir: Path) -> None:
    doc = cli_json(
        "diagnose-tokenizer", "--tokenizer", gpt2_dir, "--no-corpus", "--set", "articles.expect_ids=[257,99999]", code=1
    )
    checks = {c["id"]: c for c in doc["expect_ids"]["checks"]}
    assert checks[257]["ok"] and not checks[99999]["in_vocab"]
    assert "99999 is outside the vocabulary" in doc["problems"][0]


def test_bad_expect_ids_is_a_user_error(cli, user_error) -> None:
    user_error(cli("diagnose-tokenizer", "--expect-ids", "262,x", "--no-corpus"), "--expect-ids", "257,262,281")


def test_shipped_tokenizer_with_corpus(cli_json) -> None:
    doc = cli_json("diagnose-tokenizer", "--limit", 30)
    assert doc["ok"] is True
    corpus = doc["corpus"]
    assert corpus["stories"] == 30
    forms = {f["text"]: f for f in corpus["forms"]}
    assert forms[" the"]["token_count"] >= forms[" the"]["word_count"] > 0
    # 'An' is two tokens in the shipped tokenizer: reported as split, not weighted, no failure
    assert any(c["word"] == "an" and c["status"] == "split" for c in doc["contexts"])
    assert not next(f for f in doc["forms"] if f["text"] == "An")["weighted"]


def _merging_tokenizer(path: Path) -> Path:
    """BPE without the word-splitting regex, so merges cross words: ' a little' becomes part of one token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["there was a little girl.", "I saw a little dog."] * 20, trainer=trainer)
    backend.save(str(path))
    return path


def test_merged_article_is_warned(cli_json, tmp_path: Path) -> None:
    doc = cli_json("diagnose-tokenizer", "--tokenizer", _merging_tokenizer(tmp_path / "merge.json"), "--no-corpus")
    statuses = [a["status"] for p in doc["phrases"] for a in p["articles"]]
    assert "merged" in statuses
    merged = next(a for p in doc["phrases"] for a in p["articles"] if a["status"] == "merged")
    assert any(len(t) > len(merged["article"]) + 1 for t in merged["tokens"])
    assert any("merged into" in w for w in doc["warnings"])


def test_split_article_is_warned_and_fails_when_configured(cli_json, tmp_path: Path) -> None:
    tok = train_tokenizer(["the cat and the dog"] * 10, vocab_size=257, show_progress=False)  # bytes only
    path = tok.save(tmp_path / "bytes")
    doc = cli_json("diagnose-tokenizer", "--tokenizer", path, "--no-corpus")
    the = next(f for f in doc["forms"] if f["text"] == " the")
    assert not the["single_token"] and not the["weighted"]
    assert any(c["word"] == "the" and c["status"] == "split" for c in doc["contexts"])
    assert any("split into" in w for w in doc["warnings"])
    assert doc["ok"] is True, "unconfigured multi-token forms are left out, not failures"

    configured = ("--set", "articles.forms=[lower_space,cap_bare]")  # ' the' is split, 'A' is one byte
    doc = cli_json("diagnose-tokenizer", "--tokenizer", path, "--no-corpus", *configured, code=1)
    assert any("' the'" in p for p in doc["problems"])


def test_tables_render_and_a_failed_check_still_prints_its_report(cli, gpt2_dir: Path) -> None:
    result = cli("diagnose-tokenizer", "--tokenizer", gpt2_dir, "--limit", 5, "--expect-ids", "264")
    assert result.exit_code == 1
    assert result.stdout.strip() and result.stderr.startswith("Error: ")
