"""CUDA: the output head, the weighted loss, its breakdown and both gradients captured in a CUDA graph
per batch shape and replayed. One launch where the head and the reference loss take dozens, and a
backward that only scales the two gradients the graph left.

Measured with `python -m bench loss_overhead` on an H100 (tiny preset, fp32, 4,096 tokens per step):
the reference loss made a step 1.11x as long as plain cross-entropy, the replayed one 1.02-1.05x
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tstool.training.loss import HeadLoss, LossParts, LossTables, breakdown, top1_hits

# A graph's key: device, rows, vocabulary, width, and the dtypes of the products, hidden and weight.
_GraphKey = tuple[torch.device, int, int, int, torch.dtype, torch.dtype, torch.dtype]


@torch.no_grad()
def _sums_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`weighted_cross_entropy`'s weighted sum and totals for float32 logits (N, V) and targets (N,),
    and the weighted sum's gradient w (softmax - onehot(target)), written over `logits` (which must be
    a copy: the logit offset is added in place). One fixed
    sequence of kernels with no host sync, so that it can be captured."""
    if tables.logit_offset is not None:
        logits.add_(tables.logit_offset)
    kept = targets != ignore_index
    safe_targets = targets.masked_fill(~kept, 0)
    weights = tables.weight[safe_targets] * kept
    is_article = tables.is_article[safe_targets]
    hits = top1_hits(logits, safe_targets) & is_article
    log_probs = torch.log_softmax(logits, dim=1)
    ce = log_probs.gather(1, safe_targets[:, None]).squeeze(1).neg() * kept
    gradient = torch.exp(log_probs, out=logits).mul_(weights[:, None])
    gradient.scatter_add_(1, safe_targets[:, None], -weights[:, None])
    return (weights * ce).sum(), breakdown(ce, weights, is_article, hits, kept), gradient


def _head_sums_and_gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    tables: LossTables,
    ignore_index: int,
    grad_dtypes: tuple[torch.dtype, torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss's two sums for the head's logits hidden (N, d) @ weight (V, d)^T, and the weighted sum's
    gradients of hidden and weight in `grad_dtypes` (those of the leaves they reach)."""
    logits = hidden @ weight.t()
    weighted_sum, totals, gradient = _sums_and_gradient(logits.float(), targets, tables, ignore_index)
    gradient = gradient.to(logits.dtype)  # rounded once, as autocast's gradient would be
    hidden_dtype, weight_dtype = grad_dtypes
    return weighted_sum, totals, (gradient @ weight).to(hidden_dtype), (gradient.t() @ hidden).to(weight_dtype)


@dataclass
class _Captured:
    """Static buffers of the head and loss captured for one shape, and how to recompute them."""

    replay: Callable[[], None]  # recomputes the outputs below from `hidden`, `weight` and `targets`
    hidden: torch.Tensor  # (N, d) input, in the products' dtype
    weight: torch.Tensor  # (V, d) input, in the products' dtype
    targets: torch.Tensor  # (N,) int64 input
    weighted_sum: torch.Tensor
    totals: torch.Tensor
    grad_hidden: torch.Tensor  # (N, d), the weighted sum's gradients, in the dtypes of the leaves
    grad_weight: torch.Tensor  # (V, d)
    replays: int = 0


class _ReplayedHeadLoss(torch.autograd.Function):
    """Autograd's view of a captured head and loss: forward replays them, backward scales the two
    gradients they left."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, captured: _Captured
    ) -> tuple[torch.Tensor, torch.Tensor]:
        captured.hidden.copy_(hidden)
        captured.weight.copy_(weight)
        captured.targets.copy_(targets)
        captured.replay()
        captured.replays += 1
        ctx.captured, ctx.replay = captured, captured.replays
        ctx.set_materialize_grads(False)  # the totals get no gradient: no zeros made for them
        totals = captured.totals.clone()
        ctx.mark_non_differentiable(totals)
        return captured.weighted_sum.clone(), totals

    @staticmethod
    def backward(ctx: Any, grad_sum: torch.Tensor, _grad_totals: None) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # the gradients were computed without a graph
            raise RuntimeError(
                "the replayed loss has no second derivative: for create_graph, use train.fast_paths=false"
            )
        captured: _Captured = ctx.captured
        if captured.replays != ctx.replay:  # the buffers hold a later batch's gradients
            raise RuntimeError(
                "the replayed loss ran again on a batch of this shape before this loss's backward: "
                "call backward after each loss, as a training step does"
            )
        grad_hidden, grad_weight = torch._foreach_mul([captured.grad_hidden, captured.grad_weight], grad_sum)
        wants_hidden, wants_weight = ctx.needs_input_grad[:2]
        return (grad_hidden if wants_hidden else None, grad_weight if wants_weight else None, None, None)


class CudaGraphHeadLoss(HeadLoss):
    """`HeadLoss` with the head and loss replayed from a CUDA graph when training. Without gradients
    (evaluation), beyond the first MAX_GRAPHS shapes, above MAX_GRAPH_LOGITS, under fp16 autocast
    (whose loss scale must reach the gradient before its fp16 products) and where capture fails
    (after a warning), the reference path runs."""

    MAX_GRAPHS = 4
    # A bound on what a graph holds for the whole run: its logits and their float32 copies.
    MAX_GRAPH_LOGITS = 2**27

    def __init__(self, tables: LossTables, ignore_index: int = -100) -> None:
        super().__init__(tables, ignore_index)
        self.graphs: dict[_GraphKey, _Captured | None] = {}  # None: no graph for that key

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> LossParts:
        trains = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
        if not (trains and hidden.is_cuda):
            return super().__call__(hidden, head_weight, targets)
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if autocast else hidden.dtype
        rows = hidden.reshape(-1, hidden.size(-1))
        captured = self._graph(rows, head_weight, dtype)
        if captured is None:
            return super().__call__(hidden, head_weight, targets)
        with torch.autocast("cuda", enabled=False) if autocast else contextlib.nullcontext():  # the graph casts
            weighted_sum, totals = _ReplayedHeadLoss.apply(rows, head_weight, targets.reshape(-1), captured)
        return LossParts(weighted_sum=weighted_sum, totals=totals)

    def _graph(self, hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> _Captured | None:
        """The graph for hidden (N, d) and weight (V, d) with products in `dtype`, captured on first use."""
        (rows, width), vocab = hidden.shape, weight.size(0)
        if dtype == torch.float16:
            return None
        key = (hidden.device, rows, vocab, width, dtype, hidden.dtype, weight.dtype)
        if key not in self.graphs and len(self.graphs) < self.MAX_GRAPHS:
            self.graphs[key] = self._capture(key) if rows * vocab <= self.MAX_GRAPH_LOGITS else None
        return self.graphs.get(key)

    def _capture(self, key: _GraphKey) -> _Captured | None:
        device, rows, vocab, width, dtype, hidden_dtype, weight_dtype = key
        try:
            with torch.cuda.device(device):
                hidden = torch.zeros(rows, width, dtype=dtype, device=device)
                weight = torch.zeros(vocab, width, dtype=dtype, device=device)
                targets = torch.zeros(rows, dtype=torch.long, device=device)
                inputs = (hidden, weight, targets, self.tables, self.ignore_index, (hidden_dtype, weight_dtype))
                side = torch.cuda.Stream(device)  # warm up off the default stream, as capture requires
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    _head_sums_and_gradients(*inputs)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = _head_sums_and_gradients(*inputs)
        except Exception as exc:  # out of memory, or an operation this PyTorch cannot capture
            first_line = (str(exc).strip().splitlines() or [""])[0]
            warnings.warn(
                f"capturing the loss in a CUDA graph failed ({type(exc).__name__}: {first_line}); "
                "it runs without one: the same numbers, a slower step",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return _Captured(graph.replay, hidden, weight, targets, *outputs)
