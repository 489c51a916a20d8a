"""Corpus article statistics: word-level counting on text with known answers, token level, the CLI; the
parallel pass over chunks, its intervals and stopping at a precision."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest

from tstool.config import ArticleConfig
from tstool.data import stats
from tstool.data.articles import resolve_articles
from tstool.data.corpus import Corpus, read_bundled
from tstool.data.packing import PUNCTUATION
from tstool.data.stats import count_article_tokens, count_articles, dataset_stats, find_articles, ratio_interval
from tstool.data.tokenizer import EOT, load_tokenizer

# Every article in TEXT, in order: (word, form, sentence-initial). banana, Anna, theater, another and
# the "a" inside "dog's" are not articles.
TEXT = (
    "The banana and Anna went to the theater with another friend.\n"
    '"A dog!" she said. An owl saw an apple, and THE END came.\n'
    'A cat sat. "The end," he said. It was a dog\'s toy.'
)
TEXT_ARTICLES = [
    ("the", "cap_bare", True),
    ("the", "lower_space", False),
    ("a", "cap_bare", True),
    ("an", "cap_space", True),
    ("an", "lower_space", False),
    ("the", "other", False),
    ("a", "cap_bare", True),
    ("the", "cap_bare", True),
    ("a", "lower_space", False),
]


def test_find_articles_on_known_text() -> None:
    found = [(m.word, m.form, m.initial) for m in find_articles(TEXT)]
    assert found == TEXT_ARTICLES


def test_count_articles_on_known_text() -> None:
    counts = count_articles(TEXT)
    assert counts.words == 36
    assert counts.total == 9
    assert counts.by_word() == {"the": 4, "a": 3, "an": 2}
    assert counts.by_form() == {"cap_bare": 4, "lower_space": 3, "cap_space": 1, "other": 1}
    assert counts.by_position() == {"initial": 5, "inner": 4}
    assert counts.per_100_words() == pytest.approx(100 * 9 / 36)
    row = next(r for r in counts.to_dict()["rows"] if (r["word"], r["form"]) == ("the", "cap_bare"))
    assert (row["initial"], row["inner"], row["count"]) == (2, 0, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("banana Anna theater another Thea Andy", []),
        ("I saw a cat.", [("a", "lower_space", False)]),
        ('"Hi!" The dog ran.', [("the", "cap_space", True)]),
        ('Is it? "A cat," he said.', [("a", "cap_bare", True)]),
        ('He said, "a cat."', [("a", "lower_bare", False)]),
        ("Hello.\nAn owl.", [("an", "cap_bare", True)]),
        ("a", [("a", "lower_bare", True)]),
        ("It is a's and the'.", [("the", "lower_space", False)]),
        ("Zoë saw a café.", [("a", "lower_space", False)]),
    ],
)
def test_article_forms_and_positions(text: str, expected: list[tuple[str, str, bool]]) -> None:
    assert [(m.word, m.form, m.initial) for m in find_articles(text)] == expected


def test_words_are_letters_with_inner_apostrophes() -> None:
    assert count_articles("Zoë's dog, 3 cats and don't-stop!").words == 6  # Zoë's dog cats and don't stop


def test_count_from_start_skips_the_prompt_but_uses_its_context() -> None:
    prompt = "There was a cat. "
    counts = count_articles(prompt + "The dog saw a bird.", start=len(prompt))
    assert counts.words == 5
    assert dict(counts.counts) == {("the", "cap_space", True): 1, ("a", "lower_space", False): 1}


def test_configured_words() -> None:
    assert count_articles("Some dogs saw some cats and a bird.", words=["some"]).by_word() == {"some": 2}


def test_token_counts_flag_article_tokens_inside_words() -> None:
    tok = load_tokenizer()
    the = tok.encode(" the")
    assert len(the) == 1, "the shipped tokenizer has ' the' as one token"
    assert tok.encode(" theater")[0] == the[0], "the shipped tokenizer splits ' theater' as ' the' + 'ater'"
    counts = count_article_tokens(tok, ["I like the theater."], the)
    assert counts.by_id[the[0]] == 2
    assert counts.inside_word[the[0]] == 1
    assert counts.lengths == [len(tok.encode("I like the theater."))]


def test_dataset_stats_on_known_corpus() -> None:
    stories = [
        "There was a dog. There was a cat.",
        "Once upon a time, there was an owl.",
        "The owl saw the moon.",
        "Tom ran home.",
    ]
    tok = load_tokenizer()
    stats = dataset_stats(Corpus("hand", stories), tok, resolve_articles(tok, ArticleConfig()))
    doc = stats.to_dict()
    assert (doc["stories"], doc["words"]) == (4, 24)
    assert doc["word_level"]["articles"] == 6
    assert doc["per_story"]["stories_without_articles"] == 1
    assert doc["per_story"]["articles_per_100_words"]["median"] == pytest.approx(25.0)
    assert doc["tokens"] == sum(len(tok.encode(s)) for s in stories)
    assert doc["tokens_per_story"]["max"] == max(len(tok.encode(s)) for s in stories)
    contexts = {c["context"]: c for c in doc["contexts"]}
    assert contexts["there was"]["count"] == 3
    assert contexts["there was"]["by_article"] == {"a": 2, "an": 1}
    assert contexts["there was"]["rate"] == 1.0
    assert contexts["saw"]["by_article"] == {"the": 1}
    # "dog." ends a phrase: it is never a context of the next sentence's "There"
    assert "dog" not in contexts
    assert [n["word"] for n in doc["next_words"]["a"]] == ["dog", "cat", "time"]
    by_token = {f["text"]: f for f in doc["token_level"]["forms"]}
    assert by_token[" a"]["count"] == 3
    assert doc["token_level"]["articles"] == sum(f["count"] or 0 for f in doc["token_level"]["forms"])


def test_cli_on_bundled_sample(cli_json) -> None:
    doc = cli_json("dataset-stats", "--limit", 40)
    assert doc["corpus"] == "bundled:train"
    assert doc["stories"] == 40
    assert doc["words"] == doc["word_level"]["words"] > 0
    assert 0 < doc["word_level"]["share_of_words"] < 0.3
    assert 0 < doc["token_level"]["share_of_tokens"] < 0.3
    assert set(doc["next_words"]) == {"a", "an", "the"}
    assert len(doc["next_words"]["the"]) == 10
    assert 0 < len(doc["contexts"]) <= 50
    assert all(0.0 <= c["rate"] <= 1.0 and c["followed_by_article"] <= c["count"] for c in doc["contexts"])
    per_story = doc["per_story"]["articles_per_100_words"]
    assert per_story["p5"] <= per_story["median"] <= per_story["p95"] <= per_story["max"]


def test_cli_val_split_and_out_file(cli) -> None:
    result = cli("dataset-stats", "--split", "val", "--limit", 20, "--json", "--out", "reports/stats.json")
    assert result.exit_code == 0, result.stderr
    written = Path("reports/stats.json")
    assert json.loads(written.read_text(encoding="utf-8")) == json.loads(result.stdout)
    assert json.loads(result.stdout)["corpus"] == "bundled:val"
    assert [p.name for p in written.parent.iterdir()] == ["stats.json"], "no temporary file is left behind"


def test_cli_on_jsonl_and_gzip_text(cli_json, tmp_path: Path) -> None:
    stories = [f"Story {i}. There was a dog named Rex number {i}. The dog was happy." for i in range(20)]
    jsonl = tmp_path / "stories.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories), encoding="utf-8")
    gz = tmp_path / "stories.txt.gz"
    gz.write_bytes(gzip.compress(f"\n{EOT}\n".join(stories).encode("utf-8")))
    for path in (jsonl, gz):
        train = cli_json("dataset-stats", "--data", path)
        val = cli_json("dataset-stats", "--data", path, "--split", "val")
        assert train["stories"] + val["stories"] == 20, "train and val split the file (val_fraction held out)"
        assert train["word_level"]["by_word"]["a"]["count"] == train["stories"]
        assert train["word_level"]["by_word"]["the"]["count"] == train["stories"]


def test_cli_on_datasets_saved_to_disk(cli_json, tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": ["There was a cat.", "The cat sat.", "A dog ran."]}).save_to_disk(
        tmp_path / "plain"
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["There was a cat.", "The cat sat."]}),
            "validation": datasets.Dataset.from_dict({"text": ["An owl flew."]}),
        }
    ).save_to_disk(tmp_path / "dict")
    assert cli_json("dataset-stats", "--dataset", tmp_path / "plain", "--split", "train")["stories"] == 3
    assert cli_json("dataset-stats", "--dataset", tmp_path / "dict", "--split", "train")["stories"] == 2
    validation = cli_json("dataset-stats", "--dataset", tmp_path / "dict", "--split", "validation")
    assert validation["word_level"]["by_word"] == {"an": {"count": 1, "per_100_words": pytest.approx(100 / 3)}}
    assert cli_json("dataset-stats", "--dataset", tmp_path / "dict", "--split", "val")["stories"] == 1


@pytest.mark.slow
def test_cli_gpt2_tokenizer_counts_gpt2_ids(cli_json, gpt2_dir: Path) -> None:
    doc = cli_json("dataset-stats", "--limit", 10, "--tokenizer", gpt2_dir)
    ids = {f["text"]: f["ids"] for f in doc["token_level"]["forms"]}
    assert (ids[" a"], ids[" the"], ids[" an"]) == ([257], [262], [281])
    assert doc["tokenizer"]["vocab_size"] == 50257


def test_cli_tables_render(cli) -> None:
    result = cli("dataset-stats", "--limit", 5)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


# ---- chunks, workers, intervals ---------------------------------------------------------------------------


def test_ratio_interval_by_hand() -> None:
    interval = ratio_interval([1, 3, 2], [10, 20, 10])
    assert interval is not None
    # rate 6/40; residuals -0.5, 0, 0.5: variance 3/2 * 0.5 / 40^2
    half = 100 * 1.959963984540054 * math.sqrt(1.5 * 0.5) / 40
    assert (interval.value, interval.low, interval.high) == pytest.approx((15.0, 15.0 - half, 15.0 + half))
    assert ratio_interval([1], [10]) is None, "one chunk gives no interval"


def _articles():
    tok = load_tokenizer()
    return tok, resolve_articles(tok, ArticleConfig())


@pytest.mark.slow
def test_workers_and_chunks_leave_the_statistics_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    tok, articles = _articles()
    corpus = Corpus("val", read_bundled("val")[:200])
    whole = dataset_stats(corpus, tok, articles, workers=1).to_dict()
    monkeypatch.setattr(stats, "CHUNK_SIZE", 40)
    one = dataset_stats(corpus, tok, articles, workers=1).to_dict()
    two = dataset_stats(corpus, tok, articles, workers=2).to_dict()  # five chunks on two processes
    assert one == two
    assert one["sampling"]["chunks"] == 5 and whole["sampling"]["chunks"] == 1
    for doc in (one, whole):
        del doc["sampling"], doc["definitions"]
    assert one == whole


@pytest.mark.slow
def test_sample_stops_once_the_rate_is_precise_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "CHUNK_SIZE", 20)
    monkeypatch.setattr(stats, "MIN_SAMPLE_CHUNKS", 5)
    tok, articles = _articles()
    corpus = Corpus("val", read_bundled("val"))  # 30 chunks
    calls: list[tuple[int, int, int | None]] = []
    sampled = dataset_stats(
        corpus, tok, articles, workers=1, precision=0.1, progress=lambda *c, **k: calls.append((*c, k["tokens"]))
    )
    full = dataset_stats(corpus, tok, articles, workers=1)
    assert sampled.sampling.stopped_early and 100 <= sampled.stories < 600
    assert (full.sampling.stopped_early, full.stories) == (False, 600)
    interval = sampled.sampling.to_dict()["articles_per_100_words"]
    assert interval["value"] == pytest.approx(sampled.word_counts.per_100_words())
    assert interval["high"] - interval["value"] <= 0.1 * interval["value"]
    assert interval["low"] <= full.word_counts.per_100_words() <= interval["high"]
    assert calls[-1] == (sampled.stories, sampled.stories, sampled.tokens)
    assert all(done < total for done, total, _ in calls[:-1])


def test_cli_sample_and_workers(cli_json) -> None:
    doc = cli_json("dataset-stats", "--limit", 40, "--sample", 0.05, "--workers", 1)
    assert doc["stories"] == 40
    assert doc["sampling"] == {
        "chunk_stories": 1000,
        "chunks": 1,
        "precision": 0.05,
        "stopped_early": False,
        "articles_per_100_words": None,
        "by_word_per_100_words": {},
    }


@pytest.mark.slow
@pytest.mark.parametrize("gpt2", [False, True])
def test_token_counts_from_pretokens_match_the_tokenizers_offsets(gpt2_dir: Path, gpt2: bool) -> None:
    tok = load_tokenizer(gpt2_dir if gpt2 else None)
    articles = resolve_articles(tok, ArticleConfig())
    rng = random.Random(3)
    pieces = list("aAtT09 '\t\n.,!\"") + ["the", "The", " a", "an", "An", "'s", "'t", "theater", "banana"]
    pieces += [*PUNCTUATION, "é", "\u00a0", EOT]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(2000)]
    texts += read_bundled("val")
    counter = stats._Counter(tok, frozenset(articles.ids), ("a", "an", "the"))
    assert counter.hits is not None, "the shipped and GPT-2 tokenizers take the pre-token path"
    fast, reference = counter.tokens(texts), stats.TokenCounts()
    stats._tally_tokens(tok, texts, frozenset(articles.ids), reference)
    assert sorted(fast.lengths) == sorted(reference.lengths)
    assert (fast.by_id, fast.inside_word) == (reference.by_id, reference.inside_word)
    assert sum(fast.inside_word.values()) > 0
