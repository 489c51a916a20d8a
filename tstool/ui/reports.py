"""Rich rendering of reports: tokenizer diagnosis, dataset statistics, a trained tokenizer; progress bars."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tstool.analysis.diagnosis import Diagnosis
from tstool.data.corpus import Progress as ProgressCallback

STATUS_STYLE = {"ok": "green", "merged": "bold red", "split": "yellow"}


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ThroughputColumn(ProgressColumn):
    """Items and tokens (where the work reports them) per second, and the time left, from the averages since
    the start: steady from the first update on, where a work's steps are few and long."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed, done, tokens = task.elapsed, task.completed, task.fields.get("tokens")
        if not elapsed or not done:
            return Text("")
        parts = [f"{done / elapsed:,.0f} {self.unit}/s"]
        if tokens:
            parts.append(f"{tokens / elapsed:,.0f} tokens/s")
        if task.total:
            parts.append(f"eta {_clock(max(0.0, task.total - done) * elapsed / done)}")
        return Text(" · ".join(parts), style="progress.data.speed")


@contextmanager
def progress_bar(
    err: Console, description: str, enabled: bool = True, unit: str = "items"
) -> Iterator[ProgressCallback]:
    """A `progress(done, total, tokens=None)` callback drawing a bar on stderr, with rates (`unit` per
    second, and tokens per second when reported) and the time left; a no-op when disabled (--json) or
    when stderr is not a terminal (logs and pipes get no bar residue)."""
    if not (enabled and err.is_terminal):
        yield lambda done, total, tokens=None: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        ThroughputColumn(unit),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=None, tokens=None)
        yield lambda done, total, tokens=None: progress.update(task, completed=done, total=total, tokens=tokens)


def _tok(text: str) -> str:
    """A token as people should see it: quoted, so leading spaces and newlines show."""
    return repr(text)


def _tokens(tokens: Sequence[str]) -> str:
    return " ".join(_tok(t) for t in tokens)


def _yes(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("no", style="red")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f}%"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=Text(title, style="bold"), title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _add(table: Table, *cells: str | Text) -> None:
    """Cells are plain text: corpus words and tokens like "[/b]" or ":train:" must not become markup or emoji."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def _pairs(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column name/value table without a header."""
    table = _table(title, "", "")
    table.show_header = False
    for name, value in rows:
        _add(table, name, value)
    return table


def _findings(console: Console, problems: Sequence[str], warnings: Sequence[str]) -> None:
    for warning in warnings:
        console.print(Text.assemble(("warning: ", "yellow"), warning))
    for problem in problems:
        console.print(Text.assemble(("problem: ", "bold red"), problem))


def render_diagnosis(console: Console, d: Diagnosis) -> None:
    verdict = Text("OK", style="bold green") if d.ok else Text("FAILED", style="bold red")
    console.print(
        Text.assemble(
            "Tokenizer ",
            (d.tokenizer.source, "bold"),
            f" · vocab {d.tokenizer.vocab_size:,} · sha256 ",
            d.tokenizer.sha256[:12],
            " · ",
            verdict,
        )
    )
    forms = _table("Article forms", "word", "form", "text", "ids", "tokens", "single", "weighted", "round trip")
    for f in d.forms:
        _add(
            forms,
            f.form.word,
            f.form.form,
            _tok(f.form.text),
            " ".join(map(str, f.form.ids)),
            _tokens(f.tokens),
            _yes(f.form.single_token),
            _yes(f.weighted),
            _yes(f.round_trip),
        )
    console.print(forms)

    contexts = _table("In context", "word", "context", "text", "tokens", "ids", "status", "expected form")
    for c in d.contexts:
        _add(
            contexts,
            c.word,
            c.context,
            _tok(c.text),
            _tokens(c.cover.tokens),
            " ".join(map(str, c.cover.ids)),
            Text(c.cover.status, style=STATUS_STYLE[c.cover.status]),
            Text(c.expected.form, style="green" if c.matches_form else "red"),
        )
    console.print(contexts)

    console.print(Text("Canonical phrases (article tokens in green, merged or split articles in red)", style="bold"))
    for p in d.phrases:
        bad = {i for _, c in p.articles if c.status != "ok" for i in c.ids}
        line = Text("  ")
        for i, token in enumerate(p.tokens):
            style = "bold green" if token.article else "bold red" if token.id in bad else ""
            line.append(("│" if i else "") + token.text.replace("\n", "↵"), style=style)
        console.print(line)

    if d.expected is not None:
        expected = _table("Expected article IDs", "id", "token", "article", "form", "ok")
        for e in d.expected:
            _add(
                expected,
                str(e.id),
                "outside the vocabulary" if e.token is None else _tok(e.token),
                _yes(e.form is not None),
                e.form.form if e.form else "-",
                _yes(e.ok),
            )
        console.print(expected)
        console.print(Text("Article IDs: " + ", ".join(f"{i} {_tok(d.tokenizer.token(i))}" for i in d.weighted.ids)))

    if d.corpus is not None:
        corpus = _table(
            f"Corpus {d.corpus.name}: {d.corpus.stories:,} stories, {d.corpus.tokens:,} tokens",
            "word",
            "form",
            "id",
            "words written so",
            "tokens",
            "inside words",
            "share of tokens",
        )
        for f in d.corpus.forms:
            _add(
                corpus,
                f.form.word,
                f"{f.form.form} {_tok(f.form.text)}",
                str(f.form.ids[0]),
                f"{f.words:,}",
                f"{f.tokens:,}",
                f"{f.inside_word:,}",
                _pct(f.tokens / d.corpus.tokens if d.corpus.tokens else 0.0),
            )
        console.print(corpus)
    _findings(console, d.problems, d.warnings)


def _dist(d: dict[str, float], digits: int = 1) -> str:
    return " · ".join(f"{name} {value:.{digits}f}" for name, value in d.items())


def render_stats(console: Console, doc: dict[str, Any]) -> None:
    """Tables from the stats document itself (`DatasetStats.to_dict()`), so they match --json exactly."""
    words, tokens, per_story = doc["word_level"], doc["token_level"], doc["per_story"]
    rows = [
        ("stories", f"{doc['stories']:,}"),
        ("words", f"{words['words']:,}"),
        ("tokens", f"{doc['tokens']:,} ({doc['tokenizer']['source']})"),
        ("articles (words)", f"{words['articles']:,} · {_pct(words['share_of_words'])} of words"),
        ("articles (tokens)", f"{tokens['articles']:,} · {_pct(tokens['share_of_tokens'])} of tokens"),
        ("sentence-initial / inner", f"{words['by_position']['initial']:,} / {words['by_position']['inner']:,}"),
        ("articles per 100 words, per story", _dist(per_story["articles_per_100_words"])),
        (
            "stories without articles",
            f"{per_story['stories_without_articles']:,} ({_pct(per_story['share_without_articles'])})",
        ),
        ("tokens per story", _dist(doc["tokens_per_story"], 0)),
    ]
    console.print(_pairs(f"Dataset {doc['corpus']}", rows))

    by_word = _table(
        "Articles by written form (word level)", "word", "form", "initial", "inner", "total", "per 100 words"
    )
    for r in words["rows"]:
        _add(
            by_word,
            r["word"],
            r["form"],
            f"{r['initial']:,}",
            f"{r['inner']:,}",
            f"{r['count']:,}",
            f"{r['per_100_words']:.3f}",
        )
    console.print(by_word)

    by_token = _table(
        "Article tokens (token level)", "word", "form", "text", "ids", "count", "inside words", "share of tokens"
    )
    for f in tokens["forms"]:
        count = "multi-token" if f["count"] is None else f"{f['count']:,}"
        inside = "-" if f["inside_word"] is None else f"{f['inside_word']:,}"
        _add(
            by_token,
            f["word"],
            f["form"],
            _tok(f["text"]),
            " ".join(map(str, f["ids"])),
            count,
            inside,
            _pct(f["share_of_tokens"]),
        )
    console.print(by_token)

    next_words = doc["next_words"]
    after = _table("Most common words after each article", "#", *next_words)
    for rank in range(max((len(v) for v in next_words.values()), default=0)):
        cells = [f"{v[rank]['word']} {_pct(v[rank]['share'])}" if rank < len(v) else "" for v in next_words.values()]
        _add(after, str(rank + 1), *cells)
    console.print(after)

    contexts = _table(
        "Contexts: share followed by an article", "context", "count", "followed by article", "rate", "by article"
    )
    for c in doc["contexts"]:
        split = ", ".join(f"{w} {n:,}" for w, n in c["by_article"].items()) or "-"
        _add(contexts, c["context"], f"{c['count']:,}", f"{c['followed_by_article']:,}", _pct(c["rate"]), split)
    console.print(contexts)


def render_trained_tokenizer(console: Console, result: dict[str, Any]) -> None:
    console.print(_pairs("Trained tokenizer", [(key, str(value)) for key, value in result.items()]))
