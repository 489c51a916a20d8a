"""Article scoring: continuations only, exact counts, context-conditioned divergence, corpus reference cache."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from math import comb
from pathlib import Path

import pytest

from tstool.analysis.scoring import (
    CorpusReference,
    binomial_mad,
    context_words,
    reference_for_run,
    score_continuation,
    score_samples,
)
from tstool.config import ArticleConfig
from tstool.data.articles import resolve_articles
from tstool.data.corpus import Corpus
from tstool.data.stats import _context_words, dataset_stats
from tstool.data.tokenizer import load_tokenizer
from tstool.errors import InputError
from tstool.model.loading import load_model


@dataclass(frozen=True)
class Text:
    prompt: str
    continuation: str


# Decoding a tiny model is a chain of small matmuls; on a busy machine extra intra-op threads only
# wait on each other (ten times slower here), so these tests decode on one thread.
pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = ("Tom", "Lily", "Sam", "Mia")
NOUNS = ("dog", "cat", "bird", "ball", "frog", "boat", "cake", "kite")
ADJECTIVES = ("little", "big", "red", "happy")
PLACES = ("park", "garden", "house", "forest")


def story(rng: random.Random) -> tuple[str, str]:
    """A TinyStories-like story, and the same story as a double-shifted model might write it: no article
    after "there was" or "saw", and as many extra articles elsewhere, so words and articles stay equal."""
    good, bad = [], []
    for _ in range(6):
        name, noun, adj, place = rng.choice(NAMES), rng.choice(NOUNS), rng.choice(ADJECTIVES), rng.choice(PLACES)
        unit = rng.choices(range(6), weights=(3, 3, 2, 2, 1, 1))[0]
        if unit == 0:
            good.append(f"There was a {adj} {noun}. {name} went home.")
            bad.append(f"There was {adj} {noun}. {name} went the home.")
        elif unit == 1:
            good.append(f"{name} saw a {adj} {noun}. They had fun.")
            bad.append(f"{name} saw {adj} {noun}. They had the fun.")
        else:
            same = (
                f"The {noun} ran to the {place}.",
                f"{name} was happy with the {noun}.",
                f"{name} saw his {noun} in the {place}.",
                f"There was no {noun} in the {place}.",
            )[unit - 2]
            good.append(same)
            bad.append(same)
    return " ".join(good), " ".join(bad)


@pytest.fixture(scope="module")
def reference() -> CorpusReference:
    rng = random.Random(0)
    corpus = Corpus("handmade", [story(rng)[0] for _ in range(400)])
    tokenizer = load_tokenizer()
    stats = dataset_stats(
        corpus, tokenizer, resolve_articles(tokenizer, ArticleConfig()), top_contexts=200, top_next=50
    )
    return CorpusReference.from_dict(stats.to_dict(), "handmade")


def test_the_prompt_is_never_scored(reference: CorpusReference) -> None:
    prompt = "The cat saw a dog. An owl and the bird had an apple. A boy was there and"
    score = score_samples([Text(prompt, " they all ran home quickly.")], reference)
    assert (score.counts.total, score.per_100_words, score.counts.words) == (0, 0.0, 5)
    assert score.samples[0].articles == ()


def test_counts_on_a_handwritten_continuation(reference: CorpusReference) -> None:
    scored = score_continuation(Text("Once upon a time", " a dog saw the cat. The end. An owl had an apple"), reference)
    assert scored.counts.words == 12 and scored.counts.total == 5
    assert scored.to_dict()["by_form"] == {"lower_space": 3, "lower_bare": 0, "cap_space": 2, "cap_bare": 0}
    assert scored.to_dict()["by_word"] == {"a": 1, "an": 2, "the": 2}
    assert scored.to_dict()["per_100_words"] == pytest.approx(500 / 12)
    # article spans are positions in prompt + continuation, covering only continuation text
    text = scored.prompt + scored.continuation
    assert [text[m.start : m.end] for m in scored.articles] == ["a", "the", "The", "An", "an"]


def test_contexts_may_end_the_prompt_but_the_next_word_is_generated(reference: CorpusReference) -> None:
    after_prompt = score_continuation(Text("Lily saw", " a big dog."), reference)
    assert [(t.context, t.article) for t in after_prompt.transitions][:2] == [("saw", True), ("lily saw", True)]
    in_prompt = score_continuation(Text("Lily saw a", " big dog."), reference)
    assert all(t.context not in ("saw", "lily saw") for t in in_prompt.transitions)
    split_word = score_continuation(Text("Lily saw th", "e dog."), reference)  # "the" begun in the prompt
    assert split_word.counts.total == 0 and all(t.word.word != "the" for t in split_word.transitions)


def test_context_words_match_the_stats_definition() -> None:
    text = 'Once upon a time, there was a dog.\n"The end" in 3 days! Don\'t go\tin the  park'
    assert [w.word if w else None for w in context_words(text)] == _context_words(text)
    assert all(text[w.start : w.end].lower() == w.word for w in context_words(text) if w)


def test_binomial_mean_absolute_deviation_is_exact() -> None:
    for n, p in [(1, 0.3), (7, 0.973), (30, 0.13), (12, 0.5), (5, 0.0), (5, 1.0)]:
        brute = sum(comb(n, k) * p**k * (1 - p) ** (n - k) * abs(k - n * p) for k in range(n + 1))
        assert binomial_mad(n, p) == pytest.approx(brute, abs=1e-12)
    assert binomial_mad(10**6, 0.3) > 0  # no overflow


def test_divergence_flags_articles_missing_after_there_was_and_saw(reference: CorpusReference) -> None:
    rng = random.Random(1)
    pairs = [story(rng) for _ in range(20)]
    good = score_samples([Text("", g) for g, _ in pairs], reference)
    bad = score_samples([Text("", b) for _, b in pairs], reference)

    assert (bad.counts.words, bad.counts.total) == (good.counts.words, good.counts.total)  # same global rate
    assert good.rate_verdict == bad.rate_verdict == "ok"
    assert good.contexts.verdict == "ok" and good.verdict == "ok"
    assert bad.contexts.verdict == "diverges" and bad.verdict == "misplacing articles"
    assert bad.contexts.value > good.contexts.value + 0.05
    worst = {c.context: c for c in bad.contexts.contexts[:6] if c.missing > 0}  # articles missing there
    assert {"there was", "saw"} <= set(worst)
    assert worst["there was"].share < 0.2 < 0.6 < worst["there was"].corpus_rate
    patterns = dict(bad.article_less)
    assert any(p.startswith("there was ") for p in patterns) and any(p.split()[-2] == "saw" for p in patterns)
    assert not good.article_less
    document = bad.to_dict()
    assert json.loads(json.dumps(document)) == document


def test_verdict_needs_enough_text(reference: CorpusReference) -> None:
    assert score_samples([Text("", "There was a dog.")], reference).verdict == "too little text"


def test_reference_is_computed_once_then_cached(tiny_run: Path) -> None:
    loaded = load_model(tiny_run)
    first, computed = reference_for_run(loaded)
    again, computed_again = reference_for_run(loaded)
    assert computed and not computed_again
    assert again == first and Path(first.source).is_file() and first.per_100_words > 0


def test_reference_file_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset-stats"):
        CorpusReference.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"step": 3}', encoding="utf-8")
    with pytest.raises(InputError, match="not a `tstool dataset-stats` document"):
        CorpusReference.load(tmp_path / "other.json")
