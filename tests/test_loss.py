import functools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tstool import loss
from tstool.config import ModelConfig
from tstool.loss import ARTICLE, CE, COUNT, HITS, OTHER, LossParts, LossTables, _article_hits, weighted_cross_entropy
from tstool.model import Model

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


def test_article_hits_of_article_rows_and_of_all_rows_agree() -> None:
    logits, targets = batch()
    flat_logits, flat_targets = logits.flatten(0, 1), targets.clamp_min(0).flatten()
    flat_targets[5] = flat_targets[6] = ARTICLES[0]
    flat_logits[5] = 0.0  # the target ties every other token, and argmax picks token 0: a miss
    flat_logits[6] = 0.0
    flat_logits[6, ARTICLES[0]] = 1e-3  # the target alone on top: a hit
    is_article = torch.isin(flat_targets, torch.tensor(ARTICLES))
    article_rows = _article_hits(flat_logits, flat_targets, is_article, all_rows=False)
    expected = ((flat_logits.argmax(-1) == flat_targets) & is_article).float()
    assert expected[5] == 0.0 and expected[6] == 1.0 and expected.sum().item() == 3
    assert torch.equal(article_rows, expected)
    assert torch.equal(_article_hits(flat_logits, flat_targets, is_article, all_rows=True), expected)


def test_ties_with_the_target_are_misses() -> None:
    """Even when argmax would pick the target (first among equals), a tie is not a hit."""
    logits = torch.zeros(1, VOCAB)
    logits[0, [ARTICLES[0], 40]] = 2.0
    targets = torch.tensor([ARTICLES[0]])
    assert logits.argmax(-1).item() == ARTICLES[0]
    assert _article_hits(logits, targets, torch.tensor([True]), all_rows=False).item() == 0.0


@pytest.mark.parametrize("all_rows", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, -1, VOCAB, 20])
def test_any_ignore_index_counts_nowhere(ignore_index: int, all_rows: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ignore_index outside the vocabulary, or a token ID, is left out on both hit paths."""
    monkeypatch.setattr(loss, "_reads_all_rows", lambda device: all_rows)
    logits, targets = batch()
    targets = targets.masked_fill(targets == 20, 21).masked_fill(targets == IGNORE, ignore_index)
    parts = weighted_cross_entropy(logits, targets, tables(2.0), ignore_index=ignore_index)
    reference = weighted_cross_entropy(logits, targets.masked_fill(targets == ignore_index, IGNORE), tables(2.0))
    assert parts.token_count.item() == 46
    assert torch.equal(parts.totals, reference.totals) and torch.equal(parts.weighted_sum, reference.weighted_sum)


def test_weighted_sum_and_gradient_are_bit_identical_to_the_plain_formula() -> None:
    """Training runs reproduce bit for bit across versions: sum(w[target] * ce), in this order."""
    logits, targets = batch()
    weights = weight_table(5.0)
    ours_logits, plain_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = weighted_cross_entropy(ours_logits, targets, tables(5.0)).weighted_sum
    ce = F.cross_entropy(plain_logits.flatten(0, 1), targets.flatten(), reduction="none")
    plain = (weights[targets.clamp_min(0)].flatten() * (targets != IGNORE).flatten() * ce).sum()
    ours.backward()
    plain.backward()
    assert torch.equal(ours, plain) and torch.equal(ours_logits.grad, plain_logits.grad)


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


def eager_sums_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, article_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_()
    parts = weighted_cross_entropy(leaf, targets, tables(article_weight))
    parts.weighted_sum.backward()
    return parts.weighted_sum.detach(), parts.totals, leaf.grad


@pytest.mark.parametrize("every_row", [True, False])
def test_the_loss_and_its_gradient_in_one_pass_equal_autograd(every_row: bool) -> None:
    """The sequence a CUDA graph captures (every row) and the head's blocks run (article rows): the
    same sums, hits and ignored targets as the eager loss, and the gradient autograd computes,
    written over the logits."""
    logits, targets = batch()
    weighted_sum, totals, gradient = eager_sums_and_gradient(logits, targets, 5.0)
    buffer = logits.flatten(0, 1).clone()
    one_pass_sum, one_pass_totals = loss._sums_and_gradient(buffer, targets.flatten(), tables(5.0), IGNORE, every_row)
    torch.testing.assert_close(one_pass_sum, weighted_sum)
    torch.testing.assert_close(one_pass_totals, totals)
    assert torch.equal(one_pass_totals[:, [COUNT, HITS]], totals[:, [COUNT, HITS]])
    torch.testing.assert_close(buffer.view_as(gradient), gradient)


def captured_on_cpu(rows: int) -> loss._Captured:
    """The replay protocol of `ArticleLoss`, on static CPU buffers recomputed eagerly (no graph)."""
    logits, targets = torch.zeros(rows, VOCAB), torch.zeros(rows, dtype=torch.long)
    outputs = loss._sums_and_gradient(logits.clone(), targets, tables(5.0), IGNORE, every_row=True)

    def replay() -> None:
        recomputed = loss._sums_and_gradient(logits, targets, tables(5.0), IGNORE, every_row=True)
        for output, value in zip(outputs, recomputed, strict=True):
            output.copy_(value)

    return loss._Captured(replay, logits, targets, *outputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_replayed_loss_gives_autograd_its_gradient_in_the_logits_dtype(dtype: torch.dtype) -> None:
    logits, targets = batch()
    logits = logits.to(dtype)
    weighted_sum, totals, gradient = eager_sums_and_gradient(logits, targets, 5.0)
    leaf = logits.clone().requires_grad_()
    replayed_sum, replayed_totals = loss._ReplayedLoss.apply(leaf, targets, captured_on_cpu(targets.numel()))
    assert not replayed_totals.requires_grad
    (replayed_sum * 2).backward()  # the upstream gradient scales it
    torch.testing.assert_close(replayed_sum, weighted_sum)
    torch.testing.assert_close(replayed_totals, totals)
    assert leaf.grad.dtype == dtype
    torch.testing.assert_close(leaf.grad, 2 * gradient)


def test_a_replayed_loss_refuses_a_backward_after_a_later_replay() -> None:
    """The buffer holds only the latest batch's gradient: an earlier loss's backward would be wrong."""
    captured = captured_on_cpu(48)
    first_logits, targets = batch(seed=0)
    first, _ = loss._ReplayedLoss.apply(first_logits.requires_grad_(), targets, captured)
    loss._ReplayedLoss.apply(batch(seed=1)[0].requires_grad_(), targets, captured)
    with pytest.raises(RuntimeError, match="ran again on a batch of this shape before this loss's backward"):
        first.backward()


def test_article_loss_off_cuda_is_the_eager_loss() -> None:
    logits, targets = batch()
    article_loss = loss.ArticleLoss(tables(5.0))
    parts, eager = article_loss(logits.requires_grad_(), targets), weighted_cross_entropy(logits, targets, tables(5.0))
    assert torch.equal(parts.weighted_sum, eager.weighted_sum) and torch.equal(parts.totals, eager.totals)
    assert not article_loss.graphs


def hidden_and_head(seed: int = 0, rows: int = 48, width: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states (4, rows/4, width), a head (VOCAB, width) whose logits put some article targets
    first, and `batch`'s targets with their articles and ignored positions."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, rows // 4, width, generator=gen)
    head = torch.randn(VOCAB, width, generator=gen)
    _, targets = batch(seed, (4, rows // 4))
    head[targets[1, 0]] = 5 * hidden[1, 0] / hidden[1, 0].norm()  # an article target with the top logit
    return hidden, head, targets


def whole_logits(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor) -> LossParts:
    """The reference: the head's whole logits, then the eager loss."""
    return weighted_cross_entropy(F.linear(hidden, head), targets, tables(5.0))


def head_loss_and_gradients(
    compute: Callable[[torch.Tensor, torch.Tensor], LossParts],
    hidden: torch.Tensor,
    head: torch.Tensor,
    trained: tuple[str, ...] = ("hidden", "head"),
) -> list[torch.Tensor]:
    """Weighted sum, totals, and the gradients of the `trained` leaves (None for the others)."""
    hidden, head = hidden.clone().requires_grad_("hidden" in trained), head.clone().requires_grad_("head" in trained)
    parts = compute(hidden, head)
    (2 * parts.weighted_sum).backward()  # the upstream gradient scales both
    return [parts.weighted_sum, parts.totals, hidden.grad, head.grad]


def test_the_head_inside_the_loss_gives_the_numbers_of_whole_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 5 rows (the last one short) give whole logits' sums, hits and both gradients."""
    monkeypatch.setattr(loss, "HEAD_BLOCK_ROWS", 5)
    hidden, head, targets = hidden_and_head()
    article_loss = loss.ArticleLoss(tables(5.0))
    blocks = head_loss_and_gradients(lambda h, w: article_loss.from_hidden(h, w, targets), hidden, head)
    whole = head_loss_and_gradients(lambda h, w: whole_logits(h, w, targets), hidden, head)
    for ours, reference in zip(blocks, whole, strict=True):
        torch.testing.assert_close(ours, reference)
    totals = blocks[1]
    assert torch.equal(totals[:, [COUNT, HITS]], whole[1][:, [COUNT, HITS]]) and totals[ARTICLE, HITS] >= 1


def test_under_cpu_bf16_autocast_the_head_inside_the_loss_runs_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bf16 logits as the whole head's, so the same sums; float32 gradients for float32
    leaves, equal up to bf16 rounding (the blocks' weight gradients add up in float32)."""
    monkeypatch.setattr(loss, "HEAD_BLOCK_ROWS", 5)
    hidden, head, targets = hidden_and_head()
    article_loss = loss.ArticleLoss(tables(5.0))

    def whole(h: torch.Tensor, w: torch.Tensor) -> LossParts:
        logits = F.linear(h, w)
        assert logits.dtype == torch.bfloat16
        return weighted_cross_entropy(logits, targets, tables(5.0))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        blocks = head_loss_and_gradients(lambda h, w: article_loss.from_hidden(h, w, targets), hidden, head)
        reference = head_loss_and_gradients(whole, hidden, head)
    torch.testing.assert_close(blocks[:2], reference[:2])
    for ours, theirs in zip(blocks[2:], reference[2:], strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2 * theirs.abs().max().item())


@pytest.mark.parametrize("trained", [("hidden", "head"), ("hidden",), ("head",)])
def test_the_head_inside_the_loss_computes_the_gradients_asked_for(
    trained: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever of hidden states (here (N, d)) and head need a gradient, the head runs inside the loss
    and gives whole logits' gradients for those, and none for the other."""
    monkeypatch.setattr(loss, "HEAD_BLOCK_ROWS", 5)
    hidden, head, targets = hidden_and_head()
    hidden, targets = hidden.flatten(0, 1), targets.flatten()
    article_loss = loss.ArticleLoss(tables(5.0))
    blocks = head_loss_and_gradients(lambda h, w: article_loss.from_hidden(h, w, targets), hidden, head, trained)
    whole = head_loss_and_gradients(lambda h, w: whole_logits(h, w, targets), hidden, head, trained)
    assert type(blocks[0].grad_fn).__name__ == "_HeadLossBackward"
    for our_grad, reference_grad in zip(blocks[2:], whole[2:], strict=True):
        assert (our_grad is None) == (reference_grad is None)
        if reference_grad is not None:
            torch.testing.assert_close(our_grad, reference_grad)


def test_the_head_inside_the_loss_refuses_a_second_derivative() -> None:
    """Its backward is not differentiable: a gradient penalty must fail, not treat it as a constant."""
    hidden, head, targets = hidden_and_head()
    hidden.requires_grad_()
    parts = loss.ArticleLoss(tables(5.0)).from_hidden(hidden, head, targets)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(parts.weighted_sum, hidden, create_graph=True)
    (grad,) = torch.autograd.grad(parts.weighted_sum, hidden)  # a first derivative still works
    assert grad.shape == hidden.shape


def test_without_gradients_the_head_inside_the_loss_forms_the_logits() -> None:
    hidden, head, targets = hidden_and_head()
    article_loss = loss.ArticleLoss(tables(5.0))
    with torch.no_grad():
        parts = article_loss.from_hidden(hidden, head, targets)
    eager = whole_logits(hidden, head, targets)
    assert torch.equal(parts.weighted_sum, eager.weighted_sum) and torch.equal(parts.totals, eager.totals)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def replayed_and_eager(article_loss: loss.ArticleLoss, seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Weighted sum, totals and logits gradient from `article_loss`, then from the eager loss, on CUDA."""
    logits, targets = (t.cuda() for t in batch(seed=seed))
    results = []
    for compute in (article_loss, functools.partial(weighted_cross_entropy, tables=article_loss.tables)):
        leaf = logits.to(dtype).clone().requires_grad_()
        parts = compute(leaf, targets)
        parts.weighted_sum.backward()
        results += [parts.weighted_sum, parts.totals, leaf.grad]
    return results


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_the_loss_is_captured_once_per_shape_and_replays_the_eager_numbers(dtype: torch.dtype) -> None:
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")))
    for seed in (0, 1):  # the capture, then a replay
        replayed_sum, replayed_totals, replayed_grad, *eager = replayed_and_eager(article_loss, seed, dtype)
        for replayed, reference in zip([replayed_sum, replayed_totals, replayed_grad], eager, strict=True):
            torch.testing.assert_close(replayed, reference)
    (key, captured), *_ = article_loss.graphs.items()
    assert len(article_loss.graphs) == 1 and key[1:] == (48, VOCAB) and captured.replays == 2
    for rows in range(1, 1 + 2 * loss.ArticleLoss.MAX_GRAPHS):  # more shapes than it keeps graphs for
        logits, targets = (t.cuda() for t in batch(shape=(3, 5 + rows)))
        article_loss(logits.requires_grad_(), targets).weighted_sum.backward()
    assert len(article_loss.graphs) == loss.ArticleLoss.MAX_GRAPHS


@needs_cuda
def test_on_cuda_logits_beyond_the_graph_bound_run_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss.ArticleLoss, "MAX_GRAPH_LOGITS", 47 * VOCAB)  # one row fewer than the batch
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")))
    replayed_sum, *_, eager_sum, _, _ = replayed_and_eager(article_loss, 0, torch.float32)
    assert list(article_loss.graphs.values()) == [None] and torch.equal(replayed_sum, eager_sum)


@needs_cuda
def test_on_cuda_a_loss_that_cannot_be_captured_runs_eagerly_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = loss._sums_and_gradient

    def syncing(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        weighted_sum, totals = real(*args, **kwargs)
        totals.sum().item()  # a host sync: not allowed while a stream is being captured
        return weighted_sum, totals

    monkeypatch.setattr(loss, "_sums_and_gradient", syncing)
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")))
    with pytest.warns(RuntimeWarning, match="capturing the article loss in a CUDA graph failed"):
        replayed_sum, *_, eager_sum, _, _ = replayed_and_eager(article_loss, 0, torch.float32)
    assert list(article_loss.graphs.values()) == [None] and torch.equal(replayed_sum, eager_sum)
