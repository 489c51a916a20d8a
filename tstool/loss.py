"""Weighted cross-entropy with an article/other breakdown, as sums that accumulate across micro-batches.

Per-token CE is computed once, in float32, and every number derives from it. Sums rather than means
are returned so the training loop can divide by the total weight of a whole optimizer step (all
micro-batches, all ranks): the mean of per-micro-batch means would weight short batches wrongly.
With a weight table of ones the weighted loss is plain cross-entropy through the same code path.

The breakdown costs a fixed number of tensor operations, whatever the batch or the number of article
IDs: each target's category (other, article, ignored) and weight come from one lookup each in
`LossTables`, and one `index_add_` sums CE, weight, count and top-1 hits per category. On a GPU, where
a small model's step is bound by how many operations are launched, not by arithmetic, this count is
what the breakdown costs (`python -m bench loss_overhead` prints it), so training there replays the
output head and the whole loss from a CUDA graph, with the loss in two Triton kernels
(`tstool.fused_loss`). Training on the CPU applies the head inside the loss a block of rows at a time,
so that the whole logits are never formed (`ArticleLoss.from_hidden`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Rows of `LossParts.totals`: the category of a target. Ignored targets are summed into a third row
# that is dropped, so that no masking is needed.
OTHER, ARTICLE, IGNORED = 0, 1, 2
# Columns of `LossParts.totals`: sums of CE, of weight, of targets, and of top-1 hits (articles only).
CE, WEIGHT, COUNT, HITS = 0, 1, 2, 3


def sums_dtype(device: torch.device) -> torch.dtype:
    """float64, which keeps counts exact far beyond any run, where the device has it; MPS has not, and
    float32 counts stay exact up to 2**24 (16.7M) targets per accumulated sum."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class LossTables:
    """Per-target lookups indexed by target ID, with one extra slot, index V, for ignored targets."""

    weight: torch.Tensor  # (V + 1,) float32: the loss weight of each target; 0 when ignored
    category: torch.Tensor  # (V + 1,) int64: OTHER or ARTICLE; IGNORED at index V

    @classmethod
    def build(cls, weight_table: torch.Tensor, article_mask: torch.Tensor) -> LossTables:
        """From weight_table (V,) float (`ArticleSet.weight_table`) and article_mask (V,) bool (`mask_table`)."""
        weight = torch.cat([weight_table.float(), weight_table.new_zeros(1, dtype=torch.float32)])
        category = torch.cat(
            [torch.where(article_mask, ARTICLE, OTHER), torch.full((1,), IGNORED, device=article_mask.device)]
        )
        return cls(weight, category)

    @classmethod
    def unweighted(cls, article_mask: torch.Tensor) -> LossTables:
        """Weight 1 for every target: plain CE with the article breakdown (evaluation, self-checks)."""
        return cls.build(torch.ones(article_mask.shape, device=article_mask.device), article_mask)

    @property
    def vocab_size(self) -> int:
        return self.weight.numel() - 1

    def to(self, device: torch.device) -> LossTables:
        return LossTables(self.weight.to(device), self.category.to(device))


@dataclass
class LossParts:
    """Sums over the non-ignored targets of one or more batches.

    `weighted_sum` (0-d float32) is the only tensor that carries gradient. `totals` (2, 4), in
    `sums_dtype`, holds for rows OTHER and ARTICLE the sums of CE, weight, targets and top-1 hits
    (counted for articles only).
    """

    weighted_sum: torch.Tensor
    totals: torch.Tensor

    VECTOR_SIZE = 9  # weighted_sum, then the totals row by row

    def __add__(self, other: LossParts) -> LossParts:
        return LossParts(self.weighted_sum + other.weighted_sum, self.totals + other.totals)

    def detach(self) -> LossParts:
        """A copy without autograd history, to accumulate across micro-steps without keeping graphs alive."""
        return LossParts(self.weighted_sum.detach(), self.totals)

    def as_vector(self) -> torch.Tensor:
        """Every sum in one vector of `totals`' dtype, e.g. for a single all-reduce across ranks."""
        return torch.cat([self.weighted_sum.detach().to(self.totals.dtype).reshape(1), self.totals.flatten()])

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> LossParts:
        """Inverse of `as_vector`."""
        return cls(vector[0], vector[1:].reshape(2, 4))

    @classmethod
    def zeros(cls, device: torch.device) -> LossParts:
        """The empty sum, to accumulate into."""
        return cls.from_vector(torch.zeros(cls.VECTOR_SIZE, dtype=sums_dtype(device), device=device))

    @property
    def weight_sum(self) -> torch.Tensor:
        return self.totals[:, WEIGHT].sum()

    @property
    def ce_sum(self) -> torch.Tensor:
        """Unweighted CE summed over every target."""
        return self.totals[:, CE].sum()

    @property
    def token_count(self) -> torch.Tensor:
        return self.totals[:, COUNT].sum()

    def metrics(self) -> dict[str, float | int | None]:
        """Plain-number metrics; a mean over no tokens is None. One device-to-host transfer."""
        weighted_sum, *totals = self.as_vector().tolist()
        other, article = totals[:4], totals[4:]  # each indexed by CE, WEIGHT, COUNT, HITS

        def mean(total: float, count: float) -> float | None:
            return total / count if count else None

        article_loss = mean(article[CE], article[COUNT])
        other_loss = mean(other[CE], other[COUNT])
        ratio = article_loss / other_loss if article_loss is not None and other_loss else None
        weight_sum = other[WEIGHT] + article[WEIGHT]
        return {
            "loss": mean(weighted_sum, weight_sum),
            "loss_unweighted": mean(other[CE] + article[CE], other[COUNT] + article[COUNT]),
            "article_loss": article_loss,
            "other_loss": other_loss,
            "ratio": ratio,
            "article_acc": mean(article[HITS], article[COUNT]),
            "tokens": int(other[COUNT] + article[COUNT]),
            "article_tokens": int(article[COUNT]),
            "weight_sum": weight_sum,
        }


def _reads_all_rows(device: torch.device) -> bool:
    """Whether `_article_hits` reads every row: on accelerators, where picking rows would sync."""
    return device.type != "cpu"


def _article_hits(
    logits: torch.Tensor, targets: torch.Tensor, is_article: torch.Tensor, all_rows: bool
) -> torch.Tensor:
    """1.0 for each article target whose logit is above every other logit of its row, else 0.0; (N,).

    That is argmax == target except on exact ties, which count as misses (bf16 logits tie often enough
    to matter, and argmax would break them by token order). Without `all_rows` only the article rows
    (a few percent) are read, after a host sync that costs nothing on the CPU, and compared with the
    maximum of the other logits: several times faster than argmax there. With `all_rows` every row is
    read, which is how an accelerator avoids the sync: a hit is the target at the row's maximum, which
    no other logit reaches (`topk(2)` would say the same, but took 0.31 ms on an H100 for 4,096 x 4,096
    logits, where these reductions take a few tens of microseconds). `targets` must be valid token IDs.
    """
    if all_rows:
        best = logits.amax(dim=-1)  # (N,)
        alone = (logits == best[:, None]).sum(dim=-1) == 1
        return ((logits.gather(1, targets[:, None]).squeeze(1) == best) & alone & is_article).float()
    rows = is_article.nonzero().squeeze(1)
    scores, row_targets = logits.index_select(0, rows), targets.index_select(0, rows)[:, None]  # copies: (R, V), (R, 1)
    hit = _above_every_other(scores, row_targets)
    return torch.zeros(targets.shape, dtype=torch.float32, device=targets.device).index_put_((rows,), hit.float())


def _above_every_other(scores: torch.Tensor, target_columns: torch.Tensor) -> torch.Tensor:
    """Whether each row's target score (column `target_columns`, (R, 1)) is above every other score of
    its row; (R,) bool. Overwrites the target entries of `scores` (R, V), which must be a copy."""
    target_scores = scores.gather(1, target_columns).squeeze(1)
    return target_scores > scores.scatter_(1, target_columns, float("-inf")).amax(dim=-1)


def _lookups(
    flat_targets: torch.Tensor, tables: LossTables, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each target's weight and category, and the targets with ignored ones as token 0 (not an article,
    so it never counts), for lookups that need a valid ID; each (N,)."""
    ignored = flat_targets == ignore_index
    slots = flat_targets.masked_fill(ignored, tables.vocab_size)  # ignored: the extra slot
    return (
        tables.weight.index_select(0, slots),
        tables.category.index_select(0, slots),
        flat_targets.masked_fill(ignored, 0),
    )


def _totals(ce: torch.Tensor, weights: torch.Tensor, categories: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """`LossParts.totals` from per-target CE, weight, category and hit, each (N,)."""
    columns = torch.stack([ce, weights, torch.ones_like(weights), hits], dim=1)  # (N, 4)
    columns = columns.to(sums_dtype(columns.device))
    return columns.new_zeros(3, 4).index_add_(0, categories, columns)[:IGNORED]  # rows OTHER, ARTICLE


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int = -100
) -> LossParts:
    """Sums of weighted and plain CE for logits (B, T, V) against targets (B, T).

    Targets equal to `ignore_index` count nowhere.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V); float32 even when bf16 under autocast
    flat_targets = targets.reshape(-1)  # (N,)
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="none")  # (N,), 0 if ignored
    weights, categories, safe_targets = _lookups(flat_targets, tables, ignore_index)
    with torch.no_grad():
        hits = _article_hits(flat_logits.detach(), safe_targets, categories == ARTICLE, _reads_all_rows(logits.device))
        totals = _totals(ce.detach(), weights, categories, hits)
    return LossParts(weighted_sum=(weights * ce).sum(), totals=totals)


@torch.no_grad()
def _sums_and_gradient(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int, every_row: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`weighted_cross_entropy`'s two sums for float32 logits (N, V) and targets (N,), with the weighted
    sum's gradient written over `logits`: w (softmax - onehot(target)) row by row.

    Computing the gradient here, not in autograd's backward, leaves the backward only a scaling, and
    with `every_row` makes the loss one fixed sequence of kernels, which `ArticleLoss` captures in a
    CUDA graph where Triton cannot run: every row is tested for a hit, in place, without the host sync
    and data-dependent shapes of picking the article rows. On the CPU (`_HeadLoss`), picking them is
    faster.
    """
    weights, categories, safe_targets = _lookups(targets, tables, ignore_index)
    target_columns = safe_targets[:, None]
    log_probs = torch.log_softmax(logits, dim=1)  # as F.cross_entropy computes it
    ce = log_probs.gather(1, target_columns).squeeze(1).neg().masked_fill_(categories == IGNORED, 0.0)  # as eager
    is_article = categories == ARTICLE
    if every_row:  # `logits` is overwritten by the gradient below anyway
        hits = (_above_every_other(logits, target_columns) & is_article).float()
    else:
        hits = _article_hits(logits, safe_targets, is_article, all_rows=False)
    gradient = torch.exp(log_probs, out=logits).mul_(weights[:, None])  # w softmax
    gradient.scatter_add_(1, target_columns, -weights[:, None])
    return (weights * ce).sum(), _totals(ce, weights, categories, hits)


# What to do instead of a second derivative of a loss whose backward only scales kept gradients.
FORM_THE_LOGITS = "form the logits and call ArticleLoss on them"


def refuse_second_derivative(loss: str, instead: str) -> None:
    """Raises in a backward run with create_graph: the losses whose backward returns gradients computed
    without a graph would otherwise hand a second derivative constants, silently."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{loss} has no second derivative: for create_graph, {instead}")


def _head_sums_and_gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    tables: LossTables,
    ignore_index: int,
    fused: bool,
    grad_dtypes: tuple[torch.dtype, torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's logits hidden (N, d) @ weight (V, d)^T, in their dtype; the loss's two sums against
    targets (N,); and the weighted sum's gradients of hidden and weight, in `grad_dtypes` (those of
    the leaves they reach, so that the backward only scales them).

    `_HeadLoss`'s arithmetic on whole logits, as one fixed sequence of kernels with no host sync, for
    `ArticleLoss` to capture in a CUDA graph. With `fused` the loss is `tstool.fused_loss`'s Triton
    kernels, which read the logits in their dtype; otherwise `_sums_and_gradient` on a float32 copy.
    Either way the logits' gradient is float32 rounded once to their dtype, as autocast's would be.
    """
    logits = hidden @ weight.t()
    if fused:
        from tstool.fused_loss import sums_and_gradient

        weighted_sum, totals = sums_and_gradient(logits, targets, tables, ignore_index)
        gradient = logits
    else:
        scores = logits.float()
        weighted_sum, totals = _sums_and_gradient(scores, targets, tables, ignore_index, every_row=True)
        gradient = scores.to(logits.dtype)
    hidden_dtype, weight_dtype = grad_dtypes
    return weighted_sum, totals, (gradient @ weight).to(hidden_dtype), (gradient.t() @ hidden).to(weight_dtype)


# A graph's key: device, rows, vocabulary, width, and the dtypes of the products, hidden and weight.
_GraphKey = tuple[torch.device, int, int, int, torch.dtype, torch.dtype, torch.dtype]


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
        """hidden (N, d), weight (V, d) and targets (N,), copied (and cast) into the graph's inputs."""
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
        refuse_second_derivative("the replayed loss", FORM_THE_LOGITS)
        captured: _Captured = ctx.captured
        if captured.replays != ctx.replay:  # the buffers hold a later batch's gradients
            raise RuntimeError(
                "ArticleLoss ran again on a batch of this shape before this loss's backward: "
                "call backward after each loss, as a training step does"
            )
        # one call for both: on a GPU this backward's host time is a step's cost (bench loss_overhead)
        grad_hidden, grad_weight = torch._foreach_mul([captured.grad_hidden, captured.grad_weight], grad_sum)
        wants_hidden, wants_weight = ctx.needs_input_grad[:2]
        return (grad_hidden if wants_hidden else None, grad_weight if wants_weight else None, None, None)


# Logits per block in `_HeadLoss` (64 MiB in float32): each block has HEAD_BLOCK_LOGITS // vocabulary
# rows, so that a step's memory stops growing with the batch, while the head's products get rows
# enough to run at full speed. With GPT-2's 50,257 tokens, blocks of 41 rows made the head and loss of
# 4,096 rows 1.3x slower than whole logits (d=320); in a `tiny` step of 2,048 tokens, blocks of
# 256-1,024 rows were faster than one block of 2,048. With the shipped 4,096 tokens, blocks of 512
# rows made that step 2-3% slower than one block (2-core EPYC VM, fp32; bench/README.md).
HEAD_BLOCK_LOGITS = 2**24


class _HeadLoss(torch.autograd.Function):
    """The head's logits hidden @ weight^T and `_sums_and_gradient` on them, a block of rows at a time,
    with the gradients of hidden and weight computed as each block's gradient is known.

    No (N, V) tensor is ever whole: autograd keeps the gradients of hidden (N, d) and weight (V, d)
    instead of the logits, and the loss's float32 copies exist for one block at a time, so a step's
    memory stops growing with batch x vocabulary. With GPT-2's 50,257 tokens a `tiny` step was
    1.2-1.3x as fast as with whole logits; with the shipped 4,096 tokens it takes about the same time
    (bench `head_in_loss`; peak memory in bench `memory`). The backward only scales the kept gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        tables: LossTables,
        ignore_index: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (N, d), weight (V, d) and targets (N,); the products run in `dtype`."""
        wants_hidden, wants_weight = ctx.needs_input_grad[:2]
        device = hidden.device
        weight_in_dtype = weight.to(dtype)
        # The CPU's bf16 product gradient @ weight is several times faster with weight transposed in
        # memory (`model._LinearBF16CPU`).
        transposed = wants_hidden and dtype == torch.bfloat16
        weight_for_grad = weight_in_dtype.t().contiguous().t() if transposed else weight_in_dtype
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=device) if wants_hidden else None
        # float32 whatever the dtype: the blocks' bf16 products add up without bf16 rounding
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if wants_weight else None
        weighted_sum = torch.zeros((), dtype=torch.float32, device=device)
        totals = torch.zeros(2, 4, dtype=sums_dtype(device), device=device)
        block_rows = max(1, HEAD_BLOCK_LOGITS // weight.size(0))
        for start in range(0, hidden.size(0), block_rows):
            rows = slice(start, start + block_rows)
            block = hidden[rows].to(dtype)
            logits = (block @ weight_in_dtype.t()).float()
            block_sum, block_totals = _sums_and_gradient(logits, targets[rows], tables, ignore_index, every_row=False)
            weighted_sum += block_sum
            totals += block_totals
            gradient = logits.to(dtype)
            if grad_hidden is not None:
                torch.mm(gradient, weight_for_grad, out=grad_hidden[rows])
            if grad_weight is not None and dtype == torch.float32:
                grad_weight.addmm_(gradient.t(), block)
            elif grad_weight is not None:
                grad_weight += gradient.t() @ block
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.set_materialize_grads(False)  # the totals get no gradient: no zeros made for them
        ctx.mark_non_differentiable(totals)
        return weighted_sum, totals

    @staticmethod
    def backward(ctx: Any, grad_sum: torch.Tensor, _grad_totals: None) -> tuple[torch.Tensor | None, ...]:
        refuse_second_derivative("the loss with the head inside", FORM_THE_LOGITS)
        # autograd casts each gradient to its input's dtype
        grads = tuple(None if grad is None else grad * grad_sum for grad in ctx.saved_tensors)
        return (*grads, None, None, None, None)


class ArticleLoss:
    """`weighted_cross_entropy` with fixed tables, as the training step calls it: `from_hidden` on the
    model's hidden states and tied head weight, with the head inside the loss where training.

    - On the CPU, `_HeadLoss` applies the head a block of rows at a time and never forms the whole
      logits.
    - On CUDA, the head, the loss, its breakdown and both gradients are captured in a CUDA graph per
      batch shape and replayed: one launch where the head and plain CE take a dozen, and a backward
      that only scales the two kept gradients. A small model's step on a GPU is bound by launches,
      not arithmetic. The loss inside the graph is `tstool.fused_loss`'s two Triton kernels (one pass
      over the logits forward, one for the gradient), or, where Triton cannot run (`fused=False`, or
      after a warning), `_sums_and_gradient`'s ATen operations. A graph keeps its (N, V) logits, which
      end as their gradient. Beyond the first MAX_GRAPHS shapes, above MAX_GRAPH_LOGITS, where capture
      fails (after a warning), under fp16 autocast (whose loss scale must reach the gradient before its
      fp16 products), and with `cuda_graphs=False` (`train.cuda_graph_loss`), the head's logits are
      formed and the loss runs on them: through the Triton kernels, or eagerly.
    - Without gradients (evaluation), the logits are formed and the loss runs on them.

    Every path gives the eager loss's numbers up to float rounding (bench `loss_overhead` times them).
    """

    MAX_GRAPHS = 4
    # A bound on what a graph holds for the whole run: its logits (0.5 GiB in float32 at this size;
    # with the ATen loss also their float32 copy and log-probabilities, up to 1.25 GiB for bf16
    # logits). Batches this large do enough arithmetic per launch that the graph matters less.
    MAX_GRAPH_LOGITS = 2**27

    def __init__(
        self, tables: LossTables, ignore_index: int = -100, cuda_graphs: bool = True, fused: bool = True
    ) -> None:
        self.tables, self.ignore_index, self.cuda_graphs, self.fused = tables, ignore_index, cuda_graphs, fused
        self.triton_runs: dict[torch.dtype, bool] = {}  # by logits dtype, once `_fused_runs` has tried
        self.graphs: dict[_GraphKey, _Captured | None] = {}  # None: no graph for that key

    def from_hidden(self, hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> LossParts:
        """The loss of the head's logits hidden @ head_weight^T, for hidden states (..., d) and targets
        of their leading shape, under the caller's autocast."""
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        rows = hidden.reshape(-1, hidden.size(-1))
        trains = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
        captured = self._graph(rows, head_weight, dtype) if trains and device == "cuda" and self.cuda_graphs else None
        if trains and (device == "cpu" or captured is not None):
            with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():  # both cast
                if captured is not None:
                    weighted_sum, totals = _ReplayedHeadLoss.apply(rows, head_weight, targets.reshape(-1), captured)
                else:
                    weighted_sum, totals = _HeadLoss.apply(
                        rows, head_weight, targets.reshape(-1), self.tables, self.ignore_index, dtype
                    )
            return LossParts(weighted_sum=weighted_sum, totals=totals)
        logits = F.linear(hidden, head_weight)
        # the loss runs in float32, outside autocast, as before
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            return self(logits, targets)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
        """The loss of whole logits (..., V): on CUDA through the Triton kernels where they run,
        otherwise eagerly."""
        if not (logits.is_cuda and self._fused_runs(logits.device, logits.dtype)):
            return weighted_cross_entropy(logits, targets, self.tables, self.ignore_index)
        from tstool.fused_loss import FusedArticleLoss

        weighted_sum, totals = FusedArticleLoss.apply(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), self.tables, self.ignore_index
        )
        return LossParts(weighted_sum=weighted_sum, totals=totals)

    def _fused_runs(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether `tstool.fused_loss`'s Triton kernels run here on logits of `dtype`, tried once per
        dtype on a row of zeros: without Triton, or a compiler for its launcher, the loss runs without
        them after a warning."""
        if self.fused and dtype not in self.triton_runs:
            try:
                from tstool import fused_loss

                row = torch.zeros(1, self.tables.vocab_size, dtype=dtype, device=device)
                with fused_loss.on_device(device):
                    fused_loss.sums_and_gradient(row, torch.zeros(1, dtype=torch.long, device=device), self.tables, 0)
                if device.type == "cuda":  # a fault in the kernels shows here, not in a later step
                    torch.cuda.synchronize(device)
                self.triton_runs[dtype] = True
            except Exception as exc:  # Triton's failures (import, compiler, driver) have no common type
                self.triton_runs[dtype] = False
                warnings.warn(
                    f"the fused Triton loss cannot run here ({type(exc).__name__}: {_first_line(exc)}); the "
                    "loss runs without it: the same numbers, a slower step",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return self.fused and self.triton_runs[dtype]

    def _graph(self, hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> _Captured | None:
        """The graph for hidden (N, d) and weight (V, d) with products in `dtype` and gradients in theirs,
        captured on first use; None where there is none."""
        (rows, width), vocab = hidden.shape, weight.size(0)
        if dtype == torch.float16:  # its gradient products in fp16 would overflow without the loss scale
            return None
        key = (hidden.device, rows, vocab, width, dtype, hidden.dtype, weight.dtype)
        if key not in self.graphs and len(self.graphs) < self.MAX_GRAPHS:
            self.graphs[key] = self._capture(key) if rows * vocab <= self.MAX_GRAPH_LOGITS else None
        return self.graphs.get(key)

    def _capture(self, key: _GraphKey) -> _Captured | None:
        device, rows, vocab, width, dtype, hidden_dtype, weight_dtype = key
        fused = self._fused_runs(device, dtype)
        try:
            with torch.cuda.device(device):
                hidden = torch.zeros(rows, width, dtype=dtype, device=device)
                weight = torch.zeros(vocab, width, dtype=dtype, device=device)
                targets = torch.zeros(rows, dtype=torch.long, device=device)
                inputs = (hidden, weight, targets, self.tables, self.ignore_index, fused, (hidden_dtype, weight_dtype))
                side = torch.cuda.Stream(device)  # warm up off the default stream, as capture requires
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    _head_sums_and_gradients(*inputs)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = _head_sums_and_gradients(*inputs)
        except Exception as exc:  # out of memory, an operation this PyTorch cannot capture, Triton's errors
            warnings.warn(
                f"capturing the article loss in a CUDA graph failed ({type(exc).__name__}: {_first_line(exc)}); "
                "it runs without one: "
                "the same numbers, a slower step",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return _Captured(graph.replay, hidden, weight, targets, *outputs)


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, for a one-line warning."""
    return (str(exc).strip().splitlines() or [""])[0]
