"""The experiment's report: report.md, whose conclusions are read off the intervals, and its figures
(dose-response of the generated article rate and bits per byte against the weight, a reliability
diagram of article probability, and the training curves)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tstool.analysis.plot import plot_runs
from tstool.analysis.statistics import Estimate
from tstool.atomic import replacing

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tstool.analysis.experiment import ArmSummary, ExperimentResult

DOSE_PNG, RELIABILITY_PNG, CURVES_PNG = "dose_response.png", "reliability.png", "curves.png"
KIND_STYLE = {"baseline": ("black", "o"), "raw": ("C3", "s"), "corrected": ("C0", "^"), "adjusted": ("C2", "D")}
# Each arm kind's points are drawn a little apart along the weight axis, so equal values stay visible.
KIND_OFFSET = {"raw": -0.06, "corrected": 0.0, "adjusted": 0.06}


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return str(path)


def _errorbar(ax: Axes, summaries: Sequence[ArmSummary], kind: str, measure: str) -> None:
    """One arm kind's measure against the weight, the baseline as its weight-1 point."""
    points = [s for s in summaries if s.key.kind in (kind, "baseline") and measure in s.estimates]
    if len(points) < 2:  # the baseline alone: this kind was not run
        return
    color, marker = KIND_STYLE[kind]
    x = [s.key.weight + KIND_OFFSET[kind] for s in points]
    y = [s.estimates[measure].mean for s in points]
    low = [e.mean - e.low if (e := s.estimates[measure]).low is not None else 0.0 for s in points]
    high = [e.high - e.mean if (e := s.estimates[measure]).high is not None else 0.0 for s in points]
    ax.errorbar(x, y, yerr=[low, high], color=color, marker=marker, capsize=4, label=kind)


def draw_dose_response(path: Path, summaries: Sequence[ArmSummary], reference: Estimate) -> str:
    fig = _figure((11, 4.2))
    rate_ax, bpb_ax = fig.subplots(1, 2)
    for kind in ("raw", "corrected", "adjusted"):
        _errorbar(rate_ax, summaries, kind, "generated_rate")
        _errorbar(bpb_ax, summaries, kind, "bpb")
    rate_ax.axhline(reference.mean, color="grey", linestyle="--", label="held-out stories")
    if reference.low is not None and reference.high is not None:
        rate_ax.axhspan(reference.low, reference.high, color="grey", alpha=0.15)
    rate_ax.set(title="Generated articles per 100 words (T = 1)", xlabel="article weight", ylabel="per 100 words")
    bpb_ax.set(title="Validation bits per byte", xlabel="article weight", ylabel="bits per byte")
    for ax in (rate_ax, bpb_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def draw_reliability(path: Path, summaries: Sequence[ArmSummary]) -> str:
    fig = _figure((5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    for summary in summaries:
        color, marker = KIND_STYLE[summary.key.kind]
        rows = [r for r in summary.reliability if r["predicted"] is not None]
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], color=color, marker=marker,
                label=summary.key.label)  # fmt: skip
    ax.set(title="Article probability: predicted vs observed", xlabel="predicted article probability (bin mean)",
           ylabel="observed share of article targets", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def draw_figures(out_dir: Path, summaries: Sequence[ArmSummary], reference: Estimate) -> dict[str, str]:
    """Every figure of the report, by file name."""
    runs = sorted(p for p in out_dir.iterdir() if (p / "metrics.jsonl").is_file())
    plot_runs(runs, out_dir / CURVES_PNG)
    return {
        DOSE_PNG: draw_dose_response(out_dir / DOSE_PNG, summaries, reference),
        RELIABILITY_PNG: draw_reliability(out_dir / RELIABILITY_PNG, summaries),
        CURVES_PNG: str(out_dir / CURVES_PNG),
    }


# ---- report.md -----------------------------------------------------------------------------------------

ROWS = (
    ("generated_rate", "generated articles / 100 words (T = 1)", ".2f"),
    ("bpb", "bits per byte", ".4f"),
    ("article_precision", "article precision", ".3f"),
    ("article_recall", "article recall", ".3f"),
    ("precision_at_baseline_recall", "precision at the baseline's recall", ".3f"),
    ("average_precision", "average precision", ".3f"),
    ("ece", "calibration error (ECE)", ".4f"),
    ("mean_predicted_mass", "mean article probability", ".4f"),
    ("tau", "tau", ".3f"),
)


def _cell(summary: ArmSummary, key: str, fmt: str) -> str:
    estimate = summary.estimates.get(key)
    return "-" if estimate is None else estimate.text(fmt)


def _signed(estimate: Estimate, fmt: str) -> str:
    def signed(value: float) -> str:
        return f"{value:+{fmt}}"

    if estimate.low is None or estimate.high is None:
        return signed(estimate.mean)
    return f"{signed(estimate.mean)} ({signed(estimate.low)} to {signed(estimate.high)})"


def conclusions(result: ExperimentResult) -> list[str]:
    """Sentences read off the intervals only."""
    lines = []
    for summary in result.summaries:
        rate = summary.estimates["generated_rate"]
        lines.append(
            f"{summary.key.label}: writes {rate.text('.2f')} articles per 100 words at T = 1 against "
            f"{result.reference.mean:.2f} in the held-out stories, a difference of "
            f"{_signed(summary.against_reference, '.2f')} story by story: "
            f"{summary.verdicts['generated_rate_vs_reference']}."
        )
        if summary.differences:
            parts = []
            for key, label, fmt in ROWS:
                if key in summary.differences and key != "tau":
                    verdict = summary.verdicts[key]
                    parts.append(f"{label} {verdict} ({_signed(summary.differences[key], fmt)})")
            lines.append(f"{summary.key.label} against weight 1, seed by seed: " + "; ".join(parts) + ".")
    return lines


def report_markdown(result: ExperimentResult) -> str:
    cfg = result.config
    seeds = ", ".join(str(s) for s in result.seeds)
    lines = [
        "# Does up-weighting article tokens in the loss help?",
        "",
        f"Article weights {', '.join(f'{w:g}' for w in result.weights)}, trained from `{result.source}` for "
        f"{cfg.train.max_steps:,} steps each with seeds {seeds} (same initialisation and data order for every arm "
        f"of a seed). Arms: weight 1; and for each other weight: raw, corrected (post-hoc: article logits lowered "
        f"by tau * log w, tau fitted on validation text) and adjusted (trained with the logit-adjusted loss).",
        "",
        f"Generation: ancestral sampling (temperature 1, no top-k, top-p or repetition penalty), "
        f"{result.prompts} prompts that are openings of held-out validation stories, {result.max_new_tokens} new "
        f"tokens each. The reference is how those same stories go on: {result.reference.text('.2f')} articles per "
        f"100 words.",
        "",
        "Every value: the mean over seeds with its 95% interval (seed-level measures: Student's t over seeds; "
        "generated rates: bootstrap over seeds and prompts, one draw of prompts for every seed, since every seed "
        "continues the same prompts). An arm's rate is judged against the reference story by story (each "
        "prompt's continuation against the rest of its own story, the same prompts drawn on both sides), so the "
        "reference's own sampling error counts.",
        "",
        "## Results",
        "",
        "| arm | " + " | ".join(label for _, label, _ in ROWS) + " |",
        "|---|" + "---:|" * len(ROWS),
    ]
    for summary in result.summaries:
        lines.append(f"| {summary.key.label} | " + " | ".join(_cell(summary, k, f) for k, _, f in ROWS) + " |")
    lines += [
        "",
        "## Differences from weight 1 (paired by seed)",
        "",
        "| arm | " + " | ".join(label for key, label, _ in ROWS if key != "tau") + " |",
        "|---|" + "---:|" * (len(ROWS) - 1),
    ]
    for summary in result.summaries[1:]:
        cells = [
            f"{_signed(summary.differences[key], fmt)}: {summary.verdicts[key]}" if key in summary.differences else "-"
            for key, _, fmt in ROWS
            if key != "tau"
        ]
        lines.append(f"| {summary.key.label} | " + " | ".join(cells) + " |")
    lines += ["", "## Conclusions", "", *(f"- {line}" for line in conclusions(result))]
    lines += [
        "",
        "A difference whose interval covers zero is reported as no clear difference. With few seeds the intervals "
        "are wide: read a clear difference as one that survived the seeds tried, not as its exact size.",
        "",
        "## Figures",
        "",
        f"![Dose-response]({DOSE_PNG})",
        "",
        f"![Reliability of article probability]({RELIABILITY_PNG})",
        "",
        f"![Training curves]({CURVES_PNG})",
        "",
        "## A sample continuation per arm (first seed, first prompt)",
    ]
    first_seed = result.seeds[0]
    for m in result.measured:
        if m.seed == first_seed:
            lines += ["", f"{m.key.label} ({m.correction.describe()}):", "", "```text", m.sample, "```"]
    return "\n".join(lines) + "\n"
