"""Weighted cross-entropy with an article/other breakdown, as sums that accumulate across micro-batches.

Per-token CE is computed once, in float32, and every number derives from it. Sums rather than means
are returned so the training loop can divide by the total weight of a whole optimizer step (all
micro-batches, all ranks): the mean of per-micro-batch means would weight short batches wrongly.
With a weight table of ones the weighted loss is plain cross-entropy through the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    """0-d tensor sums over the non-ignored targets of one or more batches.

    Only `weighted_sum` carries gradient. Counts are int64, sums float32.
    """

    weighted_sum: torch.Tensor  # sum(w * ce)
    weight_sum: torch.Tensor  # sum(w)
    ce_sum: torch.Tensor  # sum(ce), unweighted
    token_count: torch.Tensor
    article_ce_sum: torch.Tensor
    article_count: torch.Tensor
    other_ce_sum: torch.Tensor
    other_count: torch.Tensor
    article_correct: torch.Tensor  # article targets that are the top-1 prediction

    def __add__(self, other: LossParts) -> LossParts:
        return LossParts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def detach(self) -> LossParts:
        """A copy without autograd history, to accumulate across micro-steps without keeping graphs alive."""
        return LossParts(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def as_vector(self) -> torch.Tensor:
        """All fields in one float64 vector (exact for counts), e.g. for a single all-reduce across ranks."""
        return torch.stack([getattr(self, f.name).detach().double() for f in fields(self)])

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> LossParts:
        """Inverse of `as_vector`."""
        return cls(**{f.name: value for f, value in zip(fields(cls), vector.unbind(), strict=True)})

    def metrics(self) -> dict[str, float | int | None]:
        """Plain-number metrics; a mean over no tokens is None. One device-to-host transfer."""
        values = dict(zip((f.name for f in fields(self)), self.as_vector().tolist(), strict=True))

        def mean(total: float, count: float) -> float | None:
            return total / count if count else None

        article_loss = mean(values["article_ce_sum"], values["article_count"])
        other_loss = mean(values["other_ce_sum"], values["other_count"])
        ratio = article_loss / other_loss if article_loss is not None and other_loss else None
        return {
            "loss": mean(values["weighted_sum"], values["weight_sum"]),
            "loss_unweighted": mean(values["ce_sum"], values["token_count"]),
            "article_loss": article_loss,
            "other_loss": other_loss,
            "ratio": ratio,
            "article_acc": mean(values["article_correct"], values["article_count"]),
            "tokens": int(values["token_count"]),
            "article_tokens": int(values["article_count"]),
            "weight_sum": values["weight_sum"],
        }


def _article_correct(
    logits: torch.Tensor, targets: torch.Tensor, is_article: torch.Tensor, gather: bool
) -> torch.Tensor:
    """Count of article targets that are the argmax of their row; logits (N, V), targets/is_article (N,).

    With `gather`, only article rows (a few percent) are argmaxed; without, every row is, which avoids
    the host sync that boolean indexing forces on an accelerator.
    """
    if gather:
        return (logits[is_article].argmax(dim=-1) == targets[is_article]).sum()
    return ((logits.argmax(dim=-1) == targets) & is_article).sum()


def weighted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight_table: torch.Tensor,
    article_mask: torch.Tensor,
    ignore_index: int = -100,
) -> LossParts:
    """Sums of weighted and plain CE for logits (B, T, V) against targets (B, T).

    weight_table (V,) float gives each target's weight (`ArticleSet.weight_table`); article_mask (V,)
    bool marks article IDs (`ArticleSet.mask_table`). Targets equal to `ignore_index` count nowhere.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    # float32 CE even when logits are bf16 under autocast; 0 at ignored positions
    ce = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=ignore_index, reduction="none")  # (N,)
    valid = flat_targets != ignore_index
    safe_targets = flat_targets.masked_fill(~valid, 0)  # ignore_index is not a valid table index
    weights = weight_table[safe_targets] * valid
    is_article = article_mask[safe_targets] & valid
    is_other = valid & ~is_article
    plain = ce.detach()
    with torch.no_grad():
        gather = flat_logits.device.type == "cpu"  # no sync to avoid on CPU
        article_correct = _article_correct(flat_logits.detach(), flat_targets, is_article, gather)
    return LossParts(
        weighted_sum=(weights * ce).sum(),
        weight_sum=weights.sum(),
        ce_sum=plain.sum(),
        token_count=valid.sum(),
        article_ce_sum=(plain * is_article).sum(),
        article_count=is_article.sum(),
        other_ce_sum=(plain * is_other).sum(),
        other_count=is_other.sum(),
        article_correct=article_correct,
    )


def weighted_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight_table: torch.Tensor,
    article_mask: torch.Tensor,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Weighted mean CE of one batch: sum(w * ce) / sum(w) over non-ignored targets (nan if none)."""
    parts = weighted_cross_entropy(logits, targets, weight_table, article_mask, ignore_index)
    return parts.weighted_sum / parts.weight_sum
