"""The experiment tstool exists for: does up-weighting article tokens in the loss help, and does a
calibrated weighting do better?

For each seed and each article weight, one run is trained (same seed: same initialisation and data
order across weights), and for a weight other than 1 also a run with the logit-adjusted loss. The arms:
- baseline: weight 1;
- raw: the weighted run as it is;
- corrected: the weighted run with the post-hoc correction (tau fitted on validation text);
- adjusted: the logit-adjusted run as it is.
Every arm is evaluated on the same validation blocks and generates at temperature 1 (ancestral sampling,
the only setting that should reproduce the corpus) from the same held-out story openings, whose rests
are the reference rate. Every measure is a mean over seeds with a 95% interval, and each arm's paired
difference from the baseline (same seed) has one too; conclusions are read off those intervals.

Rerunning the same command reuses finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tstool.analysis.calibration import Correction, correction_for, logit_bias, precision_at_recall
from tstool.analysis.evaluate import DEFAULT_MAX_BLOCKS, evaluate
from tstool.analysis.generate import generate_samples, sampling_settings
from tstool.analysis.scoring import Opening, held_out_openings
from tstool.analysis.statistics import (
    Estimate,
    StoryCounts,
    bootstrap_rate,
    bootstrap_rate_difference,
    direction,
    rate,
    t_interval,
)
from tstool.config import Config, from_dict
from tstool.data.stats import count_articles
from tstool.errors import ConfigError, InputError, Interrupted, TstoolError
from tstool.model.loading import LoadedModel, load_model
from tstool.runs import checkpoint as ckpt
from tstool.runs.run_dir import RunDir, config_differences
from tstool.training.runtime import resolve_device
from tstool.training.trainer import RunOptions, train

DEFAULT_WEIGHTS = (1.0, 5.0)
DEFAULT_SEEDS = 3
ARMS = ("raw", "corrected", "adjusted")
DEFAULT_PROMPTS = 64  # held-out openings: about 7,000 generated words per arm and seed at 150 tokens
DEFAULT_NEW_TOKENS = 150
# `direction` of an arm's generated rate minus the held-out stories' own, in the report's words
AGAINST_REFERENCE = {
    "no clear difference": "consistent with the corpus",
    "higher": "above the corpus",
    "lower": "below the corpus",
    "one seed: no interval": "one seed: no interval",
}
REPORT_MD, REPORT_JSON = "report.md", "report.json"
RunAction = Literal["train", "resume", "reuse"]
Emit = Callable[[dict[str, Any]], None]
Kind = Literal["baseline", "raw", "corrected", "adjusted"]

# Seed-level measures: (key, label, format, lower is better or None when neither)
MEASURES: tuple[tuple[str, str, str, bool | None], ...] = (
    ("bpb", "bits per byte", ".4f", True),
    ("article_precision", "article precision", ".3f", False),
    ("article_recall", "article recall", ".3f", False),
    ("precision_at_baseline_recall", "precision at the baseline's recall", ".3f", False),
    ("average_precision", "average precision", ".3f", False),
    ("ece", "calibration error (ECE)", ".4f", True),
    ("mean_predicted_mass", "mean article probability", ".4f", None),
    ("tau", "tau", ".3f", None),
)


def parse_weights(text: str) -> list[float]:
    """`1,5` -> [1.0, 5.0]: the baseline 1 first, then at least one other weight."""
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--weights {text!r} is not a list of numbers: pass comma-separated weights, e.g. 1,5")
    if len(weights) < 2 or len(set(weights)) != len(weights) or weights[0] != 1.0 or min(weights) <= 0:
        raise InputError(f"--weights {text!r}: pass the baseline 1 first, then other positive weights, e.g. 1,5")
    return weights


def parse_arms(text: str) -> list[str]:
    """`raw,corrected` -> ["raw", "corrected"]: a subset of ARMS."""
    arms = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if not arms or unknown:
        raise InputError(f"--arms {text!r}: choose from {', '.join(ARMS)}, comma-separated")
    return [arm for arm in ARMS if arm in arms]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    label: str  # its folder name under the output folder: w5-s1337, w5-adjusted-s1337
    weight: float
    adjusted: bool
    seed: int
    config: Config


def run_label(weight: float, adjusted: bool, seed: int) -> str:
    return f"w{weight:g}{'-adjusted' if adjusted else ''}-s{seed}"


def run_config(cfg: Config, weight: float, adjusted: bool, seed: int) -> Config:
    data = cfg.to_dict()
    data["train"] |= {"article_weight": weight, "logit_adjusted": adjusted, "seed": seed}
    return from_dict(data)  # validates like any config value


def plan_runs(cfg: Config, weights: Sequence[float], seeds: Sequence[int], arms: Sequence[str]) -> list[RunSpec]:
    """Every run the study needs, seed by seed: the weights, then their logit-adjusted twins."""
    runs = []
    for seed in seeds:
        for weight in weights:
            for adjusted in (False, True) if weight != 1.0 and "adjusted" in arms else (False,):
                if adjusted or weight == 1.0 or {"raw", "corrected"} & set(arms):
                    label = run_label(weight, adjusted, seed)
                    runs.append(RunSpec(label, weight, adjusted, seed, run_config(cfg, weight, adjusted, seed)))
    return runs


def run_action(run_dir: Path, cfg: Config) -> RunAction:
    """Reuse a finished run, resume an interrupted one, or train from the start; a folder holding a run
    of another config is refused: resuming it would mix two experiments."""
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
    step = int(ckpt.read_checkpoint_meta(run_dir)["step"])
    return "reuse" if step >= cfg.train.max_steps else "resume"


# ---- measuring one arm at one seed ------------------------------------------------------------------


@dataclass(frozen=True)
class ArmKey:
    weight: float
    kind: Kind

    @property
    def label(self) -> str:
        return "weight 1" if self.kind == "baseline" else f"weight {self.weight:g} {self.kind}"


@dataclass
class Measured:
    """One arm at one seed."""

    key: ArmKey
    seed: int
    run: str
    correction: Correction
    values: dict[str, float | None]
    pr_curve: list[dict[str, Any]]
    reliability: list[dict[str, Any]]
    stories: list[tuple[int, int]]  # (articles, words) of each generated continuation, prompt by prompt
    sample: str  # the first continuation, for the report


def arms_of(spec: RunSpec, arms: Sequence[str]) -> list[tuple[ArmKey, str | float]]:
    """The arms measured on a run, each with its `--correction` choice."""
    if spec.weight == 1.0:
        return [(ArmKey(1.0, "baseline"), "none")]
    if spec.adjusted:
        return [(ArmKey(spec.weight, "adjusted"), "none")]
    kinds: list[tuple[Kind, str | float]] = [("raw", "none"), ("corrected", "fitted")]
    return [(ArmKey(spec.weight, kind), choice) for kind, choice in kinds if kind in arms]


def measure_arm(
    loaded: LoadedModel,
    key: ArmKey,
    choice: str | float,
    seed: int,
    openings: Sequence[Opening],
    max_new_tokens: int,
    max_blocks: int | None,
) -> Measured:
    """Evaluate and generate (temperature 1, seeded by the study's seed) with the arm's correction."""
    correction = correction_for(loaded, choice)
    report = evaluate(loaded, loaded.config.data, "val", max_blocks, correction=correction)
    calibration = report.calibration["corrected" if correction.applied else "raw"]
    settings = sampling_settings(
        loaded.config.generate, temperature=1.0, repetition_penalty=1.0, num_samples=1, max_new_tokens=max_new_tokens
    ).model_copy(update={"top_k": None, "top_p": None})  # ancestral sampling
    samples = generate_samples(
        loaded, [o.prompt for o in openings], settings, seed, logit_bias=logit_bias(loaded, correction)
    )
    stories = [(counts.total, counts.words) for counts in (count_articles(s.continuation) for s in samples)]
    m = report.metrics
    values = {
        "bpb": m["bpb"],
        "article_precision": m["article_precision"],
        "article_recall": m["article_recall"],
        "average_precision": calibration["average_precision"],
        "ece": calibration["ece"],
        "mean_predicted_mass": calibration["mean_predicted_mass"],
        "observed_article_share": calibration["observed_article_share"],
        "tau": correction.tau,
        "generated_rate": rate(stories),
    }
    run = str(loaded.path.parent.parent.name)
    sample = samples[0].prompt + samples[0].continuation
    return Measured(
        key, seed, run, correction, values, calibration["pr_curve"], calibration["reliability"], stories, sample
    )


# ---- summarising over seeds --------------------------------------------------------------------------


@dataclass
class ArmSummary:
    """An arm over seeds: each measure with its interval, and its paired difference from the baseline."""

    key: ArmKey
    estimates: dict[str, Estimate]
    against_reference: Estimate  # generated rate minus the held-out stories' own, story by story
    differences: dict[str, Estimate] = field(default_factory=dict)  # arm minus baseline, seed by seed
    verdicts: dict[str, str] = field(default_factory=dict)
    reliability: list[dict[str, Any]] = field(default_factory=list)  # mean over seeds per bin

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.key.label,
            "weight": self.key.weight,
            "kind": self.key.kind,
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "generated_rate_minus_reference": self.against_reference.to_dict(),
            "differences_from_baseline": {k: e.to_dict() for k, e in self.differences.items()},
            "verdicts": self.verdicts,
            "reliability": self.reliability,
        }


def _mean_reliability(measured: Sequence[Measured]) -> list[dict[str, Any]]:
    rows = []
    for bins in zip(*(m.reliability for m in measured), strict=True):
        filled = [b for b in bins if b["positions"]]
        rows.append(
            {
                "bin": bins[0]["bin"],
                "positions": sum(b["positions"] for b in bins),
                "predicted": sum(b["predicted"] for b in filled) / len(filled) if filled else None,
                "observed": sum(b["observed"] for b in filled) / len(filled) if filled else None,
            }
        )
    return rows


def summarise(measured: Sequence[Measured], reference_stories: StoryCounts) -> list[ArmSummary]:
    """Every arm's estimates over seeds, its paired differences from the baseline and their verdicts.

    `reference_stories` are the (articles, words) of the held-out stories' rests, in prompt order. An arm
    is judged against them story by story, resampling stories on both sides together: the reference
    rate is itself a sample of these stories, and more seeds narrow only the model's side."""
    keys = list(dict.fromkeys(m.key for m in measured))
    by_arm = {key: sorted((m for m in measured if m.key == key), key=lambda m: m.seed) for key in keys}
    base = by_arm[keys[0]]
    base_recall = {m.seed: m.values["article_recall"] for m in base}
    for arm in by_arm.values():
        for m in arm:
            recall = base_recall[m.seed]
            m.values["precision_at_baseline_recall"] = precision_at_recall(m.pr_curve, recall) if recall else None
    summaries = []
    for key, arm in by_arm.items():
        estimates = {
            name: t_interval([m.values[name] for m in arm])  # type: ignore[misc]
            for name, *_ in MEASURES
            if all(m.values.get(name) is not None for m in arm)
        }
        stories = [m.stories for m in arm]
        estimates["generated_rate"] = bootstrap_rate(stories)
        against = bootstrap_rate_difference(stories, [reference_stories] * len(arm))
        summary = ArmSummary(key, estimates, against, reliability=_mean_reliability(arm))
        summary.verdicts["generated_rate_vs_reference"] = AGAINST_REFERENCE[direction(against)]
        if key != keys[0]:
            for name, _, _, lower_is_better in MEASURES:
                pairs = [(m.values.get(name), b.values.get(name)) for m, b in zip(arm, base, strict=True)]
                if all(a is not None and b is not None for a, b in pairs):
                    summary.differences[name] = t_interval([a - b for a, b in pairs])  # type: ignore[operator]
                    summary.verdicts[name] = direction(summary.differences[name], lower_is_better)
            paired = bootstrap_rate_difference(stories, [b.stories for b in base])
            summary.differences["generated_rate"] = paired
            summary.verdicts["generated_rate"] = direction(paired)
        summaries.append(summary)
    return summaries


# ---- the study ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentResult:
    out_dir: Path
    source: str  # the preset or config file the runs were built from
    config: Config  # the baseline's, first seed
    seeds: list[int]
    weights: list[float]
    actions: dict[str, RunAction]
    prompts: int
    max_new_tokens: int
    reference: Estimate  # the held-out stories' own article rate, resampled over stories
    summaries: list[ArmSummary]
    measured: list[Measured]
    figures: dict[str, str]

    @property
    def files(self) -> dict[str, str]:
        return {REPORT_MD: str(self.out_dir / REPORT_MD), REPORT_JSON: str(self.out_dir / REPORT_JSON), **self.figures}

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "source": self.source,
            "seeds": self.seeds,
            "weights": self.weights,
            "steps": self.config.train.max_steps,
            "actions": self.actions,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "sampling": "ancestral: temperature 1, no top-k, top-p or repetition penalty",
            "reference_per_100_words": self.reference.to_dict(),
            "arms": [s.to_dict() for s in self.summaries],
            "per_seed": [
                {"arm": m.key.label, "seed": m.seed, "run": m.run, "correction": m.correction.to_dict(), **m.values}
                for m in self.measured
            ],
            "config": self.config.to_dict(),
            "files": self.files,
        }


def require_matplotlib() -> None:
    """The report's figures need matplotlib: find out before hours of training, not after."""
    if importlib.util.find_spec("matplotlib") is None:
        raise TstoolError(
            "the experiment draws its figures with matplotlib, which is not installed: pip install matplotlib"
        )


def train_runs(specs: Sequence[RunSpec], out_dir: Path, emit: Emit) -> dict[str, RunAction]:
    """Train, resume or reuse every run; all folders are checked before the first trains."""
    actions = {spec.label: run_action(out_dir / spec.label, spec.config) for spec in specs}
    for spec in specs:
        action = actions[spec.label]
        run_dir = str(out_dir / spec.label)
        emit(
            {
                "event": "experiment_run",
                "label": spec.label,
                "weight": spec.weight,
                "out_dir": run_dir,
                "action": action,
            }
        )
        if action != "reuse":
            try:
                train(spec.config, RunOptions(out_dir=out_dir / spec.label, resume="auto"), emit)
            except Interrupted as exc:
                raise Interrupted(
                    f"interrupted while training {out_dir / spec.label}, whose checkpoint is saved: rerun the same "
                    "`tstool experiment` command to resume",
                    exc.exit_code,
                ) from None
        emit({"event": "experiment_run_done", "label": spec.label})
    return actions


def run_experiment(
    cfg: Config,
    out_dir: Path,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    seeds: int = DEFAULT_SEEDS,
    arms: Sequence[str] = ARMS,
    source: str = "the given config",
    prompts: int = DEFAULT_PROMPTS,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    max_blocks: int | None = DEFAULT_MAX_BLOCKS,
    correction: str | float = "fitted",
    emit: Emit = lambda event: None,
) -> ExperimentResult:
    """Train and measure the study (see the module docstring); write report.md, report.json and figures.

    `correction` is the corrected arm's: fitted, or a given tau. `emit` receives training events,
    {"event": "experiment_run", ...} and {"event": "experiment_run_done", ...} around each run, and
    {"event": "measure", "arm", "seed"} before each arm is measured."""
    from tstool.analysis.experiment_report import draw_figures, report_markdown
    from tstool.atomic import write_text
    from tstool.data.stats import write_json_atomic

    require_matplotlib()
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    specs = plan_runs(cfg, weights, seed_list, arms)
    actions = train_runs(specs, out_dir, emit)
    device = resolve_device(cfg.train.device)
    openings: list[Opening] = []
    measured = []
    for spec in specs:
        loaded = load_model(out_dir / spec.label, device)
        openings = openings or held_out_openings(loaded, prompts)  # the same prompts for every arm
        for key, choice in arms_of(spec, arms):
            emit({"event": "measure", "arm": key.label, "seed": spec.seed})
            chosen = correction if key.kind == "corrected" else choice
            measured.append(measure_arm(loaded, key, chosen, spec.seed, openings, max_new_tokens, max_blocks))
    rests = [(c.total, c.words) for c in (count_articles(o.rest) for o in openings)]
    reference = bootstrap_rate([rests])
    summaries = summarise(measured, rests)
    figures = draw_figures(out_dir, summaries, reference)
    result = ExperimentResult(
        out_dir=out_dir,
        source=source,
        config=specs[0].config,
        seeds=seed_list,
        weights=list(weights),
        actions=actions,
        prompts=len(openings),
        max_new_tokens=max_new_tokens,
        reference=reference,
        summaries=summaries,
        measured=measured,
        figures=figures,
    )
    write_json_atomic(result.to_dict(), out_dir / REPORT_JSON)
    write_text(out_dir / REPORT_MD, report_markdown(result))
    return result
