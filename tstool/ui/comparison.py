"""Rich rendering of `tstool compare` and `tstool experiment`: the side-by-side table with loss
sparklines, status lines while runs are measured, and the experiment's training view per run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from tstool.analysis.compare import ROWS, Comparison, RunResult
from tstool.ui.evaluation import sparkline
from tstool.ui.reports import _add, _table

SPARK_WIDTH = 24
BEST_STYLE = "bold green"
LOSS_CURVES = (("train_loss", "train", "train loss curve"), ("val_loss", "val", "val loss curve"))


def compare_status(event: dict[str, Any]) -> str:
    """A status line for a `compare_runs` event."""
    label, stage = event["label"], event["stage"]
    if stage == "load":
        return f"{label}: loading {'the transformers model' if event.get('transformers') else 'its latest checkpoint'}"
    if stage == "eval":
        blocks = event["max_blocks"]
        return f"{label}: evaluating {'every' if blocks is None else f'{blocks:,}'} validation blocks"
    if stage == "generate":
        return f"{label}: generating {event['samples']} samples per prompt"
    return f"{label}: scoring generated articles against the corpus"


def sparklines(run: RunResult) -> dict[str, str]:
    """Terminal sparklines of the run's unweighted train and val loss, from metrics.jsonl; empty for a
    transformers model, which has no curves."""
    return {name: sparkline(run.loss_curve(split)["values"], width=SPARK_WIDTH) for name, split, _ in LOSS_CURVES}


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    """The --json document: the comparison's data plus each run's loss sparklines."""
    doc = comparison.to_dict()
    for run_doc, run in zip(doc["runs"], comparison.runs, strict=True):
        run_doc["sparklines"] = sparklines(run)
    return doc


def render_comparison(console: Console, comparison: Comparison) -> None:
    runs = comparison.runs
    table = _table("Runs side by side (★ best per row)", "measurement", *(r.label for r in runs))
    values = [r.values() for r in runs]
    for row in ROWS:
        best = comparison.best(row)
        label = row.label + (" †" if row.per_token and not comparison.same_tokenizer else "")
        cells = [
            Text(f"{row.format(v[row.key])} ★", style=BEST_STYLE)
            if r.label in best
            else row.format(v[row.key], r.available(row))
            for r, v in zip(runs, values, strict=True)
        ]
        _add(table, label, *cells)
    lines = [sparklines(r) for r in runs]
    for name, _, label in LOSS_CURVES:
        _add(table, label, *(line[name] for line in lines))
    console.print(table)

    data, settings = runs[0].report.data, comparison.settings
    blocks = f"{data['blocks']:,} validation blocks of {data['seq_len']} tokens ({data['source']})"
    console.print(
        Text(
            (
                f"Every run: the same {blocks}. "
                if comparison.shared_blocks
                else f"The same text, {blocks} for the first run. "
            )
            + f"Generations: {len(comparison.prompts)} prompts × {settings.num_samples} samples, up to "
            f"{settings.max_new_tokens} new tokens, temperature {settings.temperature:g}, seed {comparison.seed}, "
            "identical for every run. Generated articles: ★ marks the rate closest to the corpus."
        )
    )
    if not comparison.same_tokenizer:
        console.print(
            Text("† per token of different tokenizers: not comparable, compare bits per byte", style="yellow")
        )
    for note in comparison.notes:
        console.print(Text.assemble(("note: ", "yellow"), note))
