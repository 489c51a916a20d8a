"""Health checks on training metrics: the article/other loss ratio band, grad spikes, overfitting."""

from __future__ import annotations

import statistics
from collections import deque

# (lower bound of ratio, label, severity); the first row whose bound the ratio reaches wins.
RATIO_BANDS: tuple[tuple[float, str, str], ...] = (
    (3.0, "struggling", "bad"),
    (2.0, "high", "warn"),
    (1.5, "improving", "info"),
    (1.2, "slightly high", "info"),
    (0.8, "balanced", "ok"),
    (0.5, "articles easier", "ok"),
)
# At or below 0.5: with up-weighting the weight may be too high; without it, articles are simply
# among the most predictable tokens.
WEIGHTED_LOW_BAND = ("possibly over-weighted", "warn")
UNWEIGHTED_LOW_BAND = ("articles easy", "ok")
SPIKE_FACTOR = 5.0
GAP_NATS = 0.3


def ratio_band(ratio: float | None, article_weight: float = 1.0) -> tuple[str, str]:
    """Label and severity (ok, info, warn, bad) of an article/other loss ratio."""
    if ratio is None or ratio != ratio:
        return "n/a", "info"
    for bound, label, severity in RATIO_BANDS:
        if ratio > bound:
            return label, severity
    return WEIGHTED_LOW_BAND if article_weight > 1.0 else UNWEIGHTED_LOW_BAND


class HealthMonitor:
    """Turns metric records into warnings, each a short sentence."""

    def __init__(self, article_weight: float = 1.0, window: int = 50):
        self.article_weight = article_weight
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.last_train_loss: float | None = None
        self.last_band: str | None = None

    def check_train(self, record: dict) -> list[str]:
        warnings = []
        label, severity = ratio_band(record.get("ratio"), self.article_weight)
        if severity in ("warn", "bad") and label != self.last_band:  # once per band change, not every line
            warnings.append(f"article/other loss ratio {record['ratio']:.2f} is {label}")
        self.last_band = label
        grad_norm = record.get("grad_norm")
        if grad_norm is not None and len(self.grad_norms) >= 10:
            median = statistics.median(self.grad_norms)
            if grad_norm > SPIKE_FACTOR * median:
                warnings.append(
                    f"grad norm spike: {grad_norm:.2f} is over {SPIKE_FACTOR:g}x the recent median {median:.2f}"
                )
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
        self.last_train_loss = record.get("loss_unweighted")
        return warnings

    def check_val(self, record: dict) -> list[str]:
        if self.last_train_loss is None:
            return []
        gap = record["loss_unweighted"] - self.last_train_loss
        if gap > GAP_NATS:
            return [f"validation loss is {gap:.2f} nats above training loss: the model may be overfitting"]
        return []
