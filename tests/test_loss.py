import math

import pytest
import torch
import torch.nn.functional as F

from tstool.config import ModelConfig
from tstool.model.llama import Model
from tstool.training import loss
from tstool.training.loss import (
    ARTICLE,
    CE,
    COUNT,
    HITS,
    OTHER,
    LossParts,
    LossTables,
    top1_hits,
    weighted_cross_entropy,
)

VOCAB = 50
ARTICLES = [3, 7, 11]
IGNORE = -100


def weight_table(article_weight: float) -> torch.Tensor:
    weights = torch.ones(VOCAB)
    weights[ARTICLES] = article_weight
    return weights


def tables(article_weight: float) -> LossTables:
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[ARTICLES] = True
    return LossTables.build(weight_table(article_weight), mask)


def weighted_mean(logits: torch.Tensor, targets: torch.Tensor, article_weight: float) -> torch.Tensor:
    parts = weighted_cross_entropy(logits, targets, tables(article_weight))
    return parts.weighted_sum / parts.weight_sum.float()


def batch(seed: int = 0, shape: tuple[int, int] = (4, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and targets with planted article targets and ignored positions."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, VOCAB, generator=gen) * 3
    targets = torch.randint(0, VOCAB, shape, generator=gen)
    targets[:, ::4] = torch.tensor(ARTICLES)[torch.randint(0, 3, (shape[0], len(range(0, shape[1], 4))), generator=gen)]
    targets[0, 1] = targets[2, -1] = IGNORE
    # make some article targets the argmax so accuracy is neither 0 nor 1
    logits[1, 0, targets[1, 0]] += 20
    logits[-1, 4, targets[-1, 4]] += 20
    return logits, targets


def test_weight_one_equals_cross_entropy() -> None:
    logits, targets = batch()
    loss = weighted_mean(logits, targets, 1.0)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_weighted_loss_by_hand() -> None:
    logits, targets = batch()
    weights = weight_table(4.0)
    num = den = 0.0
    for row_logits, row_targets in zip(logits.flatten(0, 1), targets.flatten(), strict=True):
        y = int(row_targets)
        if y == IGNORE:
            continue
        ce = -torch.log_softmax(row_logits, dim=-1)[y].item()
        num += float(weights[y]) * ce
        den += float(weights[y])
    assert weighted_mean(logits, targets, 4.0).item() == pytest.approx(num / den, rel=1e-6)


def test_article_breakdown_by_hand() -> None:
    logits, targets = batch()
    parts = weighted_cross_entropy(logits, targets, tables(2.0))
    flat_logits, flat_targets = logits.flatten(0, 1), targets.flatten()
    valid = flat_targets != IGNORE
    ce = F.cross_entropy(flat_logits[valid], flat_targets[valid], reduction="none")
    is_article = torch.isin(flat_targets[valid], torch.tensor(ARTICLES))
    correct = (flat_logits[valid].argmax(-1) == flat_targets[valid]) & is_article
    n_tokens, n_articles, n_correct = int(valid.sum()), int(is_article.sum()), int(correct.sum())
    assert n_tokens == 46 and 12 <= n_articles < n_tokens and 2 <= n_correct < n_articles
    assert parts.token_count.item() == n_tokens
    assert parts.totals[ARTICLE, COUNT].item() == n_articles
    assert parts.totals[OTHER, COUNT].item() == n_tokens - n_articles
    assert parts.totals[ARTICLE, HITS].item() == n_correct
    torch.testing.assert_close(parts.totals[ARTICLE, CE], ce[is_article].sum().double())
    torch.testing.assert_close(parts.totals[OTHER, CE], ce[~is_article].sum().double())
    assert parts.weight_sum.item() == n_tokens + (2.0 - 1.0) * n_articles
    metrics = parts.metrics()
    assert metrics["article_loss"] == pytest.approx(ce[is_article].mean().item(), rel=1e-6)
    assert metrics["other_loss"] == pytest.approx(ce[~is_article].mean().item(), rel=1e-6)
    assert metrics["ratio"] == pytest.approx(metrics["article_loss"] / metrics["other_loss"])
    assert metrics["loss_unweighted"] == pytest.approx(ce.mean().item(), rel=1e-6)
    assert metrics["article_acc"] == pytest.approx(n_correct / n_articles)
    assert (metrics["tokens"], metrics["article_tokens"]) == (n_tokens, n_articles)


def test_a_hit_is_the_target_alone_on_top() -> None:
    logits, targets = batch()
    flat_logits, flat_targets = logits.flatten(0, 1), targets.clamp_min(0).flatten()
    flat_targets[5] = flat_targets[6] = ARTICLES[0]
    flat_logits[5] = 0.0  # the target ties every other token, and argmax picks token 0: a miss
    flat_logits[6] = 0.0
    flat_logits[6, ARTICLES[0]] = 1e-3  # the target alone on top: a hit
    expected = flat_logits.argmax(-1) == flat_targets
    assert not expected[5] and expected[6]
    assert torch.equal(top1_hits(flat_logits, flat_targets), expected)


def test_ties_with_the_target_are_misses() -> None:
    """Even when argmax would pick the target (first among equals), a tie is not a hit."""
    logits = torch.zeros(1, VOCAB)
    logits[0, [ARTICLES[0], 40]] = 2.0
    targets = torch.tensor([ARTICLES[0]])
    assert logits.argmax(-1).item() == ARTICLES[0]
    assert not top1_hits(logits, targets).item()


@pytest.mark.parametrize("ignore_index", [-100, -1, VOCAB, 20])
def test_any_ignore_index_counts_nowhere(ignore_index: int) -> None:
    """An ignore_index outside the vocabulary, or a token ID, is left out."""
    logits, targets = batch()
    targets = targets.masked_fill(targets == 20, 21).masked_fill(targets == IGNORE, ignore_index)
    parts = weighted_cross_entropy(logits, targets, tables(2.0), ignore_index=ignore_index)
    reference = weighted_cross_entropy(logits, targets.masked_fill(targets == ignore_index, IGNORE), tables(2.0))
    assert parts.token_count.item() == 46
    assert torch.equal(parts.totals, reference.totals) and torch.equal(parts.weighted_sum, reference.weighted_sum)


def test_missing_articles_give_none() -> None:
    logits, targets = batch()
    targets = targets.masked_fill(torch.isin(targets, torch.tensor(ARTICLES)), 0)
    metrics = weighted_cross_entropy(logits, targets, tables(3.0)).metrics()
    assert metrics["article_loss"] is None and metrics["ratio"] is None and metrics["article_acc"] is None
    assert metrics["article_tokens"] == 0 and metrics["other_loss"] is not None
    all_ignored = weighted_cross_entropy(logits, torch.full_like(targets, IGNORE), tables(3.0)).metrics()
    assert all_ignored["loss"] is None and all_ignored["tokens"] == 0


def test_halves_accumulate_to_full_batch() -> None:
    logits, targets = batch(shape=(6, 10))
    full = weighted_cross_entropy(logits, targets, tables(3.0))
    halves = weighted_cross_entropy(logits[:3], targets[:3], tables(3.0)) + weighted_cross_entropy(
        logits[3:], targets[3:], tables(3.0)
    )
    torch.testing.assert_close(halves.as_vector(), full.as_vector())
    assert halves.metrics() == pytest.approx(full.metrics())


def test_vector_round_trip() -> None:
    parts = weighted_cross_entropy(*batch(), tables(2.0))
    again = LossParts.from_vector(parts.as_vector())
    assert again.metrics() == parts.metrics()


def test_bf16_logits_are_upcast() -> None:
    logits, targets = batch()
    parts = weighted_cross_entropy(logits.bfloat16(), targets, tables(1.0))
    assert parts.weighted_sum.dtype == torch.float32
    expected = F.cross_entropy(logits.bfloat16().float().flatten(0, 1), targets.flatten(), reduction="sum")
    torch.testing.assert_close(parts.weighted_sum, expected)


def small_model() -> Model:
    torch.manual_seed(0)
    return Model(ModelConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, max_seq_len=16), VOCAB)


def grads(model: Model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_gradient_with_weight_one_equals_cross_entropy() -> None:
    model = small_model()
    idx = torch.randint(0, VOCAB, (3, 16))
    _, targets = batch(shape=(3, 16))
    parts = weighted_cross_entropy(model(idx), targets, tables(1.0))
    (parts.weighted_sum / parts.weight_sum).backward()
    ours = grads(model)
    model.zero_grad()
    F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), ignore_index=IGNORE).backward()
    for a, b in zip(ours, grads(model), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_accumulated_micro_batches_match_one_large_batch() -> None:
    """Dividing each micro-batch's weighted sum by the step's total weight gives the full batch's gradient."""
    model = small_model()
    weights = weight_table(5.0)
    idx = torch.randint(0, VOCAB, (8, 16))
    _, targets = batch(shape=(8, 16))
    full = weighted_cross_entropy(model(idx), targets, tables(5.0))
    (full.weighted_sum / full.weight_sum).backward()
    expected = grads(model)
    model.zero_grad()
    total_weight = (weights[targets.clamp_min(0)] * (targets != IGNORE)).sum()
    accumulated = None
    for micro_idx, micro_targets in zip(idx.chunk(4), targets.chunk(4), strict=True):
        parts = weighted_cross_entropy(model(micro_idx), micro_targets, tables(5.0))
        (parts.weighted_sum / total_weight).backward()
        accumulated = parts.detach() if accumulated is None else accumulated + parts.detach()
    for a, b in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    assert accumulated.metrics()["loss"] == pytest.approx(full.metrics()["loss"], rel=1e-6)
    assert not math.isnan(accumulated.metrics()["ratio"])


def test_sums_are_float64_except_on_mps_which_has_none() -> None:
    assert loss.sums_dtype(torch.device("cpu")) == torch.float64
    assert loss.sums_dtype(torch.device("mps")) == torch.float32
    assert LossParts.zeros(torch.device("cpu")).totals.dtype == torch.float64


def test_the_head_loss_forms_the_logits_and_runs_the_reference() -> None:
    model = small_model()
    idx = torch.randint(0, VOCAB, (3, 16))
    _, targets = batch(shape=(3, 16))
    parts = loss.HeadLoss(tables(5.0))(model(idx, head=False), model.lm_head.weight, targets)
    reference = weighted_cross_entropy(model(idx), targets, tables(5.0))
    assert torch.equal(parts.weighted_sum, reference.weighted_sum) and torch.equal(parts.totals, reference.totals)


def test_the_logit_adjusted_head_loss_matches_the_reference() -> None:
    model = small_model()
    idx = torch.randint(0, VOCAB, (3, 16))
    _, targets = batch(shape=(3, 16))
    adjusted = LossTables.build(weight_table(5.0), tables(5.0).is_article, logit_adjusted=True)
    parts = loss.HeadLoss(adjusted)(model(idx, head=False), model.lm_head.weight, targets)
    reference = weighted_cross_entropy(model(idx), targets, adjusted)
    torch.testing.assert_close(parts.weighted_sum, reference.weighted_sum)
    torch.testing.assert_close(parts.totals, reference.totals)
    assert not torch.allclose(parts.weighted_sum, weighted_cross_entropy(model(idx), targets, tables(5.0)).weighted_sum)


def test_the_logit_adjusted_loss_is_the_weighted_loss_of_logits_plus_log_w() -> None:
    logits, targets = batch()
    weights = weight_table(5.0)
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[ARTICLES] = True
    adjusted = weighted_cross_entropy(logits, targets, LossTables.build(weights, mask, logit_adjusted=True))
    by_hand = weighted_cross_entropy(logits + weights.log(), targets, tables(5.0))
    torch.testing.assert_close(adjusted.weighted_sum, by_hand.weighted_sum)
    torch.testing.assert_close(adjusted.totals, by_hand.totals)
    assert adjusted.weighted_sum < weighted_cross_entropy(logits, targets, tables(5.0)).weighted_sum
