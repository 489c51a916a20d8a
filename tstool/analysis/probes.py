"""Probes of a trained model: what it predicts in article slots, and which target it learned to predict.

Slot probe: after a context that needs an article next ("She saw"), the probability and rank of every
single-token article form and the total article mass. Shift probe: the teacher-forced loss of the same
logits against the next token and against the token after next; a model trained on labels shifted
twice (the predecessor's bug) predicts the token after next better.

(The current token is no useful third target: with tied embeddings a weakly trained but correct model
already scores its own input better than the next token.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from tstool.analysis.statistics import Estimate, direction, t_interval
from tstool.data.articles import ArticleSet
from tstool.data.tokenizer import TextTokenizer
from tstool.model.loading import LanguageModel, model_device

DEFAULT_CONTEXTS: tuple[str, ...] = (
    "Once upon a time there was",
    "She saw",
    "He found",
    "They went to",
    "One day, Lily found",
    "Tom wanted to buy",
    "Once upon a time, in",
)
# Losses closer than this (nats per token) are too close to call: an untrained model scores every
# offset near ln(vocab), so a tiny gap says nothing about how it was trained. A verdict also needs the
# gap's 95% interval over blocks to exclude zero: a few blocks of a weak model differ by noise alone.
SHIFT_MARGIN = 0.05
ShiftVerdict = Literal["aligned", "misaligned", "inconclusive"]


# -- slot probe ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArticleProb:
    text: str
    form: str
    token_id: int
    prob: float
    rank: int  # 1 = the model's top prediction


@dataclass(frozen=True)
class SlotProbe:
    context: str
    article_mass: float  # total probability of all article tokens
    top_token: str
    top_prob: float
    articles: tuple[ArticleProb, ...]  # one per single-token article form, in resolution order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_token_probs(model: LanguageModel, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Probabilities (C, V) of the token after each context of IDs, in one forward pass, float32.

    The contexts are padded on the right to a common length: in a causal model a position never sees
    the ones after it, so each context's last position is unchanged by the padding."""
    crops = [list(ids)[-model.cfg.max_seq_len :] for ids in contexts]
    lengths = torch.tensor([len(ids) for ids in crops])
    idx = torch.zeros(len(crops), int(lengths.max()), dtype=torch.long)
    for row, ids in enumerate(crops):
        idx[row, : len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        logits = model(idx.to(model_device(model)))  # (C, T, V)
    return logits[torch.arange(len(crops)), lengths - 1].float().softmax(dim=-1)


def ranks_of(probs: torch.Tensor, token_ids: Sequence[int]) -> list[int]:
    """1-based rank of each token in probs (V,): one plus the number of tokens strictly more likely."""
    chosen = probs[list(token_ids)]  # (K,)
    return ((probs[None, :] > chosen[:, None]).sum(dim=-1) + 1).tolist()


def slot_probe(probs: torch.Tensor, context: str, tokenizer: TextTokenizer, articles: ArticleSet) -> SlotProbe:
    """The slot probe of the next-token probabilities (V,) after `context`."""
    forms = [f for f in articles.forms if f.single_token]
    ids = [f.ids[0] for f in forms]
    ranks = ranks_of(probs, ids)
    top = int(probs.argmax())
    return SlotProbe(
        context=context,
        article_mass=float(probs[articles.ids].sum()),
        top_token=tokenizer.token(top),
        top_prob=float(probs[top]),
        articles=tuple(
            ArticleProb(text=f.text, form=f.form, token_id=i, prob=float(probs[i]), rank=r)
            for f, i, r in zip(forms, ids, ranks, strict=True)
        ),
    )


def slot_probes(
    model: LanguageModel, tokenizer: TextTokenizer, articles: ArticleSet, contexts: Sequence[str] = DEFAULT_CONTEXTS
) -> list[SlotProbe]:
    """Article probabilities after each context, which follows <|endoftext|> as every story does in
    training; all contexts in one forward pass."""
    if not contexts:
        return []
    probs = next_token_probs(model, [[tokenizer.eot_id, *tokenizer.encode(c)] for c in contexts])
    return [slot_probe(p, c, tokenizer, articles) for p, c in zip(probs, contexts, strict=True)]


# -- shift probe -----------------------------------------------------------------------------------
def shift_losses(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-block mean CE (B, 2) of log-probabilities (B, T, V) against the next and the after-next token.

    y (B, T) are `split_block`'s next-token targets; y[:, 1:] is the token after next, a target
    misaligned on purpose for this probe only. Positions 0..T-2 serve both, so the two compare like
    for like. Blocks, not positions, are the probe's samples: neighbouring positions are not independent.
    """
    targets = torch.stack([y[:, :-1], y[:, 1:]], dim=2)  # (B, T-1, 2): next, after next
    return -log_probs[:, :-1].gather(2, targets).float().mean(dim=1)


@dataclass(frozen=True)
class ShiftProbe:
    next_loss: float  # mean CE against the next token: what training optimises
    after_next_loss: float  # mean CE against the token after next
    gap: Estimate  # after_next_loss - next_loss, with its 95% interval over blocks
    tokens: int
    verdict: ShiftVerdict
    message: str

    @property
    def ok(self) -> bool:
        return self.verdict != "misaligned"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gap": self.gap.to_dict(unit="blocks"), "margin": SHIFT_MARGIN}


def shift_verdict(block_losses: torch.Tensor, tokens: int) -> ShiftProbe:
    """Of per-block losses (B, 2) from `shift_losses`. Misaligned when the token after next is predicted
    better by more than SHIFT_MARGIN and the interval of the gap lies below zero; aligned in the mirror
    case; inconclusive otherwise."""
    next_loss, after_next_loss = block_losses.mean(dim=0).tolist()
    gap = t_interval((block_losses[:, 1] - block_losses[:, 0]).tolist())
    side = direction(gap)  # "lower" or "higher" only when the interval excludes zero
    losses = f"loss against the next token ({next_loss:.3f}) and the token after next ({after_next_loss:.3f})"
    if side == "lower" and gap.mean < -SHIFT_MARGIN:
        verdict: ShiftVerdict = "misaligned"
        message = (
            f"loss against the token after next ({after_next_loss:.3f}) is lower than against the next token "
            f"({next_loss:.3f}), gap {gap.text()}: the model was trained on labels shifted twice (the "
            "double-shift bug); shift labels exactly once and retrain"
        )
    elif side == "higher" and gap.mean > SHIFT_MARGIN:
        verdict = "aligned"
        message = (
            f"loss against the next token ({next_loss:.3f}) is {gap.text()} below the token after next "
            f"({after_next_loss:.3f}): labels were aligned"
        )
    elif gap.n < 2:
        verdict = "inconclusive"
        message = f"{losses} come from one block, which gives no interval: evaluate more blocks (--max-blocks)"
    elif abs(gap.mean) <= SHIFT_MARGIN:
        verdict = "inconclusive"
        message = f"{losses} differ by less than {SHIFT_MARGIN}: the model is too weak to tell how its labels align"
    else:
        verdict = "inconclusive"
        message = (
            f"{losses} differ by {gap.text()} over {gap.n} blocks, an interval that covers zero: "
            "evaluate more blocks (--max-blocks) to tell how its labels were aligned"
        )
    return ShiftProbe(next_loss, after_next_loss, gap, tokens, verdict, message)
