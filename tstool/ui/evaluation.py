"""Rich rendering of `tstool eval` reports and `tstool plot` summaries, and a terminal sparkline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from tstool.ui.reports import _table
from tstool.ui.training import ratio_text

if TYPE_CHECKING:
    from tstool.analysis.evaluate import EvalReport
    from tstool.analysis.plot import RunCurves

SPARK_CHARS = "▁▂▃▄▅▆▇█"
VERDICT_STYLE = {"aligned": "bold green", "inconclusive": "yellow", "misaligned": "bold red"}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def sparkline(values: Sequence[float | None], width: int | None = None) -> str:
    """One block character per value, scaled from the series' min (▁) to max (█); None/nan are blanks.

    With `width` shorter than the series, each character is the mean of a contiguous bucket of values,
    so a long loss curve keeps its shape in a table cell.
    """
    points = [_finite(v) for v in values]
    if width is not None and len(points) > width > 0:
        buckets = [points[i * len(points) // width : (i + 1) * len(points) // width] for i in range(width)]
        points = [
            _finite(math.fsum(b) / len(b)) if (b := [v for v in bucket if v is not None]) else None
            for bucket in buckets
        ]
    finite = [v for v in points if v is not None]
    if not finite:
        return " " * len(points)
    low, span = min(finite), max(finite) - min(finite)
    top = len(SPARK_CHARS) - 1

    def char(v: float | None) -> str:
        if v is None:
            return " "
        return SPARK_CHARS[round((v - low) / span * top) if span else top // 2]

    return "".join(char(v) for v in points)


def _num(value: float | int | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_eval(console: Console, report: EvalReport) -> None:
    d, m = report.data, report.metrics
    console.print(
        Text.assemble(
            *(
                ("Checkpoint ", (report.checkpoint, "bold"), f" · step {report.step:,}")
                if report.step is not None
                else ("Model ", (report.model, "bold"))
            ),
            f" · {d['source']} ({d['split']}) · "
            f"{d['blocks']:,} blocks × {d['seq_len']} of {d['tokens']:,} tokens · "
            f"{d['bytes_per_token']:.2f} bytes/token",
        )
    )
    console.print(Text.assemble(("Correction: ", "bold"), report.correction.describe()))
    metrics = _table("Teacher-forced metrics", "metric", "value", "meaning")
    rows: list[tuple[str, str | Text, str]] = [
        ("loss", _num(m["loss_unweighted"]), "mean cross-entropy per token, nats"),
        ("perplexity", _num(m["ppl"], 2), "exp(loss)"),
        ("bits per byte", _num(m["bpb"]), "loss / ln 2 / bytes per token: compares across tokenizers"),
        ("article loss", _num(m["article_loss"]), f"mean CE at {m['article_tokens']:,} article targets"),
        ("other loss", _num(m["other_loss"]), "mean CE at all other targets"),
        ("ratio", ratio_text(m["ratio"], report.article_weight), "article loss / other loss"),
        (
            "article precision",
            _pct(m["article_precision"]),
            f"of {m['predicted_articles']:,} top-1 article predictions, the share where an article belongs",
        ),
        ("article recall", _pct(m["article_recall"]), "of article targets, the share predicted as some article"),
        ("exact precision", _pct(m["article_precision_exact"]), "of top-1 article predictions, the exact article"),
        ("exact accuracy", _pct(m["article_acc"]), "of article targets, the share predicted exactly"),
        ("p(article target)", _pct(m["article_p_target"]), "mean probability of the right article"),
        ("article mass", _pct(m["article_mass"]), "mean total probability on all articles at article targets"),
    ]
    for name, value, meaning in rows:
        metrics.add_row(name, value, meaning)
    console.print(metrics)
    render_calibration(console, report.calibration)

    # Columns for the mid-sentence forms every default context calls for; "mass" covers every form.
    first = report.slots[0].articles if report.slots else ()
    shown = [a.text for a in first if a.form == "lower_space"] or [a.text for a in first]
    slots = _table(
        "Article slot probes: p and rank of each article after the context; mass: all article forms",
        "context",
        "top prediction",
        "mass",
        *(repr(t) for t in shown),
        "other forms",
    )
    for s in report.slots:
        by_text = {a.text: a for a in s.articles}
        slots.add_row(
            Text(s.context),
            Text(f"{s.top_token!r} {_pct(s.top_prob)}"),
            _pct(s.article_mass),
            *(f"{_pct(by_text[t].prob)} #{by_text[t].rank:,}" for t in shown),
            _pct(s.article_mass - sum(by_text[t].prob for t in shown)),
        )
    console.print(slots)

    shift = report.shift
    console.print(
        Text.assemble(
            ("Shift probe", "bold"),
            f" over {shift.tokens:,} positions in {shift.gap.n:,} blocks: loss against the next token "
            f"{_num(shift.next_loss)}, against the token after next {_num(shift.after_next_loss)}",
        )
    )
    console.print(Text.assemble((f"{shift.verdict}: ", VERDICT_STYLE[shift.verdict]), shift.message))


def render_calibration(console: Console, calibration: dict[str, dict]) -> None:
    """The reliability table of article probability, raw and (when applied) corrected, and its summary."""
    kinds = list(calibration)
    table = _table(
        "Article calibration: positions binned by the model's total article probability",
        "article probability",
        "positions",
        *(f"predicted ({kind})" for kind in kinds),
        *(f"observed ({kind})" for kind in kinds),
    )
    for rows in zip(*(calibration[kind]["reliability"] for kind in kinds), strict=True):
        low, high = rows[0]["bin"]
        table.add_row(
            f"{low:.1f}–{high:.1f}",
            " / ".join(f"{row['positions']:,}" for row in rows),
            *(_pct(row["predicted"]) for row in rows),
            *(_pct(row["observed"]) for row in rows),
        )
    console.print(table)
    for kind in kinds:
        c = calibration[kind]
        console.print(
            f"{kind}: expected calibration error {_pct(c['ece'])} · mean article probability "
            f"{_pct(c['mean_predicted_mass'])} against an observed article share of {_pct(c['observed_article_share'])}"
            f" · average precision {_num(c['average_precision'])}"
        )


def render_plot_summary(console: Console, runs: Sequence[RunCurves], out: str) -> None:
    table = _table(
        f"Plotted {len(runs)} run(s) to {out}", "run", "steps", "train loss", "val loss", "val bpb", "train loss curve"
    )
    for run in runs:
        s = run.summary()
        table.add_row(
            Text(run.label),
            f"{s['last_step']:,}",
            _num(s["final_train_loss"]),
            _num(s["final_val_loss"]),
            _num(s["final_val_bpb"]),
            sparkline(run.series("loss_unweighted")[1], width=40),
        )
    console.print(table)
