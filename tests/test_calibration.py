"""The theory behind calibrated weighting, checked on a source whose next-token distribution is known.

A bigram source over a small vocabulary; the model is a free table of logits per context, trained
through tstool's weighted loss until it reaches the loss's optimum. Weighted cross-entropy is minimised
by p proportional to w q: the weighted tokens' odds come out inflated by w, the post-hoc correction with
the fitted tau brings them back, and the logit-adjusted loss never inflates them."""

import math

import pytest
import torch

from tstool.analysis.calibration import (
    choose_correction,
    correction_bias,
    correction_stats,
    fit_tau,
    parse_correction,
    precision_at_recall,
)
from tstool.analysis.evaluate import score_logits
from tstool.training.loss import LossTables, weighted_cross_entropy

VOCAB = 12
WEIGHTED = [2, 5]  # the "articles"
WEIGHT = 5.0


def bigram_sample(count: int = 12_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contexts, next tokens and the empirical next-token distribution (VOCAB, VOCAB) of a sample of the
    one source (its distribution is fixed; `seed` draws another sample)."""
    truth = (torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1234)) * 0.8).softmax(dim=1)
    gen = torch.Generator().manual_seed(seed)
    contexts = torch.randint(0, VOCAB, (count,), generator=gen)
    targets = torch.multinomial(truth[contexts], 1, generator=gen).squeeze(1)
    counts = torch.zeros(VOCAB, VOCAB).index_put_((contexts, targets), torch.ones(count), accumulate=True)
    return contexts, targets, counts / counts.sum(dim=1, keepdim=True)


def weights_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    weights, mask = torch.ones(VOCAB), torch.zeros(VOCAB, dtype=torch.bool)
    weights[WEIGHTED], mask[WEIGHTED] = WEIGHT, True
    return weights, mask


def train_table(contexts: torch.Tensor, targets: torch.Tensor, tables: LossTables) -> torch.Tensor:
    """Logits per context (VOCAB, VOCAB) at the optimum of the weighted loss (full-batch L-BFGS)."""
    table = torch.zeros(VOCAB, VOCAB, requires_grad=True)
    optimizer = torch.optim.LBFGS([table], lr=1, max_iter=60, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        parts = weighted_cross_entropy(table[contexts], targets, tables)
        loss = parts.weighted_sum / parts.weight_sum.float()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return table.detach()


def odds_inflation(logits: torch.Tensor, empirical: torch.Tensor) -> float:
    """Mean over contexts and weighted tokens of log(p/q) minus the same for the other tokens' mass."""
    log_p, log_q = logits.log_softmax(dim=1), empirical.log()
    others = [t for t in range(VOCAB) if t not in WEIGHTED]
    weighted_gap = (log_p[:, WEIGHTED] - log_q[:, WEIGHTED]).mean()
    other_gap = (log_p[:, others].logsumexp(1) - log_q[:, others].logsumexp(1)).mean()
    return math.exp(float(weighted_gap - other_gap))


@pytest.fixture(scope="module")
def source() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return bigram_sample()


@pytest.fixture(scope="module")
def trained(source) -> dict[str, torch.Tensor]:
    """Logit tables trained at weight 1, at weight WEIGHT, and at WEIGHT with the logit-adjusted loss."""
    contexts, targets, _ = source
    weights, mask = weights_and_mask()
    return {
        "plain": train_table(contexts, targets, LossTables.build(torch.ones(VOCAB), mask)),
        "weighted": train_table(contexts, targets, LossTables.build(weights, mask)),
        "adjusted": train_table(contexts, targets, LossTables.build(weights, mask, logit_adjusted=True)),
    }


@pytest.mark.slow
def test_a_weighted_model_inflates_the_weighted_tokens_odds_by_w(source, trained) -> None:
    empirical = source[2]
    plain, weighted = trained["plain"], trained["weighted"]
    assert odds_inflation(plain, empirical) == pytest.approx(1.0, abs=0.02)
    assert odds_inflation(weighted, empirical) == pytest.approx(WEIGHT, rel=0.02)


@pytest.mark.slow
def test_the_fitted_correction_undoes_the_inflation(source, trained) -> None:
    empirical, weighted = source[2], trained["weighted"]
    weights, _ = weights_and_mask()
    held_out_contexts, held_out_targets, _ = bigram_sample(count=12_000, seed=1)
    tau = fit_tau(correction_stats(weighted[held_out_contexts], held_out_targets, weights))
    assert tau == pytest.approx(1.0, abs=0.05)
    corrected = weighted + correction_bias(weights, tau)
    assert odds_inflation(corrected, empirical) == pytest.approx(1.0, abs=0.05)
    assert (corrected.softmax(1) - empirical).abs().max() < 0.01
    wrong_sign = weighted - correction_bias(weights, tau)
    assert odds_inflation(wrong_sign, empirical) > 20


@pytest.mark.slow
def test_the_logit_adjusted_loss_keeps_the_model_calibrated(source, trained) -> None:
    contexts, targets, empirical = source
    weights, _ = weights_and_mask()
    adjusted = trained["adjusted"]
    assert odds_inflation(adjusted, empirical) == pytest.approx(1.0, abs=0.02)
    assert fit_tau(correction_stats(adjusted[contexts], targets, weights)) == pytest.approx(0.0, abs=0.05)


@pytest.mark.slow
def test_the_fitted_tau_minimises_the_unweighted_loss_on_a_grid(source, trained) -> None:
    contexts, targets, _ = source
    weights, _ = weights_and_mask()
    weighted = trained["weighted"]
    stats = correction_stats(weighted[contexts], targets, weights)
    tau = fit_tau(stats)
    grid = [i / 20 for i in range(0, 61)]
    assert stats.loss(tau) <= min(stats.loss(t) for t in grid) + 1e-6
    logits = weighted[contexts] + correction_bias(weights, tau)
    direct = torch.nn.functional.cross_entropy(logits, targets).item()
    assert stats.loss(tau) == pytest.approx(direct, rel=1e-5)


@pytest.mark.slow
def test_reliability_of_a_calibrated_model_is_close_and_of_a_weighted_one_is_not(source, trained) -> None:
    contexts, targets, _ = source
    _, mask = weights_and_mask()
    plain, weighted = trained["plain"], trained["weighted"]
    plain_report = score_logits(plain[contexts][None], targets[None], mask).calibration.report()
    weighted_report = score_logits(weighted[contexts][None], targets[None], mask).calibration.report()
    assert plain_report["ece"] < 0.01 < 0.1 < weighted_report["ece"]
    observed = plain_report["observed_article_share"]
    assert plain_report["mean_predicted_mass"] == pytest.approx(observed, abs=0.01)
    assert weighted_report["mean_predicted_mass"] > observed + 0.1
    # the same ranking of positions, so at the baseline's recall the precision is the same
    recall = 0.5
    assert precision_at_recall(weighted_report["pr_curve"], recall) == pytest.approx(
        precision_at_recall(plain_report["pr_curve"], recall), abs=0.05
    )


@pytest.mark.parametrize("text", ["-0.5", "inf", "nan", "fit", ""])
def test_bad_correction_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--correction"):
        parse_correction(text)


def test_a_weight_one_model_is_never_corrected() -> None:
    assert not choose_correction("fitted", 1.0, False, None).applied
    with pytest.raises(ValueError, match="weight-1"):
        choose_correction(0.5, 1.0, False, None)
    assert choose_correction("fitted", 5.0, False, 0.97).tau == 0.97
    assert not choose_correction("fitted", 5.0, True, 0.01).applied
    assert choose_correction(1.0, 5.0, True, 0.01).tau == 1.0
