"""Health checks: the article/other ratio bands, grad-norm spikes and the val-train gap."""

from __future__ import annotations

import pytest

from tstool.training.health import HealthMonitor, ratio_band


@pytest.mark.parametrize(
    ("ratio", "weight", "label", "severity"),
    [
        (3.5, 1.0, "struggling", "bad"),
        (2.5, 5.0, "high", "warn"),
        (1.7, 5.0, "improving", "info"),
        (1.3, 5.0, "slightly high", "info"),
        (1.0, 5.0, "balanced", "ok"),
        (0.6, 5.0, "articles easier", "ok"),
        (0.3, 5.0, "possibly over-weighted", "warn"),
        (0.3, 1.0, "articles easy", "ok"),  # no up-weighting: a low ratio is just easy articles
        (None, 5.0, "n/a", "info"),
    ],
)
def test_ratio_bands(ratio: float | None, weight: float, label: str, severity: str) -> None:
    assert ratio_band(ratio, weight) == (label, severity)


def record(step: int, grad_norm: float = 1.0, ratio: float = 1.0, loss: float = 3.0) -> dict:
    return {"step": step, "grad_norm": grad_norm, "ratio": ratio, "loss_unweighted": loss}


def test_ratio_warning_is_given_once_per_band_change() -> None:
    monitor = HealthMonitor(article_weight=5.0)
    warnings = [monitor.check_train(record(step, ratio=0.3)) for step in range(1, 6)]
    assert [len(w) for w in warnings] == [1, 0, 0, 0, 0]
    assert monitor.check_train(record(6, ratio=1.0)) == []
    assert len(monitor.check_train(record(7, ratio=0.3))) == 1


def test_grad_norm_spike_is_flagged_against_the_recent_median() -> None:
    monitor = HealthMonitor()
    for step in range(1, 21):
        assert monitor.check_train(record(step, grad_norm=1.0 + 0.01 * step)) == []
    assert any("spike" in w for w in monitor.check_train(record(21, grad_norm=20.0)))


def test_val_train_gap_warns_about_overfitting() -> None:
    monitor = HealthMonitor()
    monitor.check_train(record(1, loss=2.0))
    assert monitor.check_val({"loss_unweighted": 2.1}) == []
    assert any("overfitting" in w for w in monitor.check_val({"loss_unweighted": 2.6}))
