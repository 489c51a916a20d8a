"""Calibrated article weighting: the post-hoc correction of a weighted model, and how well a model's
article probability matches how often articles follow.

Weighted cross-entropy is minimised by p(y|x) proportional to w(y) q(y|x): a weight-5 model inflates
every article's odds by about 5. Subtracting tau * log w(y) from the raw logits undoes it (the
normaliser cancels); tau is fitted on validation text as the value that minimises the corrected
model's unweighted loss, as temperature scaling is fitted (Guo et al. 2017; docs/calibration.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tstool.data.articles import resolve_articles
from tstool.data.batches import eval_block_ids, gather_blocks, split_block
from tstool.data.packing import load_tokens
from tstool.model.loading import LoadedModel

# tau is searched in [0, TAU_MAX]: 0 leaves the model as it is, 1 is the theory's exact undoing.
TAU_MAX = 3.0
TAU_TOLERANCE = 1e-4
RELIABILITY_BINS = 10
PR_THRESHOLDS = 101  # article-mass thresholds 0, 0.01, ..., 1 for the precision-recall curve


def correction_bias(weight_table: torch.Tensor, tau: float) -> torch.Tensor:
    """The logit bias (V,) of the correction: -tau * log w(y); zero where w(y) = 1."""
    return -tau * weight_table.float().log()


@dataclass
class CorrectionStats:
    """Per-position numbers that give the unweighted loss of the corrected model for any tau without
    the logits: the weighted tokens' logits and a logsumexp over all the others."""

    other_lse: torch.Tensor  # (N,) logsumexp of the logits of tokens with weight 1
    weighted_logits: torch.Tensor  # (N, K) logits of the K weighted tokens
    log_weights: torch.Tensor  # (K,) their log weights
    target_logit: torch.Tensor  # (N,)
    target_log_weight: torch.Tensor  # (N,) log w of each target (0 for weight-1 targets)

    def __add__(self, other: CorrectionStats) -> CorrectionStats:
        joined = {
            name: torch.cat([getattr(self, name), getattr(other, name)])
            for name in ("other_lse", "weighted_logits", "target_logit", "target_log_weight")
        }
        return CorrectionStats(log_weights=self.log_weights, **joined)

    def loss(self, tau: float) -> float:
        """Mean unweighted CE (nats) of the corrected logits s - tau * log w."""
        shifted = self.weighted_logits - tau * self.log_weights  # (N, K)
        normaliser = torch.logsumexp(torch.cat([self.other_lse[:, None], shifted], dim=1), dim=1)
        return float((normaliser - self.target_logit + tau * self.target_log_weight).mean())


def correction_stats(
    logits: torch.Tensor, targets: torch.Tensor, weight_table: torch.Tensor, ignore_index: int = -100
) -> CorrectionStats:
    """`CorrectionStats` of logits (..., V) against targets (...), for the tokens whose weight is not 1."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    flat_targets = targets.reshape(-1)
    kept = flat_targets != ignore_index
    flat, flat_targets = flat[kept], flat_targets[kept]
    weights = weight_table.to(flat.device).float()
    weighted = (weights != 1.0).nonzero().squeeze(1)  # (K,)
    others = flat.index_fill(1, weighted, float("-inf"))
    return CorrectionStats(
        other_lse=torch.logsumexp(others, dim=1),
        weighted_logits=flat.index_select(1, weighted),
        log_weights=weights[weighted].log(),
        target_logit=flat.gather(1, flat_targets[:, None]).squeeze(1),
        target_log_weight=weights[flat_targets].log(),
    )


def fit_tau(stats: CorrectionStats, high: float = TAU_MAX) -> float:
    """The tau in [0, high] that minimises `stats.loss`: a golden-section search, which finds the
    minimum because the loss is convex in tau (a logsumexp of affine functions minus an affine one)."""
    inverse_golden = (math.sqrt(5) - 1) / 2
    low, top = 0.0, high
    left, right = top - inverse_golden * (top - low), low + inverse_golden * (top - low)
    left_loss, right_loss = stats.loss(left), stats.loss(right)
    while top - low > TAU_TOLERANCE:
        if left_loss <= right_loss:
            top, right, right_loss = right, left, left_loss
            left = top - inverse_golden * (top - low)
            left_loss = stats.loss(left)
        else:
            low, left, left_loss = left, right, right_loss
            right = low + inverse_golden * (top - low)
            right_loss = stats.loss(right)
    return round((low + top) / 2, 4)


@dataclass(frozen=True)
class Correction:
    """Which post-hoc correction a command applies: tau (0 = none), and why."""

    tau: float
    source: str  # "fitted" (kept with the checkpoint), "given", "none", "weight 1" or "loss-adjusted"

    @property
    def applied(self) -> bool:
        return self.tau != 0.0

    def describe(self) -> str:
        if not self.applied:
            return {
                "weight 1": "none (weight-1 model)",
                "loss-adjusted": "none (loss-adjusted model)",
                "fitted": "none (the fitted tau is 0)",
            }.get(self.source, "none")
        return f"tau {self.tau:g} ({self.source}): article logits lowered by tau * log w"

    def to_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "source": self.source, "applied": self.applied, "description": self.describe()}


CORRECTION_CHOICES = "fitted, none, or a number >= 0"


def parse_correction(text: str) -> str | float:
    """`--correction`'s value: "fitted", "none", or tau as a float >= 0; ValueError otherwise."""
    if text in ("fitted", "none"):
        return text
    try:
        tau = float(text)
    except ValueError:
        raise ValueError(f"--correction {text!r}: pass {CORRECTION_CHOICES}") from None
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"--correction {text!r}: tau must be a finite number >= 0 ({CORRECTION_CHOICES})")
    return tau


def choose_correction(
    choice: str | float, article_weight: float, logit_adjusted: bool, fitted: float | None
) -> Correction:
    """The correction for a model trained at `article_weight`, from the user's choice and the tau kept
    with its checkpoint (None if there is none). A weight-1 model is never corrected; a loss-adjusted
    one only when asked. ValueError when a tau is asked of a weight-1 model."""
    if article_weight == 1.0:
        if isinstance(choice, float):
            raise ValueError("--correction: a weight-1 model has nothing to correct: pass --correction none or fitted")
        return Correction(0.0, "weight 1")
    if choice == "none":
        return Correction(0.0, "none")
    if isinstance(choice, float):
        return Correction(choice, "given")
    if logit_adjusted:
        return Correction(0.0, "loss-adjusted")
    if fitted is None:
        raise ValueError("this checkpoint keeps no fitted tau: pass --correction TAU or none")
    return Correction(fitted, "fitted")


# ---- how calibrated the article probability is -----------------------------------------------------


@dataclass
class CalibrationSums:
    """Sums over positions, binned by the model's total article probability ("article mass")."""

    bin_count: torch.Tensor  # (RELIABILITY_BINS,) positions per bin
    bin_mass: torch.Tensor  # (RELIABILITY_BINS,) summed predicted mass
    bin_articles: torch.Tensor  # (RELIABILITY_BINS,) article targets
    above_count: torch.Tensor  # (PR_THRESHOLDS,) positions whose mass reaches each threshold
    above_articles: torch.Tensor  # (PR_THRESHOLDS,) of those, article targets

    def __add__(self, other: CalibrationSums) -> CalibrationSums:
        return CalibrationSums(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def report(self) -> dict[str, Any]:
        """Reliability table, expected calibration error, mean predicted mass against the observed share,
        and the precision-recall curve of "an article comes next" thresholded on the mass."""
        count, mass, articles = (t.double() for t in (self.bin_count, self.bin_mass, self.bin_articles))
        total, total_articles = float(count.sum()), float(articles.sum())
        rows = [
            {
                "bin": [i / RELIABILITY_BINS, (i + 1) / RELIABILITY_BINS],
                "positions": int(n),
                "predicted": float(m / n) if n else None,
                "observed": float(a / n) if n else None,
            }
            for i, (n, m, a) in enumerate(zip(count, mass, articles, strict=True))
        ]
        ece = float(((mass - articles).abs()).sum() / total) if total else None
        above, above_articles = self.above_count.double(), self.above_articles.double()
        curve = [
            {
                "threshold": i / (PR_THRESHOLDS - 1),
                "precision": float(hits / n) if n else None,
                "recall": float(hits / total_articles) if total_articles else None,
            }
            for i, (n, hits) in enumerate(zip(above, above_articles, strict=True))
        ]
        return {
            "reliability": rows,
            "ece": ece,
            "mean_predicted_mass": float(mass.sum() / total) if total else None,
            "observed_article_share": total_articles / total if total else None,
            "pr_curve": curve,
            "average_precision": average_precision(curve),
        }


def calibration_sums(mass: torch.Tensor, is_article: torch.Tensor) -> CalibrationSums:
    """`CalibrationSums` of positions' total article probability `mass` (N,) against whether their
    target is an article, `is_article` (N,) bool."""
    is_article = is_article.double()
    bins = (mass * RELIABILITY_BINS).long().clamp_(max=RELIABILITY_BINS - 1)
    thresholds = torch.linspace(0, 1, PR_THRESHOLDS, device=mass.device)
    above = (mass[:, None] >= thresholds).double()  # (N, PR_THRESHOLDS)

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(RELIABILITY_BINS, dtype=torch.float64, device=mass.device).index_add_(0, bins, values)

    return CalibrationSums(
        bin_count=per_bin(torch.ones_like(is_article)),
        bin_mass=per_bin(mass.double()),
        bin_articles=per_bin(is_article),
        above_count=above.sum(dim=0),
        above_articles=(above * is_article[:, None]).sum(dim=0),
    )


def average_precision(curve: list[dict[str, Any]]) -> float | None:
    """Area under the precision-recall curve (recall steps times precision), threshold-free."""
    points = sorted((p["recall"], p["precision"]) for p in curve if p["recall"] is not None and p["precision"])
    if not points:
        return None
    area, previous_recall = 0.0, 0.0
    for recall, precision in points:
        area += (recall - previous_recall) * precision
        previous_recall = recall
    return area


def precision_at_recall(curve: list[dict[str, Any]], recall: float) -> float | None:
    """The precision of the curve's threshold whose recall is closest to `recall` from above: a weighted
    model judged at the recall of its baseline, not at its own shifted threshold."""
    reaching = [p for p in curve if p["recall"] is not None and p["precision"] is not None and p["recall"] >= recall]
    if not reaching:
        return None
    return min(reaching, key=lambda p: p["recall"])["precision"]


# ---- a loaded checkpoint's correction ---------------------------------------------------------------


def weight_table_of(loaded: LoadedModel) -> torch.Tensor:
    """The per-token loss weights (V,) the checkpoint was trained with."""
    cfg = loaded.config
    return resolve_articles(loaded.tokenizer, cfg.articles).weight_table(cfg.train.article_weight)


def kept_tau(loaded: LoadedModel) -> float | None:
    """The tau fitted at the checkpoint's last validation run, if its run kept one."""
    kept = loaded.meta.get("article_correction")
    return float(kept["tau"]) if kept else None


def fit_on_validation(loaded: LoadedModel) -> float:
    """tau fitted now on the blocks training validates on, for a checkpoint that keeps none."""
    cfg, model = loaded.config, loaded.model
    seq_len, batch = cfg.model.max_seq_len, cfg.train.batch_size
    stream = load_tokens(cfg.data, "val", loaded.tokenizer)
    block_ids = eval_block_ids(len(stream.tokens), seq_len, cfg.train.eval_batches * batch)
    weights = weight_table_of(loaded)
    stats: CorrectionStats | None = None
    with torch.inference_mode():
        for start in range(0, len(block_ids), batch):
            x, y = split_block(gather_blocks(stream.tokens, block_ids[start : start + batch], seq_len))
            part = correction_stats(model(x.to(loaded.device)), y.to(loaded.device), weights)
            stats = part if stats is None else stats + part
    assert stats is not None
    return fit_tau(stats)


def correction_for(loaded: LoadedModel, choice: str | float) -> Correction:
    """The correction a command applies to `loaded` for `--correction` `choice` (see `choose_correction`);
    a checkpoint that keeps no fitted tau gets one fitted now. ValueError as `choose_correction`."""
    train = loaded.config.train
    fitted = kept_tau(loaded)
    if fitted is None and choice == "fitted" and train.article_weight != 1.0 and not train.logit_adjusted:
        fitted = fit_on_validation(loaded)
    return choose_correction(choice, train.article_weight, train.logit_adjusted, fitted)


def logit_bias(loaded: LoadedModel, correction: Correction) -> torch.Tensor | None:
    """The correction's logit bias (V,) on the model's device, or None when it changes nothing."""
    if not correction.applied:
        return None
    return correction_bias(weight_table_of(loaded), correction.tau).to(loaded.device)
