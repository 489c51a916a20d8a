"""Corpus article statistics, at word level (case and position aware) and token level (resolved IDs).

Definitions used throughout (and written into every stats document):
- A *word* is a run of letters with inner apostrophes (`WORD_PATTERN`): "don't" is one word, "3" none.
- An *article* is a whole word equal, ignoring case, to an article word: "banana", "Anna", "theater" and
  "another" hold no article.
- An article's *form* is the token form it takes in byte-level BPE: lower/cap by its case, `_space` when
  a space precedes it, `_bare` otherwise (text start, newline, quote); "other" for cases like "THE".
- An article is *sentence-initial* when nothing but spaces, quotes and brackets separates it from the
  start of the text, a line break, or one of . ! ? ….
- A *context* is one or two lowercased words directly followed by another word (only spaces between:
  no punctuation, no line break); its count is how often that happens, its rate the share of those
  next words that are articles.

`count_articles` is a pure function on one text, reused to score generated continuations.

`dataset_stats` counts a corpus a chunk of stories at a time, on worker processes, and merges the chunks'
counts in order, so its result does not depend on the number of workers. The chunks also give each rate
a 95% interval (a chunk is one draw), and with a precision the pass stops once the interval is that tight.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, islice, pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from tstool.config import ArticleConfig
from tstool.data.articles import ArticleSet, ResolvedForm
from tstool.data.corpus import Progress, Stories, expected_stories
from tstool.data.packing import PRETOKEN_CACHE_SIZE, PRETOKENS, added_tokens, plain_byte_level, splits_alone
from tstool.data.tokenizer import TextTokenizer
from tstool.errors import InputError

LETTER = r"[^\W\d_]"
WORD_PATTERN = rf"{LETTER}+(?:['’]{LETTER}+)*"
WORD_RE = re.compile(WORD_PATTERN)
DEFAULT_WORDS: tuple[str, ...] = tuple(ArticleConfig().words)
OTHER_FORM = "other"
SENTENCE_ENDS = frozenset(".!?…\n\r")
# Looking back from an article for a sentence end, these may stand in between ('He left. "The ...').
SENTENCE_GAP = frozenset(" \t\"'“”‘’()[]*")
# Contexts never span punctuation, digits or line breaks: "in." followed by "The" is no transition.
CONTEXT_BREAK = re.compile(r"[^\w'’ \t]+|[\d_]+")
CHUNK_SIZE = 1000  # stories per chunk: the unit of work of a worker, and one draw for the intervals
Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
MIN_SAMPLE_CHUNKS = 20  # fewer chunks give too rough an interval to stop on


@lru_cache(maxsize=16)
def _article_re(words: tuple[str, ...]) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of the article words, with word edges as `WORD_PATTERN` has them."""
    alternatives = "|".join(re.escape(w) for w in sorted({w.lower() for w in words}, key=len, reverse=True))
    return re.compile(rf"(?<!{LETTER})(?<!{LETTER}['’])(?:{alternatives})(?!{LETTER})(?!['’]{LETTER})", re.IGNORECASE)


@dataclass(frozen=True)
class ArticleMatch:
    """One article occurrence in a text."""

    word: str
    surface: str
    form: str
    initial: bool
    start: int
    end: int

    @property
    def span(self) -> tuple[int, int]:
        """Characters the article's token covers: its leading space included for `_space` forms."""
        return (self.start - 1 if self.form.endswith("_space") else self.start, self.end)


def _is_initial(text: str, start: int) -> bool:
    i = start
    while i > 0 and text[i - 1] in SENTENCE_GAP:
        i -= 1
    return i == 0 or text[i - 1] in SENTENCE_ENDS


def _form(text: str, start: int, surface: str) -> str:
    if surface.islower():
        case = "lower"
    elif surface == surface.capitalize():
        case = "cap"
    else:
        return OTHER_FORM
    return f"{case}_space" if start > 0 and text[start - 1] == " " else f"{case}_bare"


def find_articles(text: str, words: Sequence[str] = DEFAULT_WORDS, start: int = 0) -> Iterator[ArticleMatch]:
    """Article occurrences beginning at or after `start`; the text before it still decides form and position."""
    for match in _article_re(tuple(words)).finditer(text, start):
        surface = match.group()
        yield ArticleMatch(
            word=surface.lower(),
            surface=surface,
            form=_form(text, match.start(), surface),
            initial=_is_initial(text, match.start()),
            start=match.start(),
            end=match.end(),
        )


def count_words(text: str, start: int = 0) -> int:
    return len(WORD_RE.findall(text, start))


@dataclass
class ArticleCounts:
    """Word-level article counts: `counts[(word, form, initial)]`, out of `words` words."""

    words: int = 0
    counts: Counter[tuple[str, str, bool]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _sum_by(self, key: Callable[[tuple[str, str, bool]], Any]) -> Counter[Any]:
        summed: Counter[Any] = Counter()
        for k, n in self.counts.items():
            summed[key(k)] += n
        return summed

    def by_word(self) -> dict[str, int]:
        return dict(self._sum_by(lambda k: k[0]).most_common())

    def by_form(self) -> dict[str, int]:
        return dict(self._sum_by(lambda k: k[1]).most_common())

    def by_word_form(self) -> Counter[tuple[str, str]]:
        return self._sum_by(lambda k: k[:2])

    def by_position(self) -> dict[str, int]:
        initial = self._sum_by(lambda k: k[2])[True]
        return {"initial": initial, "inner": self.total - initial}

    def per_100_words(self, count: int | None = None) -> float:
        """`count` (default: all articles) per 100 words; 0 for a text with no words."""
        return 100.0 * (self.total if count is None else count) / self.words if self.words else 0.0

    def __iadd__(self, other: ArticleCounts) -> ArticleCounts:
        self.words += other.words
        self.counts.update(other.counts)
        return self

    def rows(self) -> list[dict[str, Any]]:
        """One row per (word, form), most frequent first: sentence-initial and inner counts, rate."""
        rows = []
        for (word, form), count in self.by_word_form().most_common():
            initial = self.counts[(word, form, True)]
            rows.append(
                {
                    "word": word,
                    "form": form,
                    "initial": initial,
                    "inner": count - initial,
                    "count": count,
                    "per_100_words": self.per_100_words(count),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        rate = {k: {"count": n, "per_100_words": self.per_100_words(n)} for k, n in self.by_word().items()}
        return {
            "words": self.words,
            "articles": self.total,
            "share_of_words": self.total / self.words if self.words else 0.0,
            "per_100_words": self.per_100_words(),
            "by_word": rate,
            "by_form": {k: {"count": n, "per_100_words": self.per_100_words(n)} for k, n in self.by_form().items()},
            "by_position": self.by_position(),
            "rows": self.rows(),
        }


def count_articles(text: str, words: Sequence[str] = DEFAULT_WORDS, start: int = 0) -> ArticleCounts:
    """Words and articles in `text[start:]` (e.g. a continuation after its prompt), by form and position."""
    counts = Counter((m.word, m.form, m.initial) for m in find_articles(text, words, start))
    return ArticleCounts(words=count_words(text, start), counts=counts)


# ---- token level ---------------------------------------------------------------------------------


@dataclass
class TokenCounts:
    """Token-level counts of article IDs over a corpus, and where they sit inside longer words."""

    lengths: list[int] = field(default_factory=list)
    by_id: Counter[int] = field(default_factory=Counter)
    inside_word: Counter[int] = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def merge(self, other: TokenCounts) -> None:
        self.lengths.extend(other.lengths)
        self.by_id.update(other.by_id)
        self.inside_word.update(other.inside_word)


def _inside_word(text: str, start: int, end: int) -> bool:
    """True when a token is part of a longer word ("theater" -> " the" + "ater", "banana" -> "banan" + "a")."""
    after = end < len(text) and text[end].isalpha()
    before = start > 0 and text[start].isalpha() and text[start - 1].isalpha()
    return after or before


def _tally_tokens(tokenizer: TextTokenizer, stories: list[str], ids: frozenset[int], into: TokenCounts) -> None:
    for story, encoding in zip(stories, tokenizer.backend.encode_batch(stories, add_special_tokens=False), strict=True):
        token_ids = encoding.ids
        into.lengths.append(len(token_ids))
        hits = [i for i, t in enumerate(token_ids) if t in ids]
        if not hits:
            continue
        offsets = encoding.offsets
        for i in hits:
            into.by_id[token_ids[i]] += 1
            if _inside_word(story, *offsets[i]):
                into.inside_word[token_ids[i]] += 1


class _PretokenHits(dict[str, tuple[int, tuple[tuple[int, int, int], ...]]]):
    """Per pre-token: how many tokens it takes, and where article tokens sit in it, as (ID, start, end)."""

    def __init__(self, tokenizer: TextTokenizer, ids: frozenset[int]):
        super().__init__()
        self.tokenizer, self.ids = tokenizer, ids

    def __missing__(self, pretoken: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
        if len(self) >= PRETOKEN_CACHE_SIZE:
            self.clear()
        encoding = self.tokenizer.backend.encode(pretoken, add_special_tokens=False)
        hits = tuple((t, *encoding.offsets[i]) for i, t in enumerate(encoding.ids) if t in self.ids)
        found = self[pretoken] = (len(encoding.ids), hits)
        return found


def _tally_pretokens(hits: _PretokenHits, story: str, into: TokenCounts) -> None:
    """`_tally_tokens` of one story that `PRETOKENS` splits as the tokenizer does (see `StoryEncoder`):
    its pre-tokens' counts come from the cache, at their place in the story."""
    length = start = 0
    for pretoken in PRETOKENS.findall(story):
        count, found = hits[pretoken]
        length += count
        for token, begin, end in found:
            into.by_id[token] += 1
            if _inside_word(story, start + begin, start + end):
                into.inside_word[token] += 1
        start += len(pretoken)
    into.lengths.append(length)


def _chunked(stories: list[str], progress: Progress | None, size: int = CHUNK_SIZE) -> Iterator[list[str]]:
    """Stories in chunks (batched, parallel tokenisation), reporting progress after each."""
    for begin in range(0, len(stories), size):
        yield stories[begin : begin + size]
        if progress:
            progress(min(begin + size, len(stories)), len(stories))


def count_article_tokens(
    tokenizer: TextTokenizer, stories: list[str], ids: Sequence[int], progress: Progress | None = None
) -> TokenCounts:
    counts, wanted = TokenCounts(), frozenset(ids)
    for chunk in _chunked(stories, progress):
        _tally_tokens(tokenizer, chunk, wanted, counts)
    return counts


@dataclass(frozen=True)
class TokenFormCount:
    """Occurrences of one single-token article form's ID (None for multi-token forms)."""

    form: ResolvedForm
    count: int | None
    inside_word: int | None

    def to_dict(self, tokens: int) -> dict[str, Any]:
        return {
            "word": self.form.word,
            "form": self.form.form,
            "text": self.form.text,
            "ids": list(self.form.ids),
            "single_token": self.form.single_token,
            "count": self.count,
            "inside_word": self.inside_word,
            "share_of_tokens": self.count / tokens if self.count is not None and tokens else None,
        }


def token_form_counts(articles: ArticleSet, counts: TokenCounts) -> list[TokenFormCount]:
    return [
        TokenFormCount(
            form=f,
            count=counts.by_id[f.ids[0]] if f.single_token else None,
            inside_word=counts.inside_word[f.ids[0]] if f.single_token else None,
        )
        for f in articles.forms
    ]


# ---- corpus statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    mean: float
    median: float
    p5: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not len(values):
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        array = np.asarray(values, dtype=np.float64)
        p5, median, p95 = np.percentile(array, [5, 50, 95])
        return cls(float(array.mean()), float(median), float(p5), float(p95), float(array.max()))

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "median": self.median, "p5": self.p5, "p95": self.p95, "max": self.max}


@dataclass(frozen=True)
class ContextRate:
    """How often a preceding word or word pair is followed by an article."""

    context: str
    count: int
    by_article: dict[str, int]

    @property
    def followed_by_article(self) -> int:
        return sum(self.by_article.values())

    @property
    def rate(self) -> float:
        return self.followed_by_article / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "words": len(self.context.split()),
            "count": self.count,
            "followed_by_article": self.followed_by_article,
            "rate": self.rate,
            "by_article": self.by_article,
        }


@dataclass(frozen=True)
class NextWord:
    word: str
    count: int
    share: float


def _context_words(text: str) -> list[str | None]:
    """Lowercased words, with None wherever punctuation or a line break separates two words."""
    words: list[str | None] = []
    for chunk in CONTEXT_BREAK.split(text.lower()):
        words += WORD_RE.findall(chunk)
        words.append(None)
    return words


@dataclass
class _WordTally:
    """What the word-level pass accumulates over a corpus."""

    words: tuple[str, ...]
    counts: ArticleCounts = field(default_factory=ArticleCounts)
    per_story: list[float] = field(default_factory=list)
    without_articles: int = 0
    # Adjacent word pairs; pairs with None (a break) are never read back.
    bigrams: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    # Word pairs directly followed by a break, i.e. pairs that are not a two-word context of anything.
    pair_ends: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    pair_articles: Counter[tuple[str | None, str | None, str]] = field(default_factory=Counter)

    def add(self, story: str) -> None:
        story_counts = count_articles(story, self.words)
        self.counts += story_counts
        if story_counts.words:
            self.per_story.append(story_counts.per_100_words())
        if not story_counts.total:
            self.without_articles += 1
        # One Counter update per story, not per phrase: updates have a high fixed cost.
        ws = _context_words(story)
        self.bigrams.update(pairwise(ws))
        # Only the few positions holding a break or an article end a pair of interest.
        marks = [i for i, w in enumerate(ws) if (w is None or w in self.words) and i >= 2]
        self.pair_ends.update((ws[i - 2], ws[i - 1]) for i in marks if ws[i] is None)
        self.pair_articles.update((ws[i - 2], ws[i - 1], ws[i]) for i in marks if ws[i] is not None)

    def merge(self, other: _WordTally) -> None:
        """Add a later chunk's tally: merged in order, counters keep the order of first occurrence."""
        self.counts += other.counts
        self.per_story.extend(other.per_story)
        self.without_articles += other.without_articles
        self.bigrams.update(other.bigrams)
        self.pair_ends.update(other.pair_ends)
        self.pair_articles.update(other.pair_articles)

    def next_words(self, top: int) -> dict[str, list[NextWord]]:
        after: dict[str, Counter[str]] = {w: Counter() for w in self.words}
        for (first, second), n in self.bigrams.items():
            if first in after and second is not None:
                after[first][second] += n
        return {
            w: [NextWord(nw, n, n / max(1, sum(c.values()))) for nw, n in c.most_common(top)] for w, c in after.items()
        }

    def contexts(self, top: int) -> list[ContextRate]:
        """The `top // 2` most frequent one-word and `top - top // 2` two-word contexts, most frequent first.

        Contexts ending in an article ("the", "in the") are left out: an article never follows them.
        """
        single: Counter[str] = Counter()
        pairs: Counter[tuple[str, str]] = Counter()
        single_articles: dict[str, Counter[str]] = {}
        for (first, second), n in self.bigrams.items():
            if first is None or second is None:
                continue
            if first not in self.words:
                single[first] += n
            if second not in self.words:
                pairs[(first, second)] += n - self.pair_ends[(first, second)]
            if second in self.words:
                single_articles.setdefault(first, Counter())[second] += n
        pair_articles: dict[tuple[str | None, str | None], Counter[str]] = {}
        for (a, b, article), n in self.pair_articles.items():
            pair_articles.setdefault((a, b), Counter())[article] += n
        rates = [
            ContextRate(w, n, dict(single_articles.get(w, Counter()).most_common()))
            for w, n in single.most_common(top // 2)
        ]
        rates += [
            ContextRate(f"{a} {b}", n, dict(pair_articles.get((a, b), Counter()).most_common()))
            for (a, b), n in pairs.most_common(top - top // 2)
        ]
        return sorted(rates, key=lambda r: -r.count)


# ---- intervals from chunks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A rate and its 95% interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def ratio_interval(counts: Sequence[int], totals: Sequence[int], scale: float = 100.0) -> Interval | None:
    """scale * sum(counts) / sum(totals), with a 95% interval from the per-chunk counts; None from fewer
    than two chunks. Each chunk of stories is one draw (words of one story are not independent), and the
    variance is the ratio estimator's: k/(k-1) * sum((count_i - rate * total_i)^2) / sum(totals)^2."""
    found, out_of = np.asarray(counts, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    chunks, denominator = len(found), float(out_of.sum())
    if chunks < 2 or not denominator:
        return None
    rate = float(found.sum()) / denominator
    error = math.sqrt(chunks / (chunks - 1) * float(((found - rate * out_of) ** 2).sum())) / denominator
    return Interval(scale * rate, scale * (rate - Z_95 * error), scale * (rate + Z_95 * error))


@dataclass(frozen=True)
class ChunkRates:
    """What the intervals need of one chunk: its words and its articles by word."""

    words: int
    by_word: dict[str, int]

    @property
    def articles(self) -> int:
        return sum(self.by_word.values())


def rate_interval(chunks: Sequence[ChunkRates]) -> Interval | None:
    """Articles per 100 words."""
    return ratio_interval([c.articles for c in chunks], [c.words for c in chunks])


def word_intervals(chunks: Sequence[ChunkRates], words: Sequence[str]) -> dict[str, Interval]:
    """Each article word per 100 words."""
    totals = [c.words for c in chunks]
    found = {w: ratio_interval([c.by_word.get(w, 0) for c in chunks], totals) for w in words}
    return {w: interval for w, interval in found.items() if interval is not None}


def precise_enough(chunks: Sequence[ChunkRates], precision: float) -> bool:
    """The interval of articles per 100 words is within +-precision of it, from enough chunks to trust."""
    interval = rate_interval(chunks) if len(chunks) >= MIN_SAMPLE_CHUNKS else None
    return interval is not None and interval.half_width <= precision * interval.value


# ---- counting chunks, here or on worker processes ---------------------------------------------------------


@dataclass
class _ChunkCount:
    """All one chunk of stories adds to the statistics."""

    stories: int
    words: _WordTally
    tokens: TokenCounts

    @property
    def rates(self) -> ChunkRates:
        return ChunkRates(self.words.counts.words, self.words.counts.by_word())


class _Counter:
    """Counts one chunk of stories. Picklable (a tokenizer pickles as its JSON), so worker processes run it.

    Token counts come from a cache of pre-tokens where `PRETOKENS` splits a story as the tokenizer does
    (as `StoryEncoder` encodes), else from the tokenizer's batch encoding with offsets."""

    def __init__(self, tokenizer: TextTokenizer, ids: frozenset[int], words: tuple[str, ...]):
        self.tokenizer, self.ids, self.words = tokenizer, ids, words
        self.hits = _PretokenHits(tokenizer, ids) if plain_byte_level(tokenizer) else None
        self.added = added_tokens(tokenizer)

    def tokens(self, stories: list[str]) -> TokenCounts:
        counts, others = TokenCounts(), []
        for story in stories:
            if self.hits is not None and splits_alone(story, self.added):
                _tally_pretokens(self.hits, story, counts)
            else:
                others.append(story)
        _tally_tokens(self.tokenizer, others, self.ids, counts)
        return counts

    def __call__(self, stories: list[str]) -> _ChunkCount:
        tally = _WordTally(words=self.words)
        for story in stories:
            tally.add(story)
        return _ChunkCount(len(stories), tally, self.tokens(stories))


_worker_counter: _Counter | None = None  # a worker process's counter, set once when the worker starts


def _start_worker(counter: _Counter) -> None:
    global _worker_counter
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism: one thread each
    _worker_counter = counter


def _count_in_worker(stories: list[str]) -> _ChunkCount:
    assert _worker_counter is not None, "_start_worker runs first in every worker"
    return _worker_counter(stories)


def _chunks(corpus: Stories, size: int) -> Iterator[tuple[list[str], float]]:
    """The corpus re-cut into chunks of `size` stories (the last may be shorter), each with the fraction of
    the pass done once it is read."""
    pending: list[str] = []
    for batch in corpus.read():
        pending.extend(batch.stories)
        while len(pending) >= size:
            yield pending[:size], batch.fraction
            pending = pending[size:]
    if pending:
        yield pending, 1.0


def _counted(
    chunks: Iterator[tuple[list[str], float]], counter: _Counter, workers: int
) -> Iterator[tuple[_ChunkCount, float]]:
    """Each chunk's counts, in order: in this process for one worker or a single chunk, else on a pool of
    `workers` processes with a few chunks in flight (memory stays bounded however long the corpus)."""
    head = list(islice(chunks, 2))
    if workers < 2 or len(head) < 2:
        for stories, fraction in chain(head, chunks):
            yield counter(stories), fraction
        return
    # spawn, not fork: a forked child of a process whose tokenizer threads have run can deadlock
    pool = ProcessPoolExecutor(workers, get_context("spawn"), initializer=_start_worker, initargs=(counter,))
    in_flight: deque[tuple[Future[_ChunkCount], float]] = deque()
    try:
        for stories, fraction in chain(head, chunks):
            in_flight.append((pool.submit(_count_in_worker, stories), fraction))
            if len(in_flight) > 2 * workers:
                future, done = in_flight.popleft()
                yield future.result(), done
        while in_flight:
            future, done = in_flight.popleft()
            yield future.result(), done
    finally:
        pool.shutdown(cancel_futures=True)  # a pass stopped early leaves chunks nobody will read


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


DEFINITIONS = {
    "article": "a whole word equal, ignoring case, to an article word",
    "form": "lower/cap by case; _space when a space precedes the article, _bare otherwise; other for e.g. THE",
    "sentence_initial": "only spaces, quotes or brackets between the article and the text start, a line break or . ! ?",
    "context": "1-2 lowercased words directly followed by another word (spaces only between); count = how often, "
    "rate = share of those next words that are articles",
    "inside_word": "occurrences of an article token that are part of a longer word (theater, banana)",
    "interval": f"95% interval of a rate over chunks of {CHUNK_SIZE} stories in corpus order, each chunk one draw "
    "(ratio estimator)",
}


@dataclass(frozen=True)
class Sampling:
    """How much of the corpus the statistics read, and how sure their rates are."""

    chunks: list[ChunkRates]
    words: tuple[str, ...]
    precision: float | None
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        overall = rate_interval(self.chunks)
        return {
            "chunk_stories": CHUNK_SIZE,
            "chunks": len(self.chunks),
            "precision": self.precision,
            "stopped_early": self.stopped_early,
            "articles_per_100_words": overall.to_dict() if overall else None,
            "by_word_per_100_words": {w: i.to_dict() for w, i in word_intervals(self.chunks, self.words).items()},
        }


@dataclass(frozen=True)
class DatasetStats:
    """Article statistics of one corpus split under one tokenizer."""

    corpus: str
    tokenizer: TextTokenizer
    words: tuple[str, ...]
    stories: int
    word_counts: ArticleCounts
    token_forms: list[TokenFormCount]
    tokens: int
    articles_per_100_words: Distribution
    stories_without_articles: int
    tokens_per_story: Distribution
    next_words: dict[str, list[NextWord]]
    contexts: list[ContextRate]
    sampling: Sampling

    @property
    def article_tokens(self) -> int:
        return sum(f.count or 0 for f in self.token_forms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "tokenizer": {
                "source": self.tokenizer.source,
                "sha256": self.tokenizer.sha256,
                "vocab_size": self.tokenizer.vocab_size,
            },
            "article_words": list(self.words),
            "definitions": {"word": WORD_PATTERN, **DEFINITIONS},
            "stories": self.stories,
            "words": self.word_counts.words,
            "tokens": self.tokens,
            "word_level": self.word_counts.to_dict(),
            "token_level": {
                "articles": self.article_tokens,
                "share_of_tokens": self.article_tokens / self.tokens if self.tokens else 0.0,
                "forms": [f.to_dict(self.tokens) for f in self.token_forms],
            },
            "per_story": {
                "articles_per_100_words": self.articles_per_100_words.to_dict(),
                "stories_without_articles": self.stories_without_articles,
                "share_without_articles": self.stories_without_articles / self.stories if self.stories else 0.0,
            },
            "tokens_per_story": self.tokens_per_story.to_dict(),
            "next_words": {w: [vars(n) for n in nws] for w, nws in self.next_words.items()},
            "contexts": [c.to_dict() for c in self.contexts],
            "sampling": self.sampling.to_dict(),
        }


def dataset_stats(
    corpus: Stories,
    tokenizer: TextTokenizer,
    articles: ArticleSet,
    words: Sequence[str] = DEFAULT_WORDS,
    top_contexts: int = 50,
    top_next: int = 10,
    progress: Progress | None = None,
    workers: int | None = None,
    precision: float | None = None,
) -> DatasetStats:
    """One pass over the corpus in chunks, counted on `workers` processes (default: every core) and merged
    in order: token counts and word-level counts. With `precision` (e.g. 0.01), the pass stops once the 95%
    interval of articles per 100 words is within +-precision of it."""
    words = tuple(w.lower() for w in words)
    counter = _Counter(tokenizer, frozenset(articles.ids), words)
    tally, token_counts = _WordTally(words=words), TokenCounts()
    chunks: list[ChunkRates] = []
    stories = tokens = 0
    stopped_early = False
    for count, fraction in _counted(_chunks(corpus, CHUNK_SIZE), counter, workers or available_cores()):
        tally.merge(count.words)
        token_counts.merge(count.tokens)
        chunks.append(count.rates)
        stories, tokens = stories + count.stories, tokens + sum(count.tokens.lengths)
        if progress:
            progress(stories, expected_stories(stories, fraction), tokens=tokens)
        if precision is not None and precise_enough(chunks, precision):
            stopped_early = True
            break
    if progress:
        progress(stories, stories, tokens=tokens)
    return DatasetStats(
        corpus=corpus.name,
        tokenizer=tokenizer,
        words=words,
        stories=stories,
        word_counts=tally.counts,
        token_forms=token_form_counts(articles, token_counts),
        tokens=tokens,
        articles_per_100_words=Distribution.of(tally.per_story),
        stories_without_articles=tally.without_articles,
        tokens_per_story=Distribution.of(token_counts.lengths),
        next_words=tally.next_words(top_next),
        contexts=tally.contexts(top_contexts),
        sampling=Sampling(chunks, words, precision, stopped_early),
    )


def check_out_path(path: Path) -> None:
    """Fail before any work when `path` can never be written as a file."""
    if path.is_dir():
        raise InputError(f"--out {path} is a folder: pass a file name such as {path / 'stats.json'}")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise InputError(f"--out {path}: a parent of it is a file, not a folder: choose another path")


def write_json_atomic(data: Any, path: Path) -> Path:
    """Write JSON to a temporary file beside `path`, then rename it over `path` (never half-written)."""
    check_out_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror}): choose another --out path")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
