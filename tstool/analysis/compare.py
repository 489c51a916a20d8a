"""Side-by-side comparison of trained runs, measured so that differences come from the runs.

A run is a tstool run folder or a transformers model (a folder or hub id, see `is_transformers`); a
transformers model has no training curves, and is judged against the corpus the runs are evaluated on.
Every run is evaluated on the same validation blocks (the first run's data section, tokenised with
each run's own tokenizer), generates from the same prompts with the same sampling settings and seed,
and is scored against the corpus statistics of its training data. Runs with different tokenizers
compare on bits per byte: per-token losses are then not marked best (see `Row.per_token`). A run
whose corpus statistics cannot be had (a training corpus without articles) can still be compared:
its corpus-relative rows are "n/a" (see `compare_runs`' `corpus_optional`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tstool.analysis.calibration import Correction, correction_for, logit_bias
from tstool.analysis.evaluate import DEFAULT_MAX_BLOCKS, EvalReport, evaluate
from tstool.analysis.generate import DEFAULT_PROMPTS, Sample, generate_samples, sampling_settings
from tstool.analysis.plot import Record, RunCurves, _unique_labels, load_curves
from tstool.analysis.probes import DEFAULT_CONTEXTS
from tstool.analysis.scoring import (
    DEFINITIONS,
    MIN_WORDS,
    ArticleScore,
    CorpusReference,
    reference_for_run,
    score_samples,
)
from tstool.config import Config, DataConfig, GenerateConfig, from_dict
from tstool.data.stats import ArticleCounts, count_articles
from tstool.errors import InputError
from tstool.model.loading import LoadedModel, is_transformers, load_any_model
from tstool.runs import checkpoint as ckpt

DEFAULT_SAMPLES = 8  # per prompt: 5 prompts x 8 x 200 tokens gives a few thousand words per run
DEFAULT_SEED = 0
SLOT_CONTEXT = DEFAULT_CONTEXTS[0]  # "Once upon a time there was": the corpus puts an article next ~98% of the time
SLOT_ARTICLE = " a"
EVAL_ROWS = ("loss_unweighted", "ppl", "bpb", "article_loss", "article_precision", "article_recall")
# Data settings that do not change which text is evaluated.
DATA_BOOKKEEPING = ("tokenizer", "cache_dir")
NOT_AVAILABLE = "n/a"  # a corpus-relative cell of a run without corpus statistics

Emit = Callable[[dict[str, Any]], None]
Better = Literal["min", "max", "corpus"]


@dataclass(frozen=True)
class Row:
    """One measurement of the comparison table: where its value lives and which value is best."""

    key: str
    label: str
    fmt: str  # format spec of the value
    better: Better | None = None  # "corpus": closest to the corpus rate
    per_token: bool = False  # nats per token: only comparable between runs with the same tokenizer
    needs_corpus: bool = False  # measured against the run's corpus statistics

    def format(self, value: Any, available: bool = True) -> str:
        """The cell: NOT_AVAILABLE when the run cannot have this row, "-" when the measurement is missing."""
        if not available:
            return NOT_AVAILABLE
        return "-" if value is None else format(value, self.fmt)


ROWS: tuple[Row, ...] = (
    Row("article_weight", "article weight", "g"),
    Row("correction", "post-hoc correction", "s"),
    Row("loss_unweighted", "val loss, unweighted (nats/token)", ".3f", "min", per_token=True),
    Row("ppl", "val perplexity", ".2f", "min", per_token=True),
    Row("bpb", "val bits per byte", ".3f", "min"),
    Row("article_loss", "val article loss (nats/token)", ".3f", "min", per_token=True),
    Row("article_precision", "article precision", ".1%", "max"),
    Row("article_recall", "article recall", ".1%", "max"),
    Row("gen_per_100_words", "generated articles / 100 words", ".2f", "corpus"),
    Row("corpus_per_100_words", "corpus articles / 100 words", ".2f", needs_corpus=True),
    Row("gen_verdict", "generation verdict", "s", needs_corpus=True),
    Row("context_divergence", "context divergence", ".3f", "min", needs_corpus=True),
    Row("slot_article_mass", f"slot article mass (mean of {len(DEFAULT_CONTEXTS)} contexts)", ".2%", "max"),
    Row("slot_p_a", f"p({SLOT_ARTICLE!r}) after {SLOT_CONTEXT!r}", ".2%", "max"),
    Row("step", "steps", ",d"),
    Row("tokens_trained", "tokens trained", ",d"),
    Row("wall_time_s", "training wall time (s)", ",.1f"),
)


def training_time(records: Sequence[Record]) -> float | None:
    """Seconds of training behind metrics.jsonl train records.

    `elapsed_s` counts from the start of each invocation, so it restarts when a run resumes. A record
    is a restart when its elapsed_s grew by less than half its own logging window (tokens since the
    previous record / tokens_per_s) since the previous record; the invocations' last values add up.
    """
    total, previous, previous_tokens = 0.0, None, 0
    for r in records:
        elapsed, speed = r.get("elapsed_s"), r.get("tokens_per_s")
        if elapsed is None:
            continue
        window = (r.get("tokens", 0) - previous_tokens) / speed if speed else 0.0
        if previous is not None and elapsed - previous < window / 2:
            total += previous
        previous, previous_tokens = elapsed, r.get("tokens", 0)
    return None if previous is None else total + previous


@dataclass(frozen=True)
class RunResult:
    """One run measured: teacher-forced evaluation, seeded generations and their article score."""

    label: str
    path: Path
    article_weight: float
    tokenizer_sha256: str
    report: EvalReport
    samples: list[Sample]
    generated: ArticleCounts  # articles in the generations, counted without the corpus
    score: ArticleScore | None  # None: no corpus statistics, see corpus_error
    curves: RunCurves
    correction: Correction
    corpus_error: str | None = None  # why the run has no corpus statistics
    origin: str = "tstool"  # or "transformers": a model tstool did not train, with no curves or steps

    def available(self, row: Row) -> bool:
        """False for a row measured against corpus statistics that this run does not have."""
        return self.score is not None or not row.needs_corpus

    @property
    def slot_article_mass(self) -> float | None:
        masses = [s.article_mass for s in self.report.slots]
        return math.fsum(masses) / len(masses) if masses else None

    @property
    def slot_p_a(self) -> float | None:
        """p(" a") after SLOT_CONTEXT; None when the probe or the single-token form is missing."""
        for slot in self.report.slots:
            if slot.context == SLOT_CONTEXT:
                return next((a.prob for a in slot.articles if a.text == SLOT_ARTICLE), None)
        return None

    def values(self) -> dict[str, Any]:
        """The value of every row in ROWS."""
        m, last_train, score = self.report.metrics, (self.curves.train or [{}])[-1], self.score
        return {
            "article_weight": self.article_weight,
            "correction": self.correction.describe(),
            **{key: m[key] for key in EVAL_ROWS},
            "gen_per_100_words": self.generated.per_100_words(),
            "corpus_per_100_words": score.reference.per_100_words if score else None,
            "gen_verdict": score.verdict if score else None,
            "context_divergence": score.contexts.value if score else None,
            "slot_article_mass": self.slot_article_mass,
            "slot_p_a": self.slot_p_a,
            "step": self.report.step,
            "tokens_trained": last_train.get("tokens"),
            "wall_time_s": training_time(self.curves.train),
        }

    def generation(self) -> dict[str, Any]:
        """The article score of the generations; without corpus statistics, the counts and why."""
        if self.score is None:
            counts = self.generated
            return {
                "words": counts.words,
                "count": counts.total,
                "per_100_words": counts.per_100_words(),
                "corpus_error": self.corpus_error,
            }
        score = self.score.to_dict()
        del score["definitions"]  # once per comparison, not per run
        return score

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": str(self.path),
            "origin": self.origin,
            "checkpoint": self.report.checkpoint,
            "tokenizer_sha256": self.tokenizer_sha256,
            "values": self.values(),
            "eval": self.report.to_dict(),
            "generation": self.generation(),
            "samples": [{"prompt": s.prompt, "continuation": s.continuation} for s in self.samples],
            "curves": {"train_loss": self.loss_curve("train"), "val_loss": self.loss_curve("val")},
        }

    def loss_curve(self, split: str) -> dict[str, list]:
        """The unweighted loss of `split` records from metrics.jsonl, step by step."""
        steps, values = self.curves.series("loss_unweighted", split)
        return {"steps": steps, "values": values}


@dataclass(frozen=True)
class Comparison:
    runs: list[RunResult]
    settings: GenerateConfig
    seed: int
    prompts: tuple[str, ...]
    max_blocks: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def same_tokenizer(self) -> bool:
        return len({r.tokenizer_sha256 for r in self.runs}) == 1

    @property
    def shared_blocks(self) -> bool:
        """The same tokens in the same blocks: same text, tokenizer and block length."""
        return self.same_tokenizer and all(r.report.data == self.runs[0].report.data for r in self.runs)

    def best(self, row: Row) -> list[str]:
        """Labels of the runs with the best value of `row` (ties share); none when nothing is compared."""
        if row.better is None or (row.per_token and not self.same_tokenizer):
            return []
        scored = []
        for run in self.runs:
            values = run.values()
            value = values[row.key]
            if value is None:
                continue
            if row.better == "corpus":
                if values["corpus_per_100_words"] is None:
                    continue  # no corpus rate to be close to
                value = abs(value - values["corpus_per_100_words"])
            scored.append((-value if row.better == "max" else value, run.label))
        if len(scored) < 2:
            return []
        top = min(score for score, _ in scored)
        return [label for score, label in scored if math.isclose(score, top, rel_tol=1e-12, abs_tol=1e-12)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [r.to_dict() for r in self.runs],
            "rows": [
                {"key": row.key, "label": row.label, "better": row.better, "best": self.best(row)} for row in ROWS
            ],
            "same_tokenizer": self.same_tokenizer,
            "shared_blocks": self.shared_blocks,
            "eval": {"max_blocks": self.max_blocks, "data": self.runs[0].report.data},
            "generation": {
                "seed": self.seed,
                "prompts": list(self.prompts),
                "settings": self.settings.model_dump(),
                "definitions": DEFINITIONS,
            },
            "notes": self.notes,
        }


def _notes(runs: Sequence[RunResult], data_differs: bool) -> list[str]:
    """What a reader must know to read the table fairly, from the measurements themselves."""
    notes = []
    first = runs[0].label
    if len({r.tokenizer_sha256 for r in runs}) > 1:
        notes.append(
            "the runs use different tokenizers: loss, perplexity and article loss are per token of different "
            "vocabularies and are not marked best; compare bits per byte"
        )
    if data_differs:
        notes.append(f"the runs were trained on different data; all are evaluated on {first}'s validation text")
    if any(r.report.data["seq_len"] != runs[0].report.data["seq_len"] for r in runs):
        notes.append("the runs have different context lengths, so their evaluation blocks differ")
    short = [r.label for r in runs if r.generated.words < MIN_WORDS]
    if short:
        notes.append(
            f"{', '.join(short)} generated fewer than {MIN_WORDS} words: the article rate is too noisy for a verdict; "
            "raise --samples or --max-new-tokens"
        )
    others = [r.label for r in runs if r.origin != "tstool"]
    if others:
        notes.append(
            f"{', '.join(others)}: not trained by tstool, so no training curves or steps; its generations are "
            f"judged against the corpus the runs are evaluated on ({runs[0].report.data['source']})"
        )
    for r in runs:
        if r.score is None:
            notes.append(f"{r.label} has no corpus statistics, so its corpus-relative rows are n/a: {r.corpus_error}")
    return notes


@dataclass(frozen=True)
class RunSource:
    """A run checked before any slow work: its curves and config (its latest checkpoint's), or for a
    transformers model no curves and the config it is analysed with (`hf_models.analysis_config`)."""

    path: Path
    curves: RunCurves
    config: Config
    transformers: bool = False


def check_run(path: Path, label: str) -> RunSource:
    """A run folder with metrics and a checkpoint, or a transformers model that passes `check_model`."""
    if is_transformers(path):
        from tstool.model.hf_models import check_model

        return RunSource(path, RunCurves(label, path, [], []), check_model(str(path)).config, transformers=True)
    return RunSource(path, load_curves(path, label), from_dict(ckpt.read_meta(ckpt.resolve_checkpoint(path))["config"]))


def check_runs(paths: Sequence[Path]) -> list[RunSource]:
    """Every run checked (`check_run`), or an InputError/CheckpointError naming the fix."""
    if not paths:
        raise InputError(
            "no runs to compare: pass run folders written by `tstool train --out-dir` or transformers models"
        )
    return [check_run(path, label) for path, label in zip(paths, _unique_labels(paths, None), strict=True)]


def generated_counts(samples: Sequence[Sample], words: Sequence[str]) -> ArticleCounts:
    """Articles in the continuations (never their prompts); needs no corpus statistics."""
    total = ArticleCounts()
    for s in samples:
        total += count_articles(s.prompt + s.continuation, words, len(s.prompt))
    return total


def corpus_reference(loaded: LoadedModel, optional: bool) -> tuple[CorpusReference | None, str | None]:
    """The run's corpus statistics, or (None, why) when `optional` and they cannot be had (no articles)."""
    try:
        return reference_for_run(loaded)[0], None
    except InputError as exc:
        if not optional:
            raise
        return None, str(exc)


def measure_run(
    source: RunSource,
    data: DataConfig,
    settings: GenerateConfig,
    seed: int,
    max_blocks: int | None,
    device: str | torch.device,
    emit: Emit,
    corpus_optional: bool = False,
    correction: str | float = "fitted",
) -> RunResult:
    """Evaluate one run on `data`'s validation split, generate with `settings` and `seed`, score; a
    weighted run with `correction` (see `correction_for`), a weight-1 run never corrected. A transformers
    model, whose training corpus is unknown, is scored against `data`'s."""
    label = source.curves.label
    emit({"event": "compare", "label": label, "stage": "load", "transformers": source.transformers})
    loaded = load_any_model(source.path, device)
    if source.transformers:
        loaded = dataclasses.replace(loaded, config=loaded.config.model_copy(update={"data": data}))
    applied = correction_for(loaded, "none" if loaded.config.train.article_weight == 1.0 else correction)
    emit({"event": "compare", "label": label, "stage": "eval", "max_blocks": max_blocks})
    report = evaluate(loaded, data, "val", max_blocks, correction=applied)
    emit({"event": "compare", "label": label, "stage": "generate", "samples": settings.num_samples})
    generated = generate_samples(loaded, DEFAULT_PROMPTS, settings, seed, logit_bias=logit_bias(loaded, applied))
    emit({"event": "compare", "label": label, "stage": "score"})
    reference, corpus_error = corpus_reference(loaded, corpus_optional)
    return RunResult(
        label=label,
        path=source.path,
        article_weight=loaded.config.train.article_weight,
        tokenizer_sha256=loaded.tokenizer.sha256,
        report=report,
        samples=generated,
        generated=generated_counts(generated, loaded.config.articles.words),
        score=None if reference is None else score_samples(generated, reference, settings),
        curves=source.curves,
        correction=applied,
        corpus_error=corpus_error,
        origin=loaded.origin,
    )


def compare_runs(
    paths: Sequence[Path],
    samples: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = DEFAULT_SEED,
    max_blocks: int | None = DEFAULT_MAX_BLOCKS,
    device: str | torch.device = "cpu",
    emit: Emit = lambda event: None,
    corpus_optional: bool = False,
    correction: str | float = "fitted",
) -> Comparison:
    """Measure every run folder in `paths` the same way (see the module docstring).

    Sampling is ancestral (temperature 1, no top-k, top-p or repetition penalty: the only setting whose
    article rate can be judged) with `samples` per prompt (default DEFAULT_SAMPLES) and `max_new_tokens`
    (default the first run's), the same for every run. Weighted runs get `correction`. `emit` receives
    {"event": "compare", "label", "stage"} as each run reaches load, eval, generate and score.
    With `corpus_optional`, a run whose corpus statistics cannot be computed (its training text has no
    articles, or is gone) is compared without them instead of raising InputError: its `score` is None.
    """
    sources = check_runs(paths)
    first = sources[0].config
    settings = sampling_settings(
        first.generate,
        temperature=1.0,
        repetition_penalty=1.0,
        num_samples=samples or DEFAULT_SAMPLES,
        max_new_tokens=max_new_tokens,
    ).model_copy(update={"top_k": None, "top_p": None})
    results = [
        measure_run(s, first.data, settings, seed, max_blocks, device, emit, corpus_optional, correction)
        for s in sources
    ]
    bookkeeping = set(DATA_BOOKKEEPING)
    data_differs = any(  # a transformers model's data section is tstool's default, not what it was trained on
        s.config.data.model_dump(exclude=bookkeeping) != first.data.model_dump(exclude=bookkeeping)
        for s in sources
        if not s.transformers
    )
    return Comparison(results, settings, seed, DEFAULT_PROMPTS, max_blocks, _notes(results, data_differs))
