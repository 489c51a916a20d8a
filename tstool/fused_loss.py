"""The article loss on CUDA as two Triton kernels: one pass over the logits forward, one backward.

`weighted_cross_entropy` on a GPU launches some twenty kernels and makes several passes over the
(N, V) logits (a float32 copy, log-softmax, the hit test, the gradient); plain CE makes about six
(log-softmax and nll forward and backward). Here the forward reads each row once, computing its
logsumexp online, its target logit and the largest other logit (the hit test), and adds the row's CE,
weight, count and hit to the sums of its category; the backward reads the row again and writes
w (softmax - onehot(target)) times the upstream gradient, in the logits' dtype. No float32 copy of
bf16 logits, no (N, V) buffer but the gradient, no host sync.

Importing this module needs Triton (on Linux it comes with PyTorch's CUDA builds). The kernels run on
CUDA tensors, or on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1 before the import), which
is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl

from tstool.loss import (
    ARTICLE,
    CE,
    COUNT,
    HITS,
    IGNORED,
    WEIGHT,
    LossTables,
    refuse_second_derivative,
    sums_dtype,
)

# Columns of a row read per step of a kernel's loop: a 4,096-token vocabulary is one step, GPT-2's seven.
MAX_BLOCK_COLUMNS = 8192
# Rows each forward program handles, adding their sums once: fewer atomic additions to the same
# thirteen addresses than one row per program, and still thousands of programs for a training batch.
ROWS_PER_PROGRAM = 4
# `sums`, the forward's accumulator: `LossParts.totals` row by row (OTHER, ARTICLE, then IGNORED, which
# is dropped), then the weighted sum; padded to a power of two for Triton.
_COLUMNS = HITS + 1
_WEIGHTED_SUM = (IGNORED + 1) * _COLUMNS
_SUMS_SIZE = 16


@triton.jit
def _forward_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    weight_ptr,
    category_ptr,
    logsumexp_ptr,
    sums_ptr,
    rows,
    vocab,
    ignore_index,
    ARTICLE_CATEGORY: tl.constexpr,
    COLUMNS: tl.constexpr,
    CE_COLUMN: tl.constexpr,
    WEIGHT_COLUMN: tl.constexpr,
    COUNT_COLUMN: tl.constexpr,
    HITS_COLUMN: tl.constexpr,
    WEIGHTED_SUM: tl.constexpr,
    SUMS_SIZE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
):
    slots = tl.arange(0, SUMS_SIZE)
    sums = tl.zeros((SUMS_SIZE,), tl.float64)
    for i in range(ROWS):
        row = tl.program_id(0) * ROWS + i
        in_batch, past_end = row < rows, row >= rows
        row = tl.minimum(row, rows - 1)  # past the end: read the last row again, count it as ignored
        target = tl.load(targets_ptr + row)
        ignored = (target == ignore_index) | past_end
        column = tl.where(ignored, 0, target)  # a valid column to read
        row_logits = logits_ptr + row.to(tl.int64) * row_stride
        target_logit = tl.load(row_logits + column).to(tl.float32)
        best = tl.full((), float("-inf"), tl.float32)
        best_other = tl.full((), float("-inf"), tl.float32)  # the largest logit but the target's
        total = tl.full((), 0.0, tl.float32)  # sum of exp(logit - best)
        for start in range(0, vocab, BLOCK_COLUMNS):
            columns = start + tl.arange(0, BLOCK_COLUMNS)
            x = tl.load(row_logits + columns, mask=columns < vocab, other=float("-inf")).to(tl.float32)
            new_best = tl.maximum(best, tl.max(x, 0))
            shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # no -inf - -inf while all are -inf
            total = total * tl.exp(best - shift) + tl.sum(tl.exp(x - shift), 0)
            best = new_best
            best_other = tl.maximum(best_other, tl.max(tl.where(columns == column, float("-inf"), x), 0))
        logsumexp = best + tl.log(total)
        tl.store(logsumexp_ptr + row, logsumexp, mask=in_batch)
        slot = tl.where(ignored, vocab, target)  # the tables' extra slot holds the ignored target's
        weight = tl.load(weight_ptr + slot).to(tl.float64)
        category = tl.load(category_ptr + slot)
        ce = tl.where(ignored, 0.0, logsumexp - target_logit).to(tl.float64)
        hit = ((category == ARTICLE_CATEGORY) & (target_logit > best_other)).to(tl.float64)
        first = category * COLUMNS  # this row's category's sums
        sums += tl.where(slots == first + CE_COLUMN, ce, 0.0)
        sums += tl.where(slots == first + WEIGHT_COLUMN, weight, 0.0)
        sums += tl.where(slots == first + COUNT_COLUMN, 1.0, 0.0)
        sums += tl.where(slots == first + HITS_COLUMN, hit, 0.0)
        sums += tl.where(slots == WEIGHTED_SUM, weight * ce, 0.0)
    tl.atomic_add(sums_ptr + slots, sums, mask=slots <= WEIGHTED_SUM)


@triton.jit
def _backward_kernel(
    logits_ptr,
    row_stride,
    grad_ptr,
    grad_row_stride,
    targets_ptr,
    weight_ptr,
    logsumexp_ptr,
    upstream_ptr,
    vocab,
    ignore_index,
    BLOCK_COLUMNS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row)
    ignored = target == ignore_index
    scale = tl.load(weight_ptr + tl.where(ignored, vocab, target)) * tl.load(upstream_ptr)  # 0 if ignored
    logsumexp = tl.load(logsumexp_ptr + row)
    row_logits, row_grad = logits_ptr + row * row_stride, grad_ptr + row * grad_row_stride
    for start in range(0, vocab, BLOCK_COLUMNS):
        columns = start + tl.arange(0, BLOCK_COLUMNS)
        in_row = columns < vocab
        x = tl.load(row_logits + columns, mask=in_row, other=0.0).to(tl.float32)
        grad = scale * (tl.exp(x - logsumexp) - tl.where(columns == target, 1.0, 0.0))
        tl.store(row_grad + columns, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Triton launches on the current CUDA device: make it the tensors' (on the CPU, in Triton's
    interpreter, there is none to set). `ArticleLoss` captures its graphs on their device already."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch_shape(vocab: int) -> tuple[int, int]:
    """Columns per loop step and warps per program for rows of `vocab` logits."""
    block = min(triton.next_power_of_2(vocab), MAX_BLOCK_COLUMNS)
    return block, 4 if block <= 2048 else 8


def _forward(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weighted sum (0-d float32), totals (2, 4) and each row's logsumexp (N,) of logits (N, V),
    whose rows are contiguous, against targets (N,)."""
    rows, vocab = logits.shape
    device = logits.device
    logsumexp = torch.empty(rows, dtype=torch.float32, device=device)
    sums = torch.zeros(_SUMS_SIZE, dtype=sums_dtype(device), device=device)
    block, warps = _launch_shape(vocab)
    _forward_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
        logits,
        logits.stride(0),
        targets,
        tables.weight,
        tables.category,
        logsumexp,
        sums,
        rows,
        vocab,
        ignore_index,
        ARTICLE_CATEGORY=ARTICLE,
        COLUMNS=_COLUMNS,
        CE_COLUMN=CE,
        WEIGHT_COLUMN=WEIGHT,
        COUNT_COLUMN=COUNT,
        HITS_COLUMN=HITS,
        WEIGHTED_SUM=_WEIGHTED_SUM,
        SUMS_SIZE=_SUMS_SIZE,
        ROWS=ROWS_PER_PROGRAM,
        BLOCK_COLUMNS=block,
        num_warps=warps,
    )
    return sums[_WEIGHTED_SUM].float(), sums[: IGNORED * _COLUMNS].view(IGNORED, _COLUMNS), logsumexp


def _write_gradient(
    grad: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    logsumexp: torch.Tensor,
    upstream: torch.Tensor,
    ignore_index: int,
) -> None:
    """Writes upstream * w (softmax - onehot(target)) into grad (N, V), whose rows are contiguous; grad
    may be logits itself, as each program reads a block of columns before it writes them."""
    rows, vocab = logits.shape
    block, warps = _launch_shape(vocab)
    _backward_kernel[(rows,)](
        logits,
        logits.stride(0),
        grad,
        grad.stride(0),
        targets,
        weight,
        logsumexp,
        upstream,
        vocab,
        ignore_index,
        BLOCK_COLUMNS=block,
        num_warps=warps,
    )


def sums_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`loss._sums_and_gradient`'s contract from the two kernels: the weighted sum and totals of logits
    (N, V) of any float dtype, whose rows are contiguous, and targets (N,), with the weighted sum's gradient written
    over the logits (computed in float32, rounded once to their dtype). A fixed sequence of kernels
    with no host sync, for `ArticleLoss` to capture in a CUDA graph."""
    weighted_sum, totals, logsumexp = _forward(logits, targets, tables, ignore_index)
    upstream = torch.ones((), dtype=torch.float32, device=logits.device)
    _write_gradient(logits, logits, targets, tables.weight, logsumexp, upstream, ignore_index)
    return weighted_sum, totals


class FusedArticleLoss(torch.autograd.Function):
    """`weighted_cross_entropy`'s weighted sum and totals for logits (N, V) of any float dtype and
    targets (N,), from the two kernels: the forward keeps each row's logsumexp, and the backward writes
    the logits' gradient directly."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        with on_device(logits.device):
            weighted_sum, totals, logsumexp = _forward(logits, targets, tables, ignore_index)
        ctx.save_for_backward(logits, targets, logsumexp)
        ctx.weight, ctx.ignore_index = tables.weight, ignore_index
        ctx.set_materialize_grads(False)  # the totals get no gradient: no zeros made for them
        ctx.mark_non_differentiable(totals)
        return weighted_sum, totals

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor, _grad_totals: None) -> tuple[torch.Tensor, None, None, None]:
        refuse_second_derivative("the fused article loss", "use weighted_cross_entropy")
        logits, targets, logsumexp = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        with on_device(logits.device):
            _write_gradient(
                grad, logits, targets, ctx.weight, logsumexp, upstream.float().contiguous(), ctx.ignore_index
            )
        return grad, None, None, None
