import importlib.util
import math
import sys
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tstool.training import loss
from tstool.config import ModelConfig
from tstool.training.loss import (
    ARTICLE,
    CE,
    COUNT,
    HITS,
    OTHER,
    WEIGHT,
    LossParts,
    LossTables,
    _article_hits,
    weighted_cross_entropy,
)
from tstool.model.llama import Model

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
    monkeypatch.setattr(loss, "HEAD_BLOCK_LOGITS", 5 * VOCAB)
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
    monkeypatch.setattr(loss, "HEAD_BLOCK_LOGITS", 5 * VOCAB)
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
    monkeypatch.setattr(loss, "HEAD_BLOCK_LOGITS", 5 * VOCAB)
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


needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="the fused loss needs Triton (the dev extra installs it)"
)
# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (set up in conftest.py).
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


with_and_without_triton = pytest.mark.parametrize(
    "fused", [pytest.param(True, marks=needs_triton), False], ids=["Triton kernels", "ATen operations"]
)


def captured_eagerly(dtype: torch.dtype, fused: bool, rows: int = 48, width: int = 16) -> loss._Captured:
    """The replay protocol of `ArticleLoss.from_hidden` on CUDA, with static buffers on TRITON_DEVICE
    recomputed eagerly (no graph): the head's products in `dtype`, the loss through Triton or ATen, the
    gradients in float32, the dtype of the leaves they reach."""
    hidden = torch.zeros(rows, width, dtype=dtype, device=TRITON_DEVICE)
    weight = torch.zeros(VOCAB, width, dtype=dtype, device=TRITON_DEVICE)
    targets = torch.zeros(rows, dtype=torch.long, device=TRITON_DEVICE)
    inputs = (hidden, weight, targets, tables(5.0).to(TRITON_DEVICE), IGNORE, fused, (torch.float32, torch.float32))
    outputs = loss._head_sums_and_gradients(*inputs)

    def replay() -> None:
        for output, value in zip(outputs, loss._head_sums_and_gradients(*inputs), strict=True):
            output.copy_(value)

    return loss._Captured(replay, hidden, weight, targets, *outputs)


def replayed(captured: loss._Captured, targets: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], LossParts]:
    def compute(hidden: torch.Tensor, head: torch.Tensor) -> LossParts:
        weighted_sum, totals = loss._ReplayedHeadLoss.apply(hidden.flatten(0, 1), head, targets.flatten(), captured)
        return LossParts(weighted_sum, totals)

    return compute


@with_and_without_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_replayed_head_and_loss_give_the_numbers_and_gradients_of_whole_logits(
    dtype: torch.dtype, fused: bool
) -> None:
    """What a CUDA graph replays, run eagerly: float32, or the products in bf16 as under autocast, with
    float32 gradients for float32 leaves scaled by the upstream gradient."""
    hidden, head, targets = (t.to(TRITON_DEVICE) for t in hidden_and_head())
    captured = captured_eagerly(dtype, fused)
    ours = head_loss_and_gradients(replayed(captured, targets), hidden, head)
    with torch.autocast(TRITON_DEVICE.type, dtype=dtype, enabled=dtype != torch.float32):
        reference = head_loss_and_gradients(
            lambda h, w: weighted_cross_entropy(F.linear(h, w), targets, tables(5.0).to(TRITON_DEVICE)), hidden, head
        )
    assert captured.replays == 1 and not ours[1].requires_grad
    torch.testing.assert_close(ours[:2], reference[:2])
    assert torch.equal(ours[1][:, [COUNT, HITS]], reference[1][:, [COUNT, HITS]]) and ours[1][ARTICLE, HITS] >= 1
    assert all(grad.dtype == torch.float32 for grad in ours[2:])
    assert_gradients_close(ours[2:], reference[2:], dtype)


def assert_gradients_close(ours: list[torch.Tensor], reference: list[torch.Tensor], dtype: torch.dtype) -> None:
    """Up to float32 rounding (on a GPU, Triton's exp is its fast approximation, within ~1e-4 of the sum
    of |terms|), or to bf16 rounding."""
    for our_grad, reference_grad in zip(ours, reference, strict=True):
        relative = 1e-4 if dtype == torch.float32 else 2e-2
        tolerance = {"rtol": relative, "atol": relative * reference_grad.abs().max().item()}
        torch.testing.assert_close(our_grad, reference_grad, **tolerance)


def test_a_replayed_loss_refuses_a_backward_after_a_later_replay_and_a_second_derivative() -> None:
    """The buffers hold only the latest batch's gradients: an earlier loss's backward would be wrong."""
    hidden, head, targets = hidden_and_head()
    captured = captured_eagerly(torch.float32, fused=False)
    compute = replayed(captured, targets)
    first = compute(hidden.requires_grad_(), head).weighted_sum
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(first, hidden, create_graph=True)
    compute(hidden_and_head(seed=1)[0], head)
    with pytest.raises(RuntimeError, match="ran again on a batch of this shape before this loss's backward"):
        first.backward()


def fused_and_eager(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weighted sum, totals and logits gradient (upstream gradient 2) from the Triton kernels, then from
    the eager loss, on TRITON_DEVICE."""
    from tstool.training.fused_loss import FusedArticleLoss

    logits, targets = logits.to(TRITON_DEVICE), targets.to(TRITON_DEVICE)
    on_device = tables(5.0).to(TRITON_DEVICE)
    results = []
    for compute in (
        lambda leaf: FusedArticleLoss.apply(leaf, targets.flatten(), on_device, ignore_index),
        lambda leaf: astuple(weighted_cross_entropy(leaf, targets.flatten(), on_device, ignore_index)),
    ):
        leaf = logits.flatten(0, 1).clone().requires_grad_()
        weighted_sum, totals = compute(leaf)
        (2 * weighted_sum).backward()
        results.append([weighted_sum, totals, leaf.grad])
    return results[0], results[1]


def astuple(parts: LossParts) -> tuple[torch.Tensor, torch.Tensor]:
    return parts.weighted_sum, parts.totals


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_columns", [8192, 16])  # a row in one step; in four, the last one short
def test_the_fused_loss_gives_the_eager_numbers(
    dtype: torch.dtype, block_columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sums, counts, hits and the gradient in the logits' dtype, for 21 rows (not a whole number of
    programs) with ignored targets, article hits and misses."""
    from tstool.training import fused_loss

    monkeypatch.setattr(fused_loss, "MAX_BLOCK_COLUMNS", block_columns)
    logits, targets = batch(shape=(3, 7))
    (fused_sum, fused_totals, fused_grad), (eager_sum, eager_totals, eager_grad) = fused_and_eager(
        logits.to(dtype), targets
    )
    assert fused_sum.dtype == torch.float32 and fused_totals.dtype == torch.float64 and fused_grad.dtype == dtype
    torch.testing.assert_close(fused_sum, eager_sum)
    torch.testing.assert_close(fused_totals, eager_totals)
    assert torch.equal(fused_totals[:, [WEIGHT, COUNT, HITS]], eager_totals[:, [WEIGHT, COUNT, HITS]])
    assert 1 <= fused_totals[ARTICLE, HITS] < fused_totals[ARTICLE, COUNT]
    # bf16, fp16: the same float32 gradient, rounded once; an ulp apart where the softmax rounds differently
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2 * eager_grad.abs().max().item()}
    torch.testing.assert_close(fused_grad, eager_grad, **tolerance)
    ignored_rows = targets.flatten() == IGNORE
    assert ignored_rows.any() and not fused_grad[ignored_rows.to(TRITON_DEVICE)].any()


@needs_triton
def test_the_fused_hit_test_counts_ties_as_misses_across_column_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target tied by a logit in a later block of columns is a miss; alone on top, a hit."""
    from tstool.training import fused_loss

    monkeypatch.setattr(fused_loss, "MAX_BLOCK_COLUMNS", 16)
    logits = torch.zeros(3, 1, VOCAB)
    logits[:, 0, ARTICLES[0]] = 2.0
    logits[0, 0, 40] = 2.0  # a tie, three blocks on
    logits[2, 0, 41] = 3.0  # above the target
    targets = torch.full((3, 1), ARTICLES[0])
    (_, fused_totals, _), (_, eager_totals, _) = fused_and_eager(logits, targets)
    assert fused_totals[ARTICLE, HITS] == eager_totals[ARTICLE, HITS] == 1


@needs_triton
@pytest.mark.parametrize("ignore_index", [-1, VOCAB, 20])
def test_the_fused_loss_ignores_any_ignore_index(ignore_index: int) -> None:
    """An ignore_index outside the vocabulary, or a token ID, counts nowhere and gets no gradient."""
    logits, targets = batch()
    targets = targets.masked_fill(targets == 20, 21).masked_fill(targets == IGNORE, ignore_index)
    (fused_sum, fused_totals, fused_grad), (eager_sum, eager_totals, eager_grad) = fused_and_eager(
        logits, targets, ignore_index
    )
    assert fused_totals[:, COUNT].sum() == 46
    torch.testing.assert_close([fused_sum, fused_totals, fused_grad], [eager_sum, eager_totals, eager_grad])


@needs_triton
def test_the_fused_loss_reads_and_writes_rows_that_are_not_contiguous_with_each_other() -> None:
    """Logits that are a slice of wider rows: the autograd Function reads them, and the graph's
    in-place gradient lands in the slice, leaving the rest of each row alone."""
    from tstool.training import fused_loss

    logits, targets = batch(shape=(3, 7))
    wide = torch.randn(21, VOCAB + 7, device=TRITON_DEVICE)
    wide[:, :VOCAB] = logits.flatten(0, 1)
    (fused_sum, fused_totals, fused_grad), eager = fused_and_eager(wide[:, :VOCAB].unflatten(0, (3, 7)), targets)
    torch.testing.assert_close([fused_sum, fused_totals, fused_grad], eager)
    tail = wide[:, VOCAB:].clone()
    on_device = tables(5.0).to(TRITON_DEVICE)
    fused_loss.sums_and_gradient(wide[:, :VOCAB], targets.flatten().to(TRITON_DEVICE), on_device, IGNORE)
    torch.testing.assert_close(wide[:, :VOCAB], eager[2] / 2)  # upstream 1 here, 2 in `fused_and_eager`
    assert torch.equal(wide[:, VOCAB:], tail)


@needs_triton
def test_the_fused_loss_takes_a_first_block_of_minus_infinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masked-out logits (-inf) filling a whole block of columns before the finite ones: the online
    logsumexp starts at -inf without computing -inf - -inf."""
    from tstool.training import fused_loss

    monkeypatch.setattr(fused_loss, "MAX_BLOCK_COLUMNS", 16)
    logits, targets = batch()
    logits[..., :16] = float("-inf")
    targets = targets.masked_fill((targets >= 0) & (targets < 16), 20)
    fused, eager = fused_and_eager(logits, targets)
    assert torch.isfinite(fused[0])
    torch.testing.assert_close(fused, eager)


def test_without_triton_the_loss_warns_once_and_runs_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Triton is missing (macOS, a CPU-only install), the first try of the kernels warns, and
    later calls do not try again."""
    import tstool

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "tstool.training.fused_loss", raising=False)
    monkeypatch.delattr(tstool, "fused_loss", raising=False)
    article_loss = loss.ArticleLoss(tables(5.0))
    with pytest.warns(
        RuntimeWarning, match=r"the fused Triton loss cannot run here \(ModuleNotFoundError: import of triton"
    ):
        assert not article_loss._fused_runs(torch.device("cpu"), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not article_loss._fused_runs(torch.device("cpu"), torch.float32)
    assert article_loss.triton_runs == {torch.float32: False}


def test_under_fp16_autocast_the_head_and_loss_are_not_replayed() -> None:
    """fp16's loss scale has to reach the gradient before the head's fp16 gradient products, which
    a graph forms without it; the logits are formed instead and the loss gets the scaled gradient."""
    hidden, head, _ = hidden_and_head()
    article_loss = loss.ArticleLoss(tables(5.0))
    assert article_loss._graph(hidden.flatten(0, 1), head, torch.float16) is None and not article_loss.graphs


@needs_triton
def test_the_fused_loss_refuses_a_second_derivative() -> None:
    from tstool.training.fused_loss import FusedArticleLoss

    logits, targets = (t.to(TRITON_DEVICE) for t in batch())
    leaf = logits.flatten(0, 1).requires_grad_()
    weighted_sum, _ = FusedArticleLoss.apply(leaf, targets.flatten(), tables(5.0).to(TRITON_DEVICE), IGNORE)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(weighted_sum, leaf, create_graph=True)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda_and_whole_logits(article_loss: loss.ArticleLoss, dtype: torch.dtype, seed: int = 0, rows: int = 48) -> list:
    """Weighted sum, totals and the gradients of hidden and head from `article_loss.from_hidden`, then
    from whole logits and the eager loss; on CUDA, under autocast to `dtype` unless float32."""
    hidden, head, targets = (t.cuda() for t in hidden_and_head(seed, rows))
    results = []
    for compute in (
        lambda h, w: article_loss.from_hidden(h, w, targets),
        lambda h, w: weighted_cross_entropy(F.linear(h, w), targets, article_loss.tables),
    ):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            results.append(head_loss_and_gradients(compute, hidden, head))
    return results


def assert_close_to_whole_logits(ours: list, reference: list, dtype: torch.dtype) -> None:
    torch.testing.assert_close(ours[:2], reference[:2])
    assert_gradients_close(ours[2:], reference[2:], dtype)


@needs_cuda
@with_and_without_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_the_head_and_loss_are_captured_once_per_shape_and_replay_whole_logits_numbers(
    dtype: torch.dtype, fused: bool
) -> None:
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")), fused=fused)
    for seed in (0, 1):  # the capture, then a replay
        assert_close_to_whole_logits(*on_cuda_and_whole_logits(article_loss, dtype, seed), dtype)
    (key, captured), *_ = article_loss.graphs.items()
    assert len(article_loss.graphs) == 1 and key[1:] == (48, VOCAB, 16, dtype, torch.float32, torch.float32)
    assert captured.replays == 2 and captured.grad_weight.dtype == torch.float32
    assert article_loss.triton_runs == ({dtype: True} if fused else {})
    for rows in range(24, 24 + 8 * loss.ArticleLoss.MAX_GRAPHS, 4):  # more shapes than it keeps graphs for
        on_cuda_and_whole_logits(article_loss, dtype, rows=rows)
    assert len(article_loss.graphs) == loss.ArticleLoss.MAX_GRAPHS


@needs_cuda
@with_and_without_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_logits_beyond_the_graph_bound_run_without_a_graph(
    dtype: torch.dtype, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's logits, then the loss: with Triton, through the kernels' own autograd Function."""
    monkeypatch.setattr(loss.ArticleLoss, "MAX_GRAPH_LOGITS", 47 * VOCAB)  # one row fewer than the batch
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")), fused=fused)
    hidden, head, targets = (t.cuda() for t in hidden_and_head())
    backward = type(article_loss.from_hidden(hidden.requires_grad_(), head, targets).weighted_sum.grad_fn).__name__
    assert backward == ("FusedArticleLossBackward" if fused else "SumBackward0")
    assert_close_to_whole_logits(*on_cuda_and_whole_logits(article_loss, dtype), dtype)
    assert article_loss.graphs and not any(article_loss.graphs.values())


@needs_cuda
def test_on_cuda_a_loss_that_cannot_be_captured_runs_without_a_graph_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = loss._sums_and_gradient

    def syncing(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        weighted_sum, totals = real(*args, **kwargs)
        totals.sum().item()  # a host sync: not allowed while a stream is being captured
        return weighted_sum, totals

    monkeypatch.setattr(loss, "_sums_and_gradient", syncing)
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")), fused=False)
    with pytest.warns(RuntimeWarning, match="capturing the article loss in a CUDA graph failed"):
        ours, reference = on_cuda_and_whole_logits(article_loss, torch.float32)
    assert list(article_loss.graphs.values()) == [None] and torch.equal(ours[0], reference[0])


@needs_cuda
@needs_triton
def test_on_cuda_where_the_triton_kernels_cannot_run_the_loss_runs_without_them_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing Triton, or compiler for its launcher, shows when the kernels are first tried: the CUDA
    graph of ATen operations takes over, with the same numbers."""
    import tstool.training.fused_loss

    def fails(*args: object) -> None:
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(tstool.training.fused_loss, "sums_and_gradient", fails)
    article_loss = loss.ArticleLoss(tables(5.0).to(torch.device("cuda")))
    with pytest.warns(RuntimeWarning, match=r"the fused Triton loss cannot run here \(RuntimeError: Failed to find C"):
        ours, reference = on_cuda_and_whole_logits(article_loss, torch.float32)
    assert article_loss.triton_runs == {torch.float32: False} and len(article_loss.graphs) == 1
    assert_close_to_whole_logits(ours, reference, torch.float32)
