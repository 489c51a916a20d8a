"""Scoring how generated continuations use articles, against the corpus the model was trained on.

Only the continuation is scored, never the prompt (DESIGN lesson 3): a prompt full of articles and a
continuation with none score zero. Words, articles, forms and contexts are those of `tstool.data.stats`,
so a continuation is measured exactly as the corpus was. Three measurements:

1. Rate: articles per 100 words in the continuations, overall, per form and per article word, against
   the corpus. Within ±15% of the corpus rate is `ok`; further below is `dropping articles`, further
   above `over-using articles`; under 200 words, `too little text`.
2. Context-conditioned rates. A global rate misses real bugs: a label-double-shifted model wrote 13.3
   articles per 100 words (corpus 9.8) yet never put one after "there was" (corpus 97.9%). For each
   context the corpus statistics list (its most frequent preceding words and word pairs), the share
   of its occurrences followed by an article is compared with the corpus share.
   *What counts*: a context occurrence counts when the word *after* it starts in the continuation.
   The context words may come from the end of the prompt ("...there was" + " a dog" counts), but the
   article, or its absence, is always generated. A word the prompt starts and the continuation
   finishes ("th" + "e", "bi" + "g") is neither an article nor a context occurrence of the
   continuation (its tail still adds one to the continuation's word count).
   *The divergence* is the count-weighted mean absolute difference of shares,
   D = sum_c |a_c - n_c r_c| / sum_c n_c (n_c occurrences of context c, a_c of them followed by an
   article, r_c the corpus share): the share of context occurrences whose article use departs from
   the corpus, in [0, 1]. It stays readable (0.3 means 30 of every 100 occurrences went the wrong
   way on net) and, unlike KL, is finite when a share is 0 or 1. A one- and a two-word context can
   cover the same spot ("was", "there was"); each counts. Even text that follows the corpus exactly
   has D > 0 from sampling noise, so the score also gives D's expectation and standard deviation
   under that hypothesis (binomial, de Moivre's mean absolute deviation; contexts treated as
   independent, which makes the deviation approximate). The contexts diverge when D exceeds that
   expectation by at least 0.02 and by at least 3 standard deviations.
3. Article-less patterns: a context the corpus follows with an article at least 60% of the time
   ("there was", "saw", "lived in"), followed instead by a word that in the corpus typically comes
   right after an article ("little", "big", "park"): "there was little", "saw big". "was little"
   alone is no pattern: "he was little" is fine English, and "was" takes an article only 23% of the
   time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tstool import __version__
from tstool.config import GenerateConfig
from tstool.data.articles import ALL_FORMS, resolve_articles
from tstool.data.stats import (
    CONTEXT_BREAK,
    WORD_RE,
    ArticleCounts,
    ArticleMatch,
    ContextRate,
    count_articles,
    find_articles,
    write_json_atomic,
)
from tstool.errors import InputError
from tstool.model.loading import LoadedModel

RATE_TOLERANCE = 0.15
STRONG_CONTEXT_RATE = 0.6
MIN_WORDS = 200  # fewer words give a rate too noisy for a verdict
MIN_TRANSITIONS = 30
DIVERGENCE_MARGIN = 0.02
DIVERGENCE_SIGMAS = 3.0
WORST_CONTEXTS = 8
# Corpus statistics computed for scoring keep more contexts and next words than `dataset-stats`
# prints, so that "saw", "found" or "lived in" are among them.
REFERENCE_CONTEXTS = 400
REFERENCE_NEXT_WORDS = 100
REFERENCE_VERSION = 1

Progress = Callable[[int, int], None]

ANCESTRAL = "temperature 1, no top-k, top-p or repetition penalty"
OPENING_MAX_WORDS = 20  # a held-out story's opening is its first sentence, or its first words past this
OPENING_WORDS = 10
MIN_REST_WORDS = 30  # a story whose rest is shorter says too little about how it goes on
MATCHED_PROMPTS = 24  # `generate --score-articles` without prompts: about 2,500 words at 150 tokens each

DEFINITIONS = {
    "scored_text": "continuations only; an article or context word begun in the prompt belongs to the prompt",
    "rate_verdict": f"ok within ±{RATE_TOLERANCE:.0%} of the reference rate; dropping articles below, over-using "
    f"above; too little text under {MIN_WORDS} words; not judged unless sampled with {ANCESTRAL}, since other "
    "settings move probability towards likely tokens, which articles often are",
    "matched_reference": "prompts are openings of held-out validation stories and the reference rate is that of the "
    "rest of those same stories; with other prompts the reference is the whole corpus's rate (unmatched)",
    "context_occurrence": "a corpus context (1-2 words, possibly ending the prompt) whose next word starts in the "
    "continuation",
    "divergence": "sum |a_c - n_c r_c| / sum n_c over corpus contexts c: count-weighted mean absolute difference of "
    "the share followed by an article",
    "diverges": f"divergence above its expectation for corpus-faithful text by >= {DIVERGENCE_MARGIN} and by >= "
    f"{DIVERGENCE_SIGMAS:g} standard deviations, with >= {MIN_TRANSITIONS} occurrences",
    "article_less": f"a context with corpus article share >= {STRONG_CONTEXT_RATE} followed by a word that typically "
    "follows an article in the corpus",
}


class Continuation(Protocol):
    """What scoring needs of a sample: its prompt and the generated text after it."""

    @property
    def prompt(self) -> str: ...

    @property
    def continuation(self) -> str: ...


# ---- the corpus side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusReference:
    """What scoring compares with, read from a `tstool dataset-stats` document."""

    source: str
    corpus: str
    words: tuple[str, ...]  # the article words
    corpus_words: int
    per_100_words: float
    by_form: dict[str, float]  # per 100 words
    by_word: dict[str, float]
    contexts: dict[str, ContextRate]
    noun_words: frozenset[str]  # words that typically follow an article (adjectives, nouns)
    matched: bool = False  # the rates are those of the prompts' own stories (`matched_reference`)

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> CorpusReference:
        try:
            level = doc["word_level"]
            reference = cls(
                source=source,
                corpus=str(doc["corpus"]),
                words=tuple(str(w) for w in doc["article_words"]),
                corpus_words=int(doc["words"]),
                per_100_words=float(level["per_100_words"]),
                by_form={k: float(v["per_100_words"]) for k, v in level["by_form"].items()},
                by_word={k: float(v["per_100_words"]) for k, v in level["by_word"].items()},
                contexts={
                    c["context"]: ContextRate(c["context"], int(c["count"]), dict(c["by_article"]))
                    for c in doc["contexts"]
                },
                noun_words=frozenset(n["word"] for nws in doc["next_words"].values() for n in nws),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                f"{source} is not a `tstool dataset-stats` document ({exc.__class__.__name__}: {exc}): "
                "write one with `tstool dataset-stats --out FILE`"
            ) from None
        if reference.per_100_words <= 0:
            raise InputError(f"corpus statistics {source} count no articles: compute them on English stories")
        return reference

    @classmethod
    def load(cls, path: Path) -> CorpusReference:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"--stats {path} does not exist: write it with `tstool dataset-stats --out {path}`")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"--stats {path} is not readable JSON ({exc.__class__.__name__}): pass a stats.json file")
        return cls.from_dict(doc, str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "corpus": self.corpus,
            "words": self.corpus_words,
            "per_100_words": self.per_100_words,
            "matched": self.matched,
            "label": self.label,
            "contexts": len(self.contexts),
        }

    @property
    def label(self) -> str:
        if self.matched:
            return "the rest of the prompts' held-out stories"
        return "the whole corpus (unmatched: the prompts are not from it)"


# ---- prompts matched to a reference -----------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """A held-out story cut in two: the prompt, and how the story really goes on."""

    prompt: str
    rest: str


def story_opening(story: str) -> Opening | None:
    """The story's first sentence (or first OPENING_WORDS words of a long one) and the rest; None when
    the rest is too short to say how the story goes on."""
    words = list(WORD_RE.finditer(story))
    end = next((m.end() for m in re.finditer(r"[.!?]", story)), len(story))
    if sum(1 for w in words if w.end() <= end) > OPENING_MAX_WORDS:
        end = words[OPENING_WORDS - 1].end()
    prompt, rest = story[:end], story[end:]
    return Opening(prompt, rest) if count_articles(rest).words >= MIN_REST_WORDS else None


def held_out_openings(loaded: LoadedModel, count: int) -> list[Opening]:
    """Openings of `count` validation stories of the run's data, evenly spread over the split."""
    from tstool.data.corpus import load_corpus

    openings = [o for story in load_corpus(loaded.config.data, "val").stories if (o := story_opening(story))]
    if not openings:
        raise InputError("the run's validation stories are too short to prompt with: pass --prompt TEXT")
    step = max(1, len(openings) // count)
    return openings[::step][:count]


def matched_reference(reference: CorpusReference, openings: Sequence[Opening]) -> CorpusReference:
    """`reference` with the article rates of the openings' rests: what the model's continuations of
    those same beginnings should show. Contexts stay the whole corpus's."""
    counts = ArticleCounts()
    for opening in openings:
        counts += count_articles(opening.rest, reference.words)
    return dataclasses.replace(
        reference,
        source=f"the rest of {len(openings)} held-out validation stories",
        corpus_words=counts.words,
        per_100_words=counts.per_100_words(),
        by_form={form: counts.per_100_words(n) for form, n in counts.by_form().items()},
        by_word={word: counts.per_100_words(n) for word, n in counts.by_word().items()},
        matched=True,
    )


def sampling_bias(settings: GenerateConfig) -> str | None:
    """None under ancestral sampling; otherwise the settings that bias a generated article rate."""
    biased = [
        f"temperature {settings.temperature:g}" if settings.temperature != 1.0 else None,
        f"top-k {settings.top_k}" if settings.top_k is not None else None,
        f"top-p {settings.top_p:g}" if settings.top_p is not None and settings.top_p < 1.0 else None,
        f"repetition penalty {settings.repetition_penalty:g}" if settings.repetition_penalty != 1.0 else None,
    ]
    named = [b for b in biased if b]
    return ", ".join(named) if named else None


def _reference_key(loaded: LoadedModel, fingerprint: str) -> str:
    parts = {
        "tokenizer": loaded.tokenizer.sha256,
        "corpus": fingerprint,
        "articles": loaded.config.articles.model_dump(mode="json"),
        "contexts": REFERENCE_CONTEXTS,
        "next_words": REFERENCE_NEXT_WORDS,
        "tstool": __version__,
        "version": REFERENCE_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def reference_for_run(loaded: LoadedModel, progress: Progress | None = None) -> tuple[CorpusReference, bool]:
    """Corpus statistics of the run's training data and whether they were computed now.

    Computed once, then read from the token cache folder, keyed by tokenizer, corpus content and
    article settings, so every run trained on the same data (baseline and weighted) shares them.
    """
    from tstool.data.corpus import load_corpus
    from tstool.data.packing import cache_root
    from tstool.data.stats import dataset_stats

    cfg = loaded.config
    try:
        corpus = load_corpus(cfg.data, "train")
    except InputError as exc:
        raise InputError(
            f"cannot read the run's training data for corpus statistics ({exc}); "
            "or pass --stats FILE written by `tstool dataset-stats --out FILE`"
        ) from None
    path = cache_root(cfg.data) / "stats" / f"{_reference_key(loaded, corpus.fingerprint)}.json"
    if path.is_file():
        try:
            return CorpusReference.load(path), False
        except InputError:
            pass  # a damaged cache file is recomputed below
    started = time.perf_counter()
    stats = dataset_stats(
        corpus,
        loaded.tokenizer,
        resolve_articles(loaded.tokenizer, cfg.articles),
        cfg.articles.words,
        top_contexts=REFERENCE_CONTEXTS,
        top_next=REFERENCE_NEXT_WORDS,
        progress=progress,
    )
    doc = stats.to_dict() | {"seconds": time.perf_counter() - started}
    try:
        write_json_atomic(doc, path)
    except InputError:
        raise InputError(
            f"cannot cache corpus statistics in {path.parent}: set TSTOOL_CACHE to a writable folder "
            "or pass --stats FILE written by `tstool dataset-stats --out FILE`"
        ) from None
    return CorpusReference.from_dict(doc, str(path)), True


# ---- one continuation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordSpan:
    word: str  # lowercased
    start: int
    end: int


def context_words(text: str) -> list[WordSpan | None]:
    """`tstool.data.stats`' context word list (lowercased words, None at punctuation and line breaks),
    with positions."""
    items: list[WordSpan | None] = []
    pos = 0
    for gap in [*CONTEXT_BREAK.finditer(text), None]:
        end = gap.start() if gap else len(text)
        items += [WordSpan(m.group().lower(), m.start(), m.end()) for m in WORD_RE.finditer(text, pos, end)]
        items.append(None)
        pos = gap.end() if gap else end
    return items


@dataclass(frozen=True)
class Transition:
    """A corpus context followed by a word that starts in the continuation."""

    context: str
    word: WordSpan
    article: bool


def transitions(text: str, start: int, reference: CorpusReference) -> list[Transition]:
    """Occurrences in `text` of the reference's contexts whose next word starts at or after `start`."""
    found = []
    items = context_words(text)
    for i, item in enumerate(items):
        prev = items[i - 1] if i >= 1 else None
        if item is None or item.start < start or prev is None:
            continue
        contexts = [prev.word]
        prev2 = items[i - 2] if i >= 2 else None
        if prev2 is not None:
            contexts.append(f"{prev2.word} {prev.word}")
        found += [Transition(c, item, item.word in reference.words) for c in contexts if c in reference.contexts]
    return found


def article_less(found: Sequence[Transition], reference: CorpusReference) -> list[Transition]:
    """Spots where a strong article context is followed by an adjective/noun instead; longest context per spot."""
    spots: dict[int, Transition] = {}
    for t in found:
        strong = reference.contexts[t.context].rate >= STRONG_CONTEXT_RATE
        if strong and not t.article and t.word.word in reference.noun_words:
            if t.word.start not in spots or len(t.context) > len(spots[t.word.start].context):
                spots[t.word.start] = t
    return list(spots.values())


def _form_counts(counts: ArticleCounts) -> dict[str, int]:
    by_form = counts.by_form()
    return {form: by_form.get(form, 0) for form in (*ALL_FORMS, *sorted(set(by_form) - set(ALL_FORMS)))}


@dataclass(frozen=True)
class SampleScore:
    """Article use in one continuation. Positions are offsets in prompt + continuation."""

    prompt: str
    continuation: str
    counts: ArticleCounts
    articles: tuple[ArticleMatch, ...]
    transitions: tuple[Transition, ...]
    article_less: tuple[Transition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "words": self.counts.words,
            "count": self.counts.total,
            "per_100_words": self.counts.per_100_words(),
            "by_form": _form_counts(self.counts),
            "by_word": self.counts.by_word(),
            "context_occurrences": len(self.transitions),
            "article_less": [f"{t.context} {t.word.word}" for t in self.article_less],
        }


def score_continuation(sample: Continuation, reference: CorpusReference) -> SampleScore:
    text, start = sample.prompt + sample.continuation, len(sample.prompt)
    found = transitions(text, start, reference)
    return SampleScore(
        prompt=sample.prompt,
        continuation=sample.continuation,
        counts=count_articles(text, reference.words, start),
        articles=tuple(find_articles(text, reference.words, start)),
        transitions=tuple(found),
        article_less=tuple(article_less(found, reference)),
    )


# ---- all continuations --------------------------------------------------------------------------------


def binomial_mad(n: int, p: float) -> float:
    """E|X - np| for X ~ Binomial(n, p), exactly (de Moivre), in log space so large n cannot overflow."""
    m = math.floor(n * p)
    if n == 0 or p <= 0.0 or p >= 1.0 or m + 1 > n:
        return 0.0
    log_comb = math.lgamma(n + 1) - math.lgamma(m + 2) - math.lgamma(n - m)
    return 2.0 * math.exp(log_comb + (n - m) * math.log1p(-p) + (m + 1) * math.log(p) + math.log(m + 1))


@dataclass(frozen=True)
class ContextComparison:
    """One corpus context: its occurrences in the continuations against the corpus share."""

    context: str
    count: int
    articles: int
    corpus_rate: float
    corpus_count: int

    @property
    def share(self) -> float:
        return self.articles / self.count if self.count else 0.0

    @property
    def missing(self) -> float:
        """Articles the corpus share predicts here minus those generated (negative: extra articles)."""
        return self.count * self.corpus_rate - self.articles

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "count": self.count,
            "followed_by_article": self.articles,
            "share": self.share,
            "corpus_share": self.corpus_rate,
            "corpus_count": self.corpus_count,
            "missing_articles": self.missing,
        }


@dataclass(frozen=True)
class ContextDivergence:
    """The count-weighted mean absolute difference of article shares over corpus contexts."""

    contexts: tuple[ContextComparison, ...]  # worst first

    @classmethod
    def of(cls, found: Sequence[Transition], reference: CorpusReference) -> ContextDivergence:
        counts = Counter(t.context for t in found)
        articles = Counter(t.context for t in found if t.article)
        rows = [
            ContextComparison(c, n, articles[c], reference.contexts[c].rate, reference.contexts[c].count)
            for c, n in counts.items()
        ]
        return cls(tuple(sorted(rows, key=lambda r: (-abs(r.missing), -r.count, r.context))))

    @property
    def occurrences(self) -> int:
        return sum(c.count for c in self.contexts)

    @property
    def value(self) -> float:
        return sum(abs(c.missing) for c in self.contexts) / self.occurrences if self.occurrences else 0.0

    @property
    def expected(self) -> float:
        """D's expectation if every context took an article exactly as often as in the corpus."""
        mads = (binomial_mad(c.count, c.corpus_rate) for c in self.contexts)
        return sum(mads) / self.occurrences if self.occurrences else 0.0

    @property
    def sd(self) -> float:
        """D's standard deviation under the same hypothesis: Var|X - np| = np(1-p) - MAD^2 per context."""
        variance = sum(
            c.count * c.corpus_rate * (1 - c.corpus_rate) - binomial_mad(c.count, c.corpus_rate) ** 2
            for c in self.contexts
        )
        return math.sqrt(max(variance, 0.0)) / self.occurrences if self.occurrences else 0.0

    @property
    def z(self) -> float | None:
        excess = self.value - self.expected
        return excess / self.sd if self.sd > 0 else None

    @property
    def verdict(self) -> str:
        if self.occurrences < MIN_TRANSITIONS:
            return "too little text"
        excess = self.value - self.expected
        significant = self.sd == 0 or excess >= DIVERGENCE_SIGMAS * self.sd
        return "diverges" if excess >= DIVERGENCE_MARGIN and significant else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "divergence": self.value,
            "expected_if_matching_corpus": self.expected,
            "sd_if_matching_corpus": self.sd,
            "z": self.z,
            "occurrences": self.occurrences,
            "contexts_seen": len(self.contexts),
            "verdict": self.verdict,
            "worst": [c.to_dict() for c in self.contexts[:WORST_CONTEXTS]],
        }


def _rates(counts: ArticleCounts, mine: dict[str, int], corpus: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {
        key: {"count": n, "per_100_words": counts.per_100_words(n), "corpus_per_100_words": corpus.get(key, 0.0)}
        for key, n in mine.items()
    }


@dataclass(frozen=True)
class ArticleScore:
    """Article use over all scored continuations, compared with the corpus."""

    samples: tuple[SampleScore, ...]
    counts: ArticleCounts
    reference: CorpusReference
    contexts: ContextDivergence
    article_less: Counter[str]
    sampling_bias: str | None = None  # why the rate is not judged (`sampling_bias`), or None

    @property
    def per_100_words(self) -> float:
        return self.counts.per_100_words()

    @property
    def interval(self) -> tuple[float, float]:
        """Approximate 95% Wilson interval of the rate, taking articles as independent per-word events."""
        n, z = self.counts.words, 1.96
        if not n:
            return (0.0, 0.0)
        p = self.counts.total / n
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (100 * max(0.0, center - half), 100 * min(1.0, center + half))

    @property
    def ratio(self) -> float:
        return self.per_100_words / self.reference.per_100_words

    @property
    def rate_verdict(self) -> str:
        if self.sampling_bias is not None:
            return "not judged"
        if self.counts.words < MIN_WORDS:
            return "too little text"
        if self.ratio < 1 - RATE_TOLERANCE:
            return "dropping articles"
        if self.ratio > 1 + RATE_TOLERANCE:
            return "over-using articles"
        return "ok"

    @property
    def verdict(self) -> str:
        """The rate verdict when it is not ok; otherwise whether the contexts agree with the corpus."""
        if self.rate_verdict != "ok" or self.contexts.verdict == "too little text":  # "not judged" included
            return self.rate_verdict
        return "misplacing articles" if self.contexts.verdict == "diverges" else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": len(self.samples),
            "words": self.counts.words,
            "count": self.counts.total,
            "per_100_words": self.per_100_words,
            "per_100_words_interval_95": list(self.interval),
            "corpus": self.reference.to_dict(),
            "ratio": self.ratio,
            "sampling": "ancestral" if self.sampling_bias is None else self.sampling_bias,
            "rate_verdict": self.rate_verdict,
            "verdict": self.verdict,
            "by_form": _rates(self.counts, _form_counts(self.counts), self.reference.by_form),
            "by_word": _rates(
                self.counts, {w: self.counts.by_word().get(w, 0) for w in self.reference.words}, self.reference.by_word
            ),
            "contexts": self.contexts.to_dict(),
            "article_less": [{"pattern": p, "count": n} for p, n in self.article_less.most_common()],
            "definitions": DEFINITIONS,
        }


def score_samples(
    samples: Sequence[Continuation], corpus: CorpusReference, settings: GenerateConfig | None = None
) -> ArticleScore:
    """Score every continuation (never its prompt) and compare the whole with the corpus; the rate is
    judged only if the samples were drawn under ancestral sampling (`settings`, None: assumed)."""
    scored = tuple(score_continuation(s, corpus) for s in samples)
    total = ArticleCounts()
    for s in scored:
        total += s.counts
    found = [t for s in scored for t in s.transitions]
    patterns = Counter(f"{t.context} {t.word.word}" for s in scored for t in s.article_less)
    bias = sampling_bias(settings) if settings is not None else None
    return ArticleScore(scored, total, corpus, ContextDivergence.of(found, corpus), patterns, bias)
