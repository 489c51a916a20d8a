"""Rich rendering of `tstool experiment`: live training per run, then the results table with intervals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from tstool.ui.reports import _table
from tstool.ui.training import TrainingView

if TYPE_CHECKING:
    from tstool.analysis.experiment import ExperimentResult

ACTION_STATUS = {"train": "training", "resume": "resuming from its checkpoint", "reuse": "finished earlier, reused"}
VERDICT_STYLE = {
    "better": "green",
    "worse": "red",
    "no clear difference": "yellow",
    "consistent with the corpus": "green",
    "above the corpus": "red",
    "below the corpus": "red",
}
COLUMNS = (
    ("generated_rate", "articles/100 words (T=1)", ".2f"),
    ("bpb", "bits per byte", ".4f"),
    ("precision_at_baseline_recall", "precision @ base recall", ".3f"),
    ("article_recall", "recall", ".3f"),
    ("ece", "ECE", ".4f"),
)


def render_experiment(console: Console, result: ExperimentResult) -> None:
    seeds = len(result.seeds)
    table = _table(
        f"{seeds} seed(s) × {result.config.train.max_steps:,} steps · {result.prompts} held-out openings at T = 1 · "
        f"their stories: {result.reference.text('.2f')} articles per 100 words",
        "arm",
        *(label for _, label, _ in COLUMNS),
    )
    for summary in result.summaries:
        cells = []
        for key, _, fmt in COLUMNS:
            estimate = summary.estimates.get(key)
            verdict = summary.verdicts.get("generated_rate_vs_reference" if key == "generated_rate" else key)
            text = Text("-" if estimate is None else estimate.text(fmt))
            if key == "generated_rate":  # the verdict rests on the story-by-story difference, not on this interval
                text.append(f"\n{summary.against_reference.text('+.2f')} vs the stories")
            if verdict is not None:
                text.append(f"\n{verdict}", style=VERDICT_STYLE.get(verdict, "dim"))
            cells.append(text)
        table.add_row(Text(summary.key.label, style="bold"), *cells)
    console.print(table)
    console.print(Text.assemble("Report ", (" · ".join(result.files.values()), "bold")))


class ExperimentView:
    """The experiment's `emit`: a TrainingView (live table) for each run it trains, status lines otherwise."""

    def __init__(self, console: Console, err: Console, live: bool, quiet: bool = False):
        self.console, self.err, self.live, self.quiet = console, err, live, quiet
        self.training: TrainingView | None = None

    def __enter__(self) -> ExperimentView:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.training:
            self.training.__exit__(None, None, None)
            self.training = None

    def _status(self, message: str | Text) -> None:
        if not self.quiet:
            self.err.print(message if isinstance(message, Text) else Text(message))

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "experiment_run":
            action = event["action"]
            self._status(
                Text.assemble(
                    (event["label"], "bold"),
                    f" (article weight {event['weight']:g}, {event['out_dir']}): {ACTION_STATUS[action]}",
                )
            )
            if action != "reuse":
                self.training = TrainingView(self.console, self.err, live=self.live, quiet=self.quiet).__enter__()
        elif kind == "experiment_run_done":
            self._close()
        elif kind == "measure":
            self._status(f"measuring {event['arm']}, seed {event['seed']}: evaluation and generation at T = 1")
        elif self.training:
            self.training(event)
