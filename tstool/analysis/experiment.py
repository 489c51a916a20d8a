"""The experiment tstool exists for: does up-weighting article tokens in the loss help?

The same config is trained once per article weight (same seed, so the same initialisation and data
order, and the same step budget), one after another into OUT/w1, OUT/w5, ...; every run is then
measured by `tstool.analysis.compare` and the report's conclusions are computed from those numbers, comparing
each weight with the first (the baseline). Rerunning the same command reuses finished runs and
resumes interrupted ones from their latest checkpoint (`--resume auto`).

OUT/report.md and OUT/report.json hold the same numbers; OUT/curves.png is `tstool plot` of the runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tstool.analysis.compare import DEFAULT_MAX_BLOCKS, ROWS, Comparison, Emit, RunResult, compare_runs
from tstool.analysis.plot import plot_runs
from tstool.analysis.scoring import MIN_WORDS
from tstool.atomic import write_text
from tstool.config import Config, from_dict
from tstool.data.stats import write_json_atomic
from tstool.errors import ConfigError, InputError, Interrupted, TstoolError
from tstool.runs import checkpoint as ckpt
from tstool.runs.run_dir import RunDir, config_differences
from tstool.training.runtime import resolve_device
from tstool.training.trainer import RunOptions, train

DEFAULT_WEIGHTS = (1.0, 5.0)
REPORT_MD, REPORT_JSON, CURVES_PNG = "report.md", "report.json", "curves.png"
RunAction = Literal["train", "resume", "reuse"]
MINUS = "\u2212"
ROWS_BY_KEY = {row.key: row for row in ROWS}


def parse_weights(text: str) -> list[float]:
    """`1,5` -> [1.0, 5.0]: at least two different weights, the first the baseline."""
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--weights {text!r} is not a list of numbers: pass comma-separated weights, e.g. 1,5")
    if len(weights) < 2 or len(set(weights)) != len(weights):
        raise InputError(f"--weights {text!r} needs two or more different weights, the baseline first: e.g. 1,5")
    return weights


def run_label(weight: float) -> str:
    """The run folder's name: w1, w5, w2.5."""
    return f"w{weight:g}"


def weight_config(cfg: Config, weight: float) -> Config:
    data = cfg.to_dict()
    data["train"]["article_weight"] = weight
    return from_dict(data)  # validates the weight like any config value


def run_action(run_dir: Path, cfg: Config) -> RunAction:
    """Reuse a finished run, resume an interrupted one, or train from the start.

    A folder holding a run of another config is refused: resuming it would mix two experiments.
    """
    run = RunDir(run_dir)
    saved = run.saved_config()
    if saved is not None:
        differences = config_differences(saved, cfg.to_dict())
        if differences:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({'; '.join(differences[:3])}): "
                "repeat the options it was trained with, or pass another --out-dir"
            )
    if not run.has_checkpoint():
        return "train"
    step = int(ckpt.read_meta(ckpt.resolve_checkpoint(run_dir))["step"])
    return "reuse" if step >= cfg.train.max_steps else "resume"


# ---- conclusions computed from the numbers ----------------------------------------------------------


def _signed(value: float, fmt: str) -> str:
    return f"{MINUS if value < 0 else '+'}{format(abs(value), fmt)}"


def change(old: float | None, new: float | None, fmt: str, unit: str = "") -> str:
    """`3.210 → 3.250 nats (+0.040, +1.2%)`; a share (a `%` format) changes by percentage points."""
    if old is None or new is None:
        return f"{'-' if old is None else format(old, fmt)} → {'-' if new is None else format(new, fmt)}{unit}"
    delta = new - old
    if fmt.endswith("%"):
        detail = f"{_signed(100 * delta, fmt[:-1] + 'f')} points"  # as many decimals as the shares show
    else:
        detail = _signed(delta, fmt) + (f", {_signed(delta / abs(old), '.1%')}" if old else "")
    return f"{format(old, fmt)} → {format(new, fmt)}{unit} ({detail})"


def _row_change(key: str, base: dict[str, Any], run: dict[str, Any], unit: str = "") -> str:
    """`change` of one comparison row's values, in the row's format."""
    return change(base[key], run[key], ROWS_BY_KEY[key].fmt, unit)


def _direction(old: float | None, new: float | None, lower_is_better: bool) -> str:
    if old is None or new is None:
        return "not comparable"
    if old == new:
        return "unchanged"
    return "better" if (new < old) == lower_is_better else "worse"


def _tally(directions: dict[str, str]) -> str:
    """`better on all 4 measures`, or `better on 2 of 4 measures (worse: recall; unchanged: mass)`."""
    n = len(directions)
    groups = {
        d: [k for k, v in directions.items() if v == d] for d in ("better", "worse", "unchanged", "not comparable")
    }
    for direction, keys in groups.items():
        if len(keys) == n:
            return f"{direction} on all {n} measures"
    detail = "; ".join(f"{d}: {', '.join(keys)}" for d, keys in groups.items() if keys and d != "better")
    return f"better on {len(groups['better'])} of {n} measures ({detail})"


@dataclass(frozen=True)
class Finding:
    question: str
    answer: str  # one line, computed
    evidence: tuple[str, ...]  # sentences with the numbers behind the answer

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "evidence": list(self.evidence)}


def generation_finding(base: RunResult, run: RunResult) -> Finding:
    b, r = base.score, run.score
    off_b, off_r = abs(b.per_100_words - b.reference.per_100_words), abs(r.per_100_words - r.reference.per_100_words)
    (bl, bh), (rl, rh) = b.interval, r.interval
    overlap = bl <= rh and rl <= bh
    measures = {
        "article rate (distance to the corpus rate)": _direction(off_b, off_r, lower_is_better=True),
        "context divergence": _direction(b.contexts.value, r.contexts.value, lower_is_better=True),
    }
    evidence = (
        f"Weight {run.article_weight:g} changes the generated article rate from {b.per_100_words:.2f} to "
        f"{r.per_100_words:.2f} per 100 words (corpus {r.reference.per_100_words:.2f}; off by {off_b:.2f} → "
        f"{off_r:.2f}). The 95% intervals, {bl:.1f}–{bh:.1f} and {rl:.1f}–{rh:.1f}, "
        + ("overlap: the difference is within sampling noise." if overlap else "do not overlap."),
        f"Context divergence changes {change(b.contexts.value, r.contexts.value, '.3f')} over "
        f"{b.contexts.occurrences} and {r.contexts.occurrences} context occurrences; lower is closer to the corpus, "
        f"and text that followed the corpus would score about {r.contexts.expected:.3f} here.",
        f"Verdict: {b.verdict} → {r.verdict}.",
    )
    words = min(b.counts.words, r.counts.words)
    if words < MIN_WORDS:
        answer = (
            f"too little generated text to tell ({words} words in the shorter run, {MIN_WORDS} needed): "
            "raise --samples or --max-new-tokens"
        )
    else:
        answer = _tally(measures) + ("; the rate difference is within sampling noise" if overlap else "")
    return Finding("Does it improve article use in generations?", answer, evidence)


def slot_finding(base: RunResult, run: RunResult) -> Finding:
    b, r = base.values(), run.values()
    measures = {
        "article loss": _direction(b["article_loss"], r["article_loss"], lower_is_better=True),
        "article recall": _direction(b["article_recall"], r["article_recall"], lower_is_better=False),
        "article precision": _direction(b["article_precision"], r["article_precision"], lower_is_better=False),
        "slot article mass": _direction(b["slot_article_mass"], r["slot_article_mass"], lower_is_better=False),
    }
    evidence = (
        f"At validation article targets: article loss {_row_change('article_loss', b, r, ' nats')}; "
        f"recall {_row_change('article_recall', b, r)}; precision {_row_change('article_precision', b, r)}.",
        f"Slot probes: mean article mass over {len(run.report.slots)} contexts that take an article "
        f"{_row_change('slot_article_mass', b, r)}; {ROWS_BY_KEY['slot_p_a'].label} {_row_change('slot_p_a', b, r)}.",
    )
    return Finding("Does it improve predictions at article slots?", _tally(measures), evidence)


def cost_finding(base: RunResult, run: RunResult) -> Finding:
    b, r = base.values(), run.values()
    evidence = (
        f"Validation unweighted loss {_row_change('loss_unweighted', b, r, ' nats')}; "
        f"bits per byte {_row_change('bpb', b, r)}.",
        "Loss on non-article tokens "
        f"{change(base.report.metrics['other_loss'], run.report.metrics['other_loss'], '.3f', ' nats')}.",
    )
    delta = r["loss_unweighted"] - b["loss_unweighted"]
    answer = f"validation unweighted loss {_signed(delta, '.3f')} nats ({_signed(delta / b['loss_unweighted'], '.1%')})"
    return Finding("What does it cost in unweighted loss?", answer, evidence)


def findings(base: RunResult, run: RunResult) -> list[Finding]:
    return [generation_finding(base, run), slot_finding(base, run), cost_finding(base, run)]


# ---- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentResult:
    out_dir: Path
    source: str  # the preset or config file the runs were built from
    config: Config  # the baseline's
    actions: dict[str, RunAction]
    comparison: Comparison
    findings: dict[str, list[Finding]]  # per non-baseline run label

    @property
    def files(self) -> dict[str, str]:
        return {name: str(self.out_dir / name) for name in (REPORT_MD, REPORT_JSON, CURVES_PNG)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "source": self.source,
            "baseline": self.comparison.runs[0].label,
            "actions": self.actions,
            "findings": {label: [f.to_dict() for f in found] for label, found in self.findings.items()},
            "comparison": self.comparison.to_dict(),
            "config": self.config.to_dict(),
            "files": self.files,
        }


def require_matplotlib() -> None:
    """The report's curves need matplotlib: find out before hours of training, not after."""
    if importlib.util.find_spec("matplotlib") is None:
        raise TstoolError(
            "the experiment draws curves.png with matplotlib, which is not installed: pip install 'tstool[plot]'"
        )


def run_experiment(
    cfg: Config,
    out_dir: Path,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    source: str = "the given config",
    samples: int | None = None,
    max_new_tokens: int | None = None,
    max_blocks: int | None = DEFAULT_MAX_BLOCKS,
    emit: Emit = lambda event: None,
) -> ExperimentResult:
    """Train `cfg` once per weight, compare the runs, write report.md, report.json and curves.png.

    `emit` receives training events, {"event": "experiment_run", "label", "weight", "out_dir", "action"}
    before and {"event": "experiment_run_done", "label"} after each run, and `compare_runs`' events.
    Generations are seeded with the training seed.
    """
    require_matplotlib()
    runs = [(run_label(w), out_dir / run_label(w), weight_config(cfg, w)) for w in weights]
    actions = {label: run_action(run_dir, run_cfg) for label, run_dir, run_cfg in runs}  # all checked first
    for label, run_dir, run_cfg in runs:
        weight, action = run_cfg.train.article_weight, actions[label]
        emit({"event": "experiment_run", "label": label, "weight": weight, "out_dir": str(run_dir), "action": action})
        if action != "reuse":
            try:
                train(run_cfg, RunOptions(out_dir=run_dir, resume="auto"), emit)
            except Interrupted as exc:
                raise Interrupted(
                    f"interrupted while training {run_dir}, whose checkpoint is saved: rerun the same "
                    "`tstool experiment` command to resume",
                    exc.exit_code,
                ) from None
        emit({"event": "experiment_run_done", "label": label})

    dirs = [run_dir for _, run_dir, _ in runs]
    comparison = compare_runs(
        dirs, samples, max_new_tokens, cfg.train.seed, max_blocks, resolve_device(cfg.train.device), emit
    )
    plot_runs(dirs, out_dir / CURVES_PNG, [label for label, _, _ in runs])
    base = comparison.runs[0]
    result = ExperimentResult(
        out_dir=out_dir,
        source=source,
        config=runs[0][2],
        actions=actions,
        comparison=comparison,
        findings={run.label: findings(base, run) for run in comparison.runs[1:]},
    )
    write_json_atomic(result.to_dict(), out_dir / REPORT_JSON)
    write_text(out_dir / REPORT_MD, report_markdown(result))
    return result


# ---- report.md --------------------------------------------------------------------------------------

ACTION_TEXT = {"train": "trained", "resume": "resumed from its checkpoint", "reuse": "reused (finished earlier)"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(comparison: Comparison) -> list[str]:
    """A Markdown table, one row per run, the best value of each column in bold."""
    best = {row.key: comparison.best(row) for row in ROWS}
    lines = [
        "| run | " + " | ".join(_cell(row.label) for row in ROWS) + " |",
        "|---|" + "---:|" * len(ROWS),
    ]
    for run in comparison.runs:
        values = run.values()
        cells = [
            f"**{row.format(values[row.key])}**" if run.label in best[row.key] else row.format(values[row.key])
            for row in ROWS
        ]
        lines.append(f"| {run.label} | " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def report_markdown(result: ExperimentResult) -> str:
    c = result.comparison
    base, data, settings = c.runs[0], c.runs[0].report.data, c.settings
    values = base.values()
    lines = [
        "# Does up-weighting article tokens in the loss help?",
        "",
        f"Article weights {', '.join(f'{r.article_weight:g}' for r in c.runs)} (baseline {base.article_weight:g}), "
        f"each trained from `{result.source}` with seed {result.config.train.seed} (same initialisation and data "
        f"order) for {values['step']:,} steps, {values['tokens_trained']:,} tokens. All runs are evaluated on the "
        f"same {data['blocks']:,} validation blocks of {data['seq_len']} tokens ({data['source']}) and generate "
        f"from the same {len(c.prompts)} prompts × {settings.num_samples} samples, up to {settings.max_new_tokens} "
        f"new tokens at temperature {settings.temperature:g}, seed {c.seed}.",
        "",
        "Runs: " + "; ".join(f"{label} {ACTION_TEXT[action]}" for label, action in result.actions.items()) + ".",
        "",
        "## Results",
        "",
        *results_table(c),
        "",
        "Bold: best per column (generated articles: closest to the corpus rate). Precision and recall: of "
        "top-1 article predictions / of article targets, whether an article belongs there. Slot article mass: "
        "total probability of all article tokens after contexts the corpus follows with an article.",
        "",
        "## Findings",
    ]
    for label, found in result.findings.items():
        run = next(r for r in c.runs if r.label == label)
        lines += ["", f"### Weight {run.article_weight:g} against weight {base.article_weight:g}", ""]
        for finding in found:
            lines.append(f"- **{finding.question}** {finding.answer[0].upper()}{finding.answer[1:]}.")
            lines += [f"  - {sentence}" for sentence in finding.evidence]
    if c.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in c.notes)]
    lines += ["", "## Curves", "", f"![Training and validation curves]({CURVES_PNG})", "", "## Sample continuations"]
    for run in c.runs:
        sample = run.samples[0]
        lines += [
            "",
            f"{run.label}, prompt {sample.prompt!r}:",
            "",
            "```text",
            sample.prompt + sample.continuation,
            "```",
        ]
    return "\n".join(lines) + "\n"
