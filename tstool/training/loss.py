"""Article-weighted cross-entropy, the one loss tstool trains with, and its article/other breakdown.

`weighted_cross_entropy` is the reference: every fast path (`tstool.fast`) is tested against it. It
returns sums rather than means so that the training step can divide by the total weight of the whole
optimizer step (all micro-batches, all ranks): a mean of per-micro-batch means would weight short
batches wrongly. With a weight table of ones it is plain cross-entropy through the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows of `LossParts.totals`: the category of a target.
OTHER, ARTICLE = 0, 1
# Columns of `LossParts.totals`: sums of CE, of weight, of targets, and of top-1 hits.
CE, WEIGHT, COUNT, HITS = 0, 1, 2, 3


def sums_dtype(device: torch.device) -> torch.dtype:
    """float64, which keeps counts exact far beyond any run, where the device has it; MPS has not, and
    float32 counts stay exact up to 2**24 (16.7M) targets per accumulated sum."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class LossTables:
    """Per-token lookups indexed by target ID, and the logit offset of the logit-adjusted loss."""

    weight: torch.Tensor  # (V,) float32: the loss weight of each target token
    is_article: torch.Tensor  # (V,) bool
    # (V,) float32 added to every row of logits inside the loss, or None. log w makes the loss
    # "logit-adjusted" (Menon et al. 2021): its optimum has softmax(raw logits) = the data's distribution,
    # so the model stays calibrated while weighted targets keep w times the gradient weight.
    logit_offset: torch.Tensor | None = None

    @classmethod
    def build(cls, weight_table: torch.Tensor, article_mask: torch.Tensor, logit_adjusted: bool = False) -> LossTables:
        """From weight_table (V,) (`ArticleSet.weight_table`) and article_mask (V,) bool (`mask_table`)."""
        weight = weight_table.float()
        return cls(weight, article_mask.bool(), weight.log() if logit_adjusted else None)

    @classmethod
    def unweighted(cls, article_mask: torch.Tensor) -> LossTables:
        """Weight 1 for every target: plain CE with the article breakdown (evaluation, self-checks)."""
        return cls.build(torch.ones(article_mask.shape, device=article_mask.device), article_mask)

    @property
    def vocab_size(self) -> int:
        return self.weight.numel()

    def to(self, device: torch.device) -> LossTables:
        offset = None if self.logit_offset is None else self.logit_offset.to(device)
        return LossTables(self.weight.to(device), self.is_article.to(device), offset)


@dataclass
class LossParts:
    """Sums over the non-ignored targets of one or more batches.

    `weighted_sum` (0-d float32) is the only tensor that carries gradient. `totals` (2, 4), in
    `sums_dtype`, holds for rows OTHER and ARTICLE the sums of CE, weight, targets and top-1 hits.
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


def top1_hits(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None, best: torch.Tensor | None = None
) -> torch.Tensor:
    """Whether each row's target logit is the row's maximum and no other logit reaches it; (N,) bool.
    With `rows` (N,) bool, only those rows are read (the others are misses); `best` (N,) is each row's
    maximum where the caller has it.

    That is argmax == target except on exact ties, which count as misses: bf16 logits tie often enough
    to matter, and argmax would break them by token order."""
    if rows is not None:  # a host sync: not for code captured in a CUDA graph
        picked = rows.nonzero().squeeze(1)
        hits = torch.zeros_like(rows)
        hits[picked] = top1_hits(logits[picked], targets[picked], best=None if best is None else best[picked])
        return hits
    best = logits.amax(dim=-1) if best is None else best  # (N,)
    alone = (logits == best[:, None]).sum(dim=-1) == 1
    return (logits.gather(1, targets[:, None]).squeeze(1) == best) & alone


def breakdown(
    ce: torch.Tensor, weights: torch.Tensor, is_article: torch.Tensor, hits: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """`LossParts.totals` (2, 4) from per-target CE, weight, article flag, hit and kept flag, each (N,)."""
    columns = torch.stack([ce, weights, torch.ones_like(ce), hits.float()], dim=1) * kept[:, None]  # (N, 4)
    columns = columns.to(sums_dtype(columns.device))
    return columns.new_zeros(2, 4).index_add_(0, is_article.long(), columns)  # rows OTHER, ARTICLE


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, tables: LossTables, ignore_index: int = -100
) -> LossParts:
    """Sums of weighted and plain CE for logits (B, T, V) against targets (B, T).

    weighted_sum = sum over kept targets of weight[y] * CE, with CE of the logits plus the tables' logit
    offset if they have one; targets equal to `ignore_index` count nowhere. A top-1 hit counts for
    article targets only, so it is looked for in their rows alone (a few percent of the targets).
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V); float32 even when bf16 under autocast
    if tables.logit_offset is not None:
        flat_logits = flat_logits + tables.logit_offset
    flat_targets = targets.reshape(-1)  # (N,)
    kept = flat_targets != ignore_index
    safe_targets = flat_targets.masked_fill(~kept, 0)  # a valid ID for the lookups; masked out below
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="none")  # 0 if ignored
    weights = tables.weight[safe_targets] * kept
    with torch.no_grad():
        is_article = tables.is_article[safe_targets]
        hits = top1_hits(flat_logits, safe_targets, rows=is_article & kept)
        totals = breakdown(ce.detach(), weights, is_article, hits, kept)
    return LossParts(weighted_sum=(weights * ce).sum(), totals=totals)


class HeadLoss:
    """The training step's loss of the output head's logits hidden @ head_weight^T: the reference path,
    which forms the logits. `tstool.fast.head_loss` picks this or a device's fast path."""

    def __init__(self, tables: LossTables, ignore_index: int = -100) -> None:
        self.tables, self.ignore_index = tables, ignore_index
        # The logit offset enters as the head's bias, inside its matrix product, instead of as one more
        # pass over the logits in the loss (`bench logit_adjusted`).
        self._after_head = dataclasses.replace(tables, logit_offset=None)

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> LossParts:
        """For hidden states (..., d) and targets of their leading shape, under the caller's autocast."""
        logits = F.linear(hidden, head_weight, self.tables.logit_offset)
        return weighted_cross_entropy(logits, targets, self._after_head, self.ignore_index)
