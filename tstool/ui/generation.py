"""Rich rendering of generated samples and their article score: articles highlighted in the text."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from tstool.analysis.generate import Sample
from tstool.analysis.scoring import WORST_CONTEXTS, ArticleScore, SampleScore
from tstool.ui.reports import _add, _table

ARTICLE_STYLE = "bold cyan"
ARTICLE_LESS_STYLE = "bold red underline"
VERDICT_STYLE = {"ok": "bold green", "too little text": "yellow", "not judged": "yellow"}  # others: a problem
STOP_TEXT = {"eot": "ended at <|endoftext|>", "length": "hit --max-new-tokens"}
# Control characters a weak model emits (bell, carriage return) would garble the terminal; they are
# shown as their Unicode control pictures, one character each, so article offsets stay valid.
VISIBLE = {c: 0x2400 + c for c in range(32) if chr(c) not in "\n\t"} | {0x7F: 0x2421}


def _verdict(label: str) -> Text:
    return Text(label, style=VERDICT_STYLE.get(label, "bold red"))


def sample_text(sample: Sample, score: SampleScore | None) -> Text:
    """The prompt dimmed, then the continuation with its articles and article-less spots styled."""
    continuation = Text(sample.continuation.translate(VISIBLE))
    if score is not None:
        offset = len(sample.prompt)
        for article in score.articles:
            continuation.stylize(ARTICLE_STYLE, article.start - offset, article.end - offset)
        for spot in score.article_less:
            continuation.stylize(ARTICLE_LESS_STYLE, spot.word.start - offset, spot.word.end - offset)
    return Text(sample.prompt.translate(VISIBLE), style="dim") + continuation


def render_samples(console: Console, samples: Sequence[Sample], score: ArticleScore | None) -> None:
    prompt_number, previous = 0, None
    for i, sample in enumerate(samples):
        if sample.prompt != previous or sample.index == 0:
            prompt_number, previous = prompt_number + 1, sample.prompt
        scored = score.samples[i] if score is not None else None
        about = f"{len(sample.tokens)} tokens, {STOP_TEXT[sample.stop]}"
        if scored is not None:
            counts = scored.counts
            about += f" · {counts.total} articles / {counts.words} words"
        console.print(
            Panel(
                sample_text(sample, scored),
                title=f"prompt {prompt_number} · sample {sample.index + 1}",
                title_align="left",
                subtitle=Text(about),
                subtitle_align="right",
                border_style="dim",
            ),
            soft_wrap=False,  # the Output console soft-wraps, which would cut a panel's text at its border
        )
    if score is not None:
        console.print(
            Text.assemble(
                "Prompts are dim and never scored; ",
                ("articles", ARTICLE_STYLE),
                " are highlighted; ",
                ("underlined words", ARTICLE_LESS_STYLE),
                " follow a context that the corpus almost always continues with an article.",
            )
        )
        render_score(console, score)


def render_score(console: Console, score: ArticleScore) -> None:
    data = score.to_dict()
    low, high = score.interval
    corpus = score.reference
    console.print(
        Text.assemble(
            ("Articles per 100 words ", "bold"),
            f"{score.per_100_words:.2f} (95% {low:.1f}–{high:.1f}; {score.counts.total} in {score.counts.words} words "
            f"of {len(score.samples)} samples) vs {corpus.per_100_words:.2f} in {corpus.label} "
            f"→ ratio {score.ratio:.2f} · ",
            _verdict(score.rate_verdict),
        )
    )
    if score.sampling_bias is not None:
        console.print(
            f"Not judged: {score.sampling_bias} moves probability towards likely tokens, which biases the rate; "
            "judge at --temperature 1 with no top-k, top-p or repetition penalty."
        )
    forms = _table("Articles by form and word", "form / word", "count", "per 100 words", "corpus per 100 words")
    for key, row in (*data["by_form"].items(), *data["by_word"].items()):
        _add(forms, key, str(row["count"]), f"{row['per_100_words']:.2f}", f"{row['corpus_per_100_words']:.2f}")
    console.print(forms)

    ctx = score.contexts
    z = "-" if ctx.z is None else f"{ctx.z:.1f}"
    console.print(
        Text.assemble(
            ("Context divergence ", "bold"),
            f"{ctx.value:.3f} over {ctx.occurrences} context occurrences (corpus-faithful text: "
            f"{ctx.expected:.3f} ± {ctx.sd:.3f}; z {z}) · ",
            _verdict(ctx.verdict),
        )
    )
    worst = _table(
        "Contexts furthest from the corpus",
        "context",
        "seen",
        "then article",
        "share",
        "corpus share",
        "missing articles",
    )
    for c in ctx.contexts[:WORST_CONTEXTS]:
        _add(
            worst,
            repr(c.context),
            str(c.count),
            str(c.articles),
            f"{c.share:.0%}",
            f"{c.corpus_rate:.0%}",
            Text(f"{c.missing:+.1f}", style="red" if abs(c.missing) >= 1 else ""),
        )
    if ctx.contexts:
        console.print(worst)
    if score.article_less:
        patterns = ", ".join(f"{p!r} ×{n}" for p, n in score.article_less.most_common(10))
        console.print(Text.assemble(("Article-less patterns ", "bold"), patterns))
    console.print(Text.assemble(("Verdict ", "bold"), _verdict(score.verdict), f" · reference: {corpus.source}"))
