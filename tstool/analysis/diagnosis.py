"""Tokenizer diagnosis: how every article form tokenizes, alone and in context, which IDs really are
articles, and how often each form occurs in a corpus.

The report is data; `ok` is False (the CLI exits 1) when a form to be weighted is not a single token
or an ID the user expects to be an article is not one. Merged or split articles in context are
warnings: they do not stop weighting, but the weight then misses those occurrences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding

from tstool.config import ArticleConfig, ArticleForm
from tstool.data.articles import ALL_FORMS, FORM_TEXT, ArticleSet, ResolvedForm, resolve_articles
from tstool.data.corpus import Corpus
from tstool.data.stats import ArticleCounts, Progress, count_article_tokens, count_articles, find_articles
from tstool.data.tokenizer import TextTokenizer

# (name, text before the article, form the article takes there, text after); the article is followed
# by " dog" ("an": " apple").
CONTEXTS: tuple[tuple[str, str, ArticleForm, str], ...] = (
    ("after_space", "I saw", "lower_space", "."),
    ("text_start", "", "cap_bare", " was there."),
    ("sentence_start", "It was late.", "cap_space", " was there."),
    ("after_newline", "It was late.\n", "cap_bare", " was there."),
    ("after_quote", 'She said, "', "lower_bare", ' is here."'),
)
PHRASES = (
    "Once upon a time there was a little girl.",
    "The dog saw an apple.",
    "Once upon a time, there was a cat named Tom.\nThe cat liked to play in the sun. One day, an owl came by.",
    '"A ball!" said the boy. He threw the ball to a friend.',
)
# A form whose token occurs more often inside longer words than as the article is flagged.
INSIDE_WORD_WARN_SHARE = 0.5


def _noun(word: str) -> str:
    return "apple" if word == "an" else "dog"


@dataclass(frozen=True)
class Cover:
    """The tokens covering one character span of an encoded text."""

    start: int
    end: int
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    merged: bool
    split: bool

    @property
    def status(self) -> str:
        return "merged" if self.merged else "split" if self.split else "ok"


def cover(tokenizer: TextTokenizer, encoding: Encoding, start: int, end: int) -> Cover:
    """Tokens overlapping [start, end): merged when one reaches outside it, split when several share it."""
    hits = [i for i, (s, e) in enumerate(encoding.offsets) if s < end and e > start]
    spans = [encoding.offsets[i] for i in hits]
    return Cover(
        start=start,
        end=end,
        ids=tuple(encoding.ids[i] for i in hits),
        tokens=tuple(tokenizer.token(encoding.ids[i]) for i in hits),
        merged=any(s < start or e > end for s, e in spans),
        split=len(hits) > 1,
    )


def _encode(tokenizer: TextTokenizer, text: str) -> Encoding:
    return tokenizer.backend.encode(text, add_special_tokens=False)


@dataclass(frozen=True)
class FormCheck:
    """One article form on its own: its tokens, whether it is weighted, whether it round-trips."""

    form: ResolvedForm
    tokens: tuple[str, ...]
    weighted: bool
    round_trip: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.form.word,
            "form": self.form.form,
            "text": self.form.text,
            "ids": list(self.form.ids),
            "tokens": list(self.tokens),
            "single_token": self.form.single_token,
            "weighted": self.weighted,
            "round_trip": self.round_trip,
        }


@dataclass(frozen=True)
class ContextCheck:
    """One article word in one context, e.g. "The" after a newline, found through encoding offsets."""

    word: str
    context: str
    text: str
    expected: ResolvedForm
    cover: Cover
    round_trip: bool

    @property
    def matches_form(self) -> bool:
        return self.cover.ids == self.expected.ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "context": self.context,
            "text": self.text,
            "article": self.text[self.cover.start : self.cover.end],
            "ids": list(self.cover.ids),
            "tokens": list(self.cover.tokens),
            "status": self.cover.status,
            "expected_form": self.expected.form,
            "expected_ids": list(self.expected.ids),
            "matches_form": self.matches_form,
            "round_trip": self.round_trip,
        }


@dataclass(frozen=True)
class PhraseToken:
    id: int
    text: str
    article: bool


@dataclass(frozen=True)
class PhraseCheck:
    """A canonical phrase, token by token, and how each article in it is covered."""

    text: str
    tokens: tuple[PhraseToken, ...]
    articles: tuple[tuple[str, Cover], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": [vars(t) for t in self.tokens],
            "articles": [
                {
                    "article": surface,
                    "span": [c.start, c.end],
                    "ids": list(c.ids),
                    "tokens": list(c.tokens),
                    "status": c.status,
                }
                for surface, c in self.articles
            ],
        }


@dataclass(frozen=True)
class IdCheck:
    """One ID a user believes is an article, and what it really is."""

    id: int
    token: str | None
    form: ResolvedForm | None
    weighted: bool

    @property
    def ok(self) -> bool:
        return self.weighted

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "in_vocab": self.token is not None,
            "token": self.token,
            "is_article": self.form is not None,
            "article_form": f"{self.form.word}:{self.form.form}" if self.form else None,
            "weighted": self.weighted,
            "ok": self.ok,
        }

    def describe(self) -> str:
        if self.token is None:
            return f"{self.id} is outside the vocabulary"
        if self.form is None:
            return f"{self.id} is {self.token!r}, not an article"
        return f"{self.id} is {self.token!r}, an article form ({self.form.form}) that is not configured to be weighted"


@dataclass(frozen=True)
class CorpusForm:
    """One single-token form in a corpus: article words written in this form vs tokens with its ID."""

    form: ResolvedForm
    words: int
    tokens: int
    inside_word: int

    def to_dict(self, total_tokens: int) -> dict[str, Any]:
        return {
            "word": self.form.word,
            "form": self.form.form,
            "text": self.form.text,
            "id": self.form.ids[0],
            "word_count": self.words,
            "token_count": self.tokens,
            "inside_word": self.inside_word,
            "share_of_tokens": self.tokens / total_tokens if total_tokens else 0.0,
        }


@dataclass(frozen=True)
class CorpusCheck:
    name: str
    stories: int
    tokens: int
    forms: tuple[CorpusForm, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stories": self.stories,
            "tokens": self.tokens,
            "forms": [f.to_dict(self.tokens) for f in self.forms],
        }


@dataclass(frozen=True)
class Diagnosis:
    tokenizer: TextTokenizer
    weighted: ArticleSet
    forms: tuple[FormCheck, ...]
    contexts: tuple[ContextCheck, ...]
    phrases: tuple[PhraseCheck, ...]
    expected: tuple[IdCheck, ...] | None
    corpus: CorpusCheck | None
    problems: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": {
                "source": self.tokenizer.source,
                "sha256": self.tokenizer.sha256,
                "vocab_size": self.tokenizer.vocab_size,
            },
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "article_ids": [{"id": i, "token": self.tokenizer.token(i)} for i in self.weighted.ids],
            "forms": [f.to_dict() for f in self.forms],
            "contexts": [c.to_dict() for c in self.contexts],
            "phrases": [p.to_dict() for p in self.phrases],
            "expect_ids": None
            if self.expected is None
            else {"ok": all(c.ok for c in self.expected), "checks": [c.to_dict() for c in self.expected]},
            "corpus": self.corpus.to_dict() if self.corpus else None,
        }


def check_forms(tokenizer: TextTokenizer, every: ArticleSet, weighted: ArticleSet) -> tuple[FormCheck, ...]:
    return tuple(
        FormCheck(
            form=f,
            tokens=tuple(tokenizer.token(i) for i in f.ids),
            weighted=f.single_token and f in weighted.forms,
            round_trip=tokenizer.decode(f.ids) == f.text,
        )
        for f in every.forms
    )


def check_contexts(tokenizer: TextTokenizer, every: ArticleSet) -> tuple[ContextCheck, ...]:
    checks = []
    for word in dict.fromkeys(f.word for f in every.forms):
        for name, before, form, after in CONTEXTS:
            article = FORM_TEXT[form](word)
            text = f"{before}{article} {_noun(word)}{after}"
            encoding = _encode(tokenizer, text)
            expected = next(f for f in every.forms if f.word == word and f.form == form)
            checks.append(
                ContextCheck(
                    word=word,
                    context=name,
                    text=text,
                    expected=expected,
                    cover=cover(tokenizer, encoding, len(before), len(before) + len(article)),
                    round_trip=tokenizer.decode(encoding.ids) == text,
                )
            )
    return tuple(checks)


def check_phrases(tokenizer: TextTokenizer, weighted: ArticleSet, words: list[str]) -> tuple[PhraseCheck, ...]:
    checks = []
    ids = set(weighted.ids)
    for phrase in PHRASES:
        encoding = _encode(tokenizer, phrase)
        tokens = tuple(PhraseToken(i, tokenizer.token(i), i in ids) for i in encoding.ids)
        articles = tuple((m.surface, cover(tokenizer, encoding, *m.span)) for m in find_articles(phrase, words))
        checks.append(PhraseCheck(text=phrase, tokens=tokens, articles=articles))
    return tuple(checks)


def check_ids(
    tokenizer: TextTokenizer, expect_ids: list[int], every: ArticleSet, weighted: ArticleSet
) -> tuple[IdCheck, ...]:
    checks = []
    for token_id in expect_ids:
        in_vocab = 0 <= token_id < tokenizer.vocab_size
        checks.append(
            IdCheck(
                id=token_id,
                token=tokenizer.token(token_id) if in_vocab else None,
                form=every.form_of(token_id),
                weighted=token_id in weighted.ids,
            )
        )
    return tuple(checks)


def check_corpus(
    tokenizer: TextTokenizer, corpus: Corpus, weighted: ArticleSet, words: list[str], progress: Progress | None
) -> CorpusCheck:
    counts = count_article_tokens(tokenizer, corpus.stories, weighted.ids, progress)
    written = ArticleCounts()
    for story in corpus.stories:
        written += count_articles(story, words)
    by_form = written.by_word_form()
    forms = tuple(
        CorpusForm(
            form=f,
            words=by_form[(f.word, f.form)],
            tokens=counts.by_id[f.ids[0]],
            inside_word=counts.inside_word[f.ids[0]],
        )
        for f in weighted.forms
        if f.single_token
    )
    return CorpusCheck(name=corpus.name, stories=len(corpus.stories), tokens=counts.tokens, forms=forms)


def _problems(
    tokenizer: TextTokenizer, cfg: ArticleConfig, weighted: ArticleSet, expected: tuple[IdCheck, ...] | None
) -> list[str]:
    problems = []
    if cfg.forms is not None and not cfg.allow_multi_token:
        for f in weighted.multi_token:
            problems.append(
                f"configured form {f.text!r} is {len(f.ids)} tokens {list(f.ids)}, so its weight cannot apply to one "
                "target: drop it from articles.forms or set articles.allow_multi_token=true"
            )
    wrong = [c for c in expected or () if not c.ok]
    if wrong:
        right = ", ".join(f"{i} {tokenizer.token(i)!r}" for i in weighted.ids)
        problems.append(
            f"expected article IDs are wrong: {'; '.join(c.describe() for c in wrong)}. "
            f"The article IDs of this tokenizer are {right}"
        )
    return problems


def _warnings(
    forms: tuple[FormCheck, ...],
    contexts: tuple[ContextCheck, ...],
    phrases: tuple[PhraseCheck, ...],
    corpus: CorpusCheck | None,
    weighted: ArticleSet,
) -> list[str]:
    warnings = [f"form {f.form.text!r} does not survive encode/decode" for f in forms if not f.round_trip]
    warnings += [f"{c.context}: {c.text!r} does not survive encode/decode" for c in contexts if not c.round_trip]
    for c in contexts:
        if c.cover.status != "ok":
            how = "merged into a neighbour token" if c.cover.merged else "split into several tokens"
            warnings.append(
                f"{c.context}: {c.text[c.cover.start : c.cover.end]!r} in {c.text!r} is {how} {list(c.cover.tokens)}"
            )
        elif not c.matches_form:
            warnings.append(
                f"{c.context}: {c.text!r} encodes the article as {list(c.cover.ids)}, not as the {c.expected.form} "
                f"form {list(c.expected.ids)}"
            )
    for p in phrases:
        for surface, c in p.articles:
            if c.status != "ok":
                how = "merged into" if c.merged else "split into"
                warnings.append(f"{p.text!r}: article {surface!r} is {how} {list(c.tokens)}, so its weight misses it")
            elif c.ids[0] not in weighted.ids:
                warnings.append(f"{p.text!r}: article {surface!r} is token {c.ids[0]}, which is not weighted")
    for f in corpus.forms if corpus else ():
        if f.tokens and f.inside_word / f.tokens > INSIDE_WORD_WARN_SHARE:
            warnings.append(
                f"form {f.form.text!r} (ID {f.form.ids[0]}) is inside longer words in {f.inside_word} of its "
                f"{f.tokens} corpus occurrences, so weighting it mostly weights word pieces: consider leaving it "
                "out of articles.forms"
            )
    return warnings


def diagnose(
    tokenizer: TextTokenizer,
    cfg: ArticleConfig,
    corpus: Corpus | None = None,
    progress: Progress | None = None,
) -> Diagnosis:
    """Everything `tstool diagnose-tokenizer` reports, for one tokenizer and article config."""
    every = resolve_articles(tokenizer, ArticleConfig(words=cfg.words, forms=list(ALL_FORMS)))
    weighted = resolve_articles(tokenizer, cfg)
    forms = check_forms(tokenizer, every, weighted)
    contexts = check_contexts(tokenizer, every)
    phrases = check_phrases(tokenizer, weighted, cfg.words)
    expected = check_ids(tokenizer, cfg.expect_ids, every, weighted) if cfg.expect_ids else None
    corpus_check = check_corpus(tokenizer, corpus, weighted, cfg.words, progress) if corpus else None
    return Diagnosis(
        tokenizer=tokenizer,
        weighted=weighted,
        forms=forms,
        contexts=contexts,
        phrases=phrases,
        expected=expected,
        corpus=corpus_check,
        problems=tuple(_problems(tokenizer, cfg, weighted, expected)),
        warnings=tuple(_warnings(forms, contexts, phrases, corpus_check, weighted)),
    )
