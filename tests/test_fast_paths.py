"""Every fast path against the reference loss (`weighted_cross_entropy` on the head's whole logits).

The CUDA graph's computation is also run eagerly on the CPU, so its arithmetic is tested without a GPU;
the capture and replay themselves need CUDA."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tstool.fast import cuda_graph_loss as graph_loss
from tstool.fast import head_loss
from tstool.training.loss import ARTICLE, COUNT, HITS, HeadLoss, LossParts, LossTables, weighted_cross_entropy

VOCAB = 50
ARTICLES = [3, 7, 11]
IGNORE = -100
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tables(device: torch.device | str = "cpu", logit_adjusted: bool = False) -> LossTables:
    weights, mask = torch.ones(VOCAB), torch.zeros(VOCAB, dtype=torch.bool)
    weights[ARTICLES], mask[ARTICLES] = 5.0, True
    return LossTables.build(weights, mask, logit_adjusted).to(torch.device(device))


def hidden_and_head(seed: int = 0, rows: int = 48, width: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states (4, rows/4, width), a head (VOCAB, width), and targets with articles, ignored
    positions, and one article target that has the top logit."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, rows // 4, width, generator=gen)
    head = torch.randn(VOCAB, width, generator=gen)
    targets = torch.randint(0, VOCAB, (4, rows // 4), generator=gen)
    targets[:, ::4] = ARTICLES[seed % 3]
    targets[0, 1] = IGNORE
    head[targets[1, 0]] = 5 * hidden[1, 0] / hidden[1, 0].norm()
    return hidden, head, targets


def loss_and_gradients(
    compute: Callable[[torch.Tensor, torch.Tensor], LossParts], hidden: torch.Tensor, head: torch.Tensor
) -> list[torch.Tensor]:
    """Weighted sum, totals, and the gradients of hidden and head under an upstream gradient of 2."""
    hidden, head = hidden.clone().requires_grad_(), head.clone().requires_grad_()
    parts = compute(hidden, head)
    (2 * parts.weighted_sum).backward()
    return [parts.weighted_sum, parts.totals, hidden.grad, head.grad]


def assert_matches_reference(ours: list[torch.Tensor], reference: list[torch.Tensor], dtype: torch.dtype) -> None:
    torch.testing.assert_close(ours[:2], reference[:2])
    assert torch.equal(ours[1][:, [COUNT, HITS]], reference[1][:, [COUNT, HITS]]) and ours[1][ARTICLE, HITS] >= 1
    relative = 1e-4 if dtype == torch.float32 else 2e-2
    for our_grad, reference_grad in zip(ours[2:], reference[2:], strict=True):
        torch.testing.assert_close(our_grad, reference_grad, rtol=relative, atol=relative * reference_grad.abs().max())


def test_the_seam_picks_the_reference_off_cuda_or_when_switched_off() -> None:
    assert type(head_loss(tables(), torch.device("cpu"))) is HeadLoss
    assert type(head_loss(tables(), torch.device("cuda"), enabled=False)) is HeadLoss
    assert type(head_loss(tables(), torch.device("cuda"))) is graph_loss.CudaGraphHeadLoss


def test_off_cuda_the_graph_loss_is_the_reference() -> None:
    hidden, head, targets = hidden_and_head()
    ours = loss_and_gradients(lambda h, w: graph_loss.CudaGraphHeadLoss(tables())(h, w, targets), hidden, head)
    reference = loss_and_gradients(lambda h, w: HeadLoss(tables())(h, w, targets), hidden, head)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def captured_eagerly(
    dtype: torch.dtype, rows: int = 48, width: int = 16, logit_adjusted: bool = False
) -> graph_loss._Captured:
    """What a CUDA graph replays, recomputed eagerly on the CPU: static buffers, the head's products in
    `dtype`, float32 gradients for float32 leaves."""
    hidden = torch.zeros(rows, width, dtype=dtype)
    weight = torch.zeros(VOCAB, width, dtype=dtype)
    targets = torch.zeros(rows, dtype=torch.long)
    inputs = (hidden, weight, targets, tables(logit_adjusted=logit_adjusted), IGNORE, (torch.float32, torch.float32))
    outputs = graph_loss._head_sums_and_gradients(*inputs)

    def replay() -> None:
        for output, value in zip(outputs, graph_loss._head_sums_and_gradients(*inputs), strict=True):
            output.copy_(value)

    return graph_loss._Captured(replay, hidden, weight, targets, *outputs)


def replayed(
    captured: graph_loss._Captured, targets: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], LossParts]:
    def compute(hidden: torch.Tensor, head: torch.Tensor) -> LossParts:
        weighted_sum, totals = graph_loss._ReplayedHeadLoss.apply(
            hidden.flatten(0, 1), head, targets.flatten(), captured
        )
        return LossParts(weighted_sum, totals)

    return compute


@pytest.mark.parametrize("logit_adjusted", [False, True], ids=["weighted", "logit-adjusted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_replayed_computation_gives_the_reference_numbers_and_gradients(
    dtype: torch.dtype, logit_adjusted: bool
) -> None:
    hidden, head, targets = hidden_and_head()
    captured = captured_eagerly(dtype, logit_adjusted=logit_adjusted)
    ours = loss_and_gradients(replayed(captured, targets), hidden, head)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        reference = loss_and_gradients(
            lambda h, w: weighted_cross_entropy(F.linear(h, w), targets, tables(logit_adjusted=logit_adjusted)),
            hidden,
            head,
        )
    assert captured.replays == 1 and not ours[1].requires_grad
    assert all(grad.dtype == torch.float32 for grad in ours[2:])
    assert_matches_reference(ours, reference, dtype)


def test_a_replayed_loss_refuses_a_backward_after_a_later_replay_and_a_second_derivative() -> None:
    """The buffers hold only the latest batch's gradients: an earlier loss's backward would be wrong."""
    hidden, head, targets = hidden_and_head()
    compute = replayed(captured_eagerly(torch.float32), targets)
    first = compute(hidden.requires_grad_(), head).weighted_sum
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(first, hidden, create_graph=True)
    compute(hidden_and_head(seed=1)[0], head)
    with pytest.raises(RuntimeError, match="ran again on a batch of this shape before this loss's backward"):
        first.backward()


def test_under_fp16_autocast_there_is_no_graph() -> None:
    """fp16's loss scale has to reach the gradient before the head's fp16 products, which a graph
    forms without it; the reference runs instead."""
    hidden, head, _ = hidden_and_head()
    loss = graph_loss.CudaGraphHeadLoss(tables())
    assert loss._graph(hidden.flatten(0, 1), head, torch.float16) is None and not loss.graphs


def on_cuda_and_reference(loss: graph_loss.CudaGraphHeadLoss, dtype: torch.dtype, seed: int = 0, rows: int = 48):
    hidden, head, targets = (t.cuda() for t in hidden_and_head(seed, rows))
    results = []
    for compute in (lambda h, w: loss(h, w, targets), lambda h, w: HeadLoss(loss.tables)(h, w, targets)):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            results.append(loss_and_gradients(compute, hidden, head))
    return results


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_a_graph_is_captured_once_per_shape_and_replays_the_reference(dtype: torch.dtype) -> None:
    loss = graph_loss.CudaGraphHeadLoss(tables("cuda"))
    for seed in (0, 1):  # the capture, then a replay
        assert_matches_reference(*on_cuda_and_reference(loss, dtype, seed), dtype)
    (key, captured), *_ = loss.graphs.items()
    assert len(loss.graphs) == 1 and key[1:] == (48, VOCAB, 16, dtype, torch.float32, torch.float32)
    assert captured.replays == 2
    for rows in range(24, 24 + 8 * loss.MAX_GRAPHS, 4):  # more shapes than it keeps graphs for
        on_cuda_and_reference(loss, dtype, rows=rows)
    assert len(loss.graphs) == loss.MAX_GRAPHS


@needs_cuda
def test_on_cuda_logits_beyond_the_bound_run_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_loss.CudaGraphHeadLoss, "MAX_GRAPH_LOGITS", 47 * VOCAB)  # one row fewer than the batch
    loss = graph_loss.CudaGraphHeadLoss(tables("cuda"))
    ours, reference = on_cuda_and_reference(loss, torch.float32)
    assert_matches_reference(ours, reference, torch.float32)
    assert loss.graphs and not any(loss.graphs.values())


@needs_cuda
def test_on_cuda_a_loss_that_cannot_be_captured_runs_the_reference_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = graph_loss._sums_and_gradient

    def syncing(*args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weighted_sum, totals, gradient = real(*args)
        totals.sum().item()  # a host sync: not allowed while a stream is being captured
        return weighted_sum, totals, gradient

    monkeypatch.setattr(graph_loss, "_sums_and_gradient", syncing)
    loss = graph_loss.CudaGraphHeadLoss(tables("cuda"))
    with pytest.warns(RuntimeWarning, match="capturing the loss in a CUDA graph failed"):
        ours, reference = on_cuda_and_reference(loss, torch.float32)
    assert list(loss.graphs.values()) == [None] and torch.equal(ours[0], reference[0])
